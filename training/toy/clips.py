"""Rendering whole toy clips: frames, exact V-Kps track and mouth opening for one identity, speech and head track."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile

from vexpress_core.audio import frame_count
from vexpress_core.keypoints.files import save_track
from vexpress_core.keypoints.track import KeypointTrack
from vexpress_core.video import write_mp4

from .speech import SAMPLE_RATE, mouth_opening
from .world import NEUTRAL, blinks, frame_points, head_track, identity, render


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 [N, size, size, 3]
    points: np.ndarray  # float32 [N, 3, 2]
    opening: np.ndarray  # float32 [N] in [0, 1]
    reference: np.ndarray  # uint8 [size, size, 3]: neutral pose, mouth closed, eyes open
    wave: np.ndarray  # float32 [T] at 16 kHz
    fps: float


def render_clip(identity_seed: int, wave: np.ndarray, pose_seed: int | None, size: int = 64, fps: float = 25.0) -> Clip:
    """The ground-truth talking clip of one identity: as many frames as the pipeline makes for this speech."""
    person = identity(identity_seed)
    num_frames = frame_count(len(wave), SAMPLE_RATE, fps)
    opening = mouth_opening(wave, num_frames, fps)
    poses = head_track(pose_seed, num_frames, fps)
    closed = blinks(person, num_frames, fps)
    frames = np.stack([render(person, pose, o, b, size) for pose, o, b in zip(poses, opening, closed)])
    points = np.stack([frame_points(person, pose, size) for pose in poses])
    return Clip(frames, points, opening, render(person, NEUTRAL, 0.0, 0.0, size), wave, fps)


def write_clip(clip: Clip, out: Path) -> dict[str, Path]:
    """ref.png, gt.mp4 (with the speech), kps.npz (the pack's track format) and speech.wav in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    size = clip.frames.shape[1]
    paths = {name: out / name for name in ("ref.png", "gt.mp4", "kps.npz", "speech.wav")}
    cv2.imwrite(str(paths["ref.png"]), cv2.cvtColor(clip.reference, cv2.COLOR_RGB2BGR))
    soundfile.write(paths["speech.wav"], clip.wave, SAMPLE_RATE, subtype="PCM_16")
    write_mp4(clip.frames, paths["gt.mp4"], clip.fps, audio=(clip.wave, SAMPLE_RATE))
    save_track(KeypointTrack(clip.points, (size, size), clip.fps), paths["kps.npz"])
    return paths
