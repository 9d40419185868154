"""Keypoint tracks from frames and driving videos, through any face detector."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from pathlib import Path

import numpy as np

from ..keypoints import KeypointTrack
from ..video import read_video_frames, video_fps_and_length
from .faces import FaceDetector, chosen_face

ProgressCallback = Callable[[int, int | None], None]


def _filled_points(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Points of invalid frames linearly interpolated from valid neighbours (nearest at the ends)."""
    frames = np.arange(len(points))
    flat = points.reshape(len(points), -1)
    filled = np.stack([np.interp(frames, frames[valid], flat[valid, k]) for k in range(flat.shape[1])], axis=-1)
    return filled.reshape(points.shape).astype(np.float32)


def extract_track(
    frames: Iterable[np.ndarray],
    detector: FaceDetector,
    fps: float | None,
    face_index: int | None = None,
    progress: ProgressCallback | None = None,
    total: int | None = None,
) -> KeypointTrack:
    """A track from RGB uint8 frames; frames without a face are interpolated and marked invalid.

    progress(done, total) is called after each frame; total is len(frames) when known, else `total`.
    """
    total = len(frames) if isinstance(frames, Sized) else total
    points, valid, frame_size = [], [], None
    for index, frame in enumerate(frames):
        size = (frame.shape[1], frame.shape[0])
        if frame_size is None:
            frame_size = size
        elif size != frame_size:
            raise ValueError(f"frame {index} is {size} (width, height) but the first frame is {frame_size}")
        face = chosen_face(detector.detect(frame), face_index)
        points.append(np.zeros((3, 2), np.float32) if face is None else face.kps[:3])
        valid.append(face is not None)
        if progress is not None:
            progress(index + 1, total)
    if frame_size is None:
        raise ValueError("no frames to extract keypoints from")
    valid = np.array(valid)
    if not valid.any():
        raise ValueError(f"no face found in any of the {len(valid)} frames")
    return KeypointTrack(_filled_points(np.stack(points), valid), frame_size, fps, valid)


def extract_track_from_video(
    path: str | Path,
    detector: FaceDetector,
    face_index: int | None = None,
    progress: ProgressCallback | None = None,
    size: tuple[int, int] | None = None,
) -> KeypointTrack:
    """A track from a driving video, with its fps; coordinates refer to its frames (resized to size if given)."""
    fps, length = video_fps_and_length(path)
    try:
        return extract_track(read_video_frames(path, size), detector, fps, face_index, progress, length)
    except ValueError as error:
        raise ValueError(f"driving video {path}: {error}") from error
