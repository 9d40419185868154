"""Retargeting a driving track onto the reference face: a registry of modes (SPEC step 8)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..registry import Registry
from .resampling import default_resample_mode, resample_track
from .track import KeypointTrack


def _eye_nose_ratios(points: np.ndarray) -> np.ndarray:
    """|left eye - nose| / |right eye - nose| per frame of [N,3,2]."""
    left = np.linalg.norm(points[:, 0] - points[:, 2], axis=-1)
    right = np.linalg.norm(points[:, 1] - points[:, 2], axis=-1)
    return left / (right + 1e-6)


def _face_size(kps: np.ndarray) -> tuple[float, float]:
    """(eye distance, distance from the nose to the eye-to-eye segment) of one [3,2] frame."""
    left, right, nose = kps.astype(np.float64)
    eye_line = right - left
    eye_distance = float(np.linalg.norm(eye_line))
    if eye_distance == 0:
        return 0.0, 0.0
    along = np.clip(np.dot(nose - left, eye_line) / eye_distance**2, 0.0, 1.0)
    return eye_distance, float(np.linalg.norm(nose - (left + along * eye_line)))


def _scaled_to_reference_face(reference_kps: np.ndarray, driving: np.ndarray) -> np.ndarray:
    """Driving points scaled per axis so that the frame whose eye-nose ratio is closest to the
    reference's has the reference's eye distance (x) and nose-to-eye-line distance (y)."""
    closest = int(np.argmin(np.abs(_eye_nose_ratios(driving) - _eye_nose_ratios(reference_kps[None])[0])))
    reference_width, reference_height = _face_size(reference_kps)
    driving_width, driving_height = _face_size(driving[closest])
    if driving_width == 0 or driving_height == 0:
        raise ValueError(f"driving frame {closest} has no usable face size (eyes together or nose on the eye line)")
    return driving * np.array([reference_width / driving_width, reference_height / driving_height])


@dataclass(frozen=True)
class RetargetContext:
    """What a mode that makes its own motion needs besides the keypoints: the speech (16 kHz mono),
    the output fps and frame size (width, height), and `speech_motion`'s knobs."""

    waveform_16k: np.ndarray | None = None
    fps: float | None = None
    frame_size: tuple[int, int] | None = None
    motion_scale: float = 1.0
    motion_seed: int = 0


@dataclass(frozen=True)
class RetargetMode:
    """`points(reference_kps [3,2], driving [N,3,2] or None, N)` -> the [N,3,2] points to draw, in the
    reference image's pixels (float64 reference, float32 driving points); `needs_track` = False when
    the mode ignores the driving track; `needs_context` = True when `points` takes a RetargetContext
    as a fourth argument."""

    points: Callable[..., np.ndarray]
    needs_track: bool = True
    needs_context: bool = False


def _offset_points(reference_kps: np.ndarray, driving: np.ndarray, num_frames: int) -> np.ndarray:
    scaled = _scaled_to_reference_face(reference_kps, driving.astype(np.float64))
    nose_offset = scaled[:, 2] - scaled[0, 2]
    # Subtracting (not adding) the offset is what the published code does and what the weights were shown with.
    return reference_kps[None] - nose_offset[:, None] / 2


def _naive_points(reference_kps: np.ndarray, driving: np.ndarray, num_frames: int) -> np.ndarray:
    scaled = _scaled_to_reference_face(reference_kps, driving.astype(np.float64))
    return scaled - (scaled[0, 2] - reference_kps[2])


RETARGET_MODES: Registry[RetargetMode] = Registry("retarget mode")
RETARGET_MODES.register("fix_face", RetargetMode(lambda reference, driving, n: np.repeat(reference[None], n, axis=0), False))
RETARGET_MODES.register("no_retarget", RetargetMode(lambda reference, driving, n: driving))
RETARGET_MODES.register("offset_retarget", RetargetMode(_offset_points))
RETARGET_MODES.register("naive_retarget", RetargetMode(_naive_points))


def retarget_track(
    reference_kps: np.ndarray, track: KeypointTrack | None, num_frames: int, mode: str,
    *, context: RetargetContext | None = None,
) -> np.ndarray:
    """Keypoints float32 [num_frames,3,2] to draw, per retarget mode (SPEC step 8).

    The track must already be num_frames long and in the reference image's pixel space
    (use `output_track` to scale and resample first); `fix_face` needs no track.
    """
    reference_kps = np.asarray(reference_kps, dtype=np.float64)
    if reference_kps.shape != (3, 2):
        raise ValueError(f"reference keypoints must have shape [3,2], got {list(reference_kps.shape)}")
    retarget = RETARGET_MODES[mode]
    if retarget.needs_context and context is None:
        raise ValueError(f"retarget mode {mode!r} needs the speech, fps and frame size (a RetargetContext)")
    extra = (context,) if retarget.needs_context else ()
    if not retarget.needs_track:
        return np.asarray(retarget.points(reference_kps, None, num_frames, *extra), dtype=np.float32)
    if track is None:
        raise ValueError(f"retarget mode {mode!r} needs a keypoint track; use 'fix_face' without one")
    if len(track) != num_frames:
        raise ValueError(f"the track has {len(track)} frames but {num_frames} are needed; resample it first")
    return np.array(retarget.points(reference_kps, track.points, num_frames, *extra), dtype=np.float32)


def output_track(
    reference_kps: np.ndarray,
    track: KeypointTrack | None,
    width: int,
    height: int,
    num_frames: int,
    mode: str = "fix_face",
    resample_mode: str | None = None,
    fps: float | None = None,
    *,
    context: RetargetContext | None = None,
) -> KeypointTrack:
    """The keypoints to draw for each of num_frames output frames of size (width, height).

    reference_kps are in the output frame's pixels. The driving track is scaled from its frame
    size to (width, height), resampled (default: `default_resample_mode`) and retargeted.
    `context` (its frame size and fps default to these) is for modes that make their own motion.
    """
    if context is not None:
        context = replace(context, frame_size=context.frame_size or (width, height), fps=context.fps or fps)
    if not RETARGET_MODES[mode].needs_track or track is None:
        points = retarget_track(reference_kps, None, num_frames, mode, context=context)
        return KeypointTrack(points, (width, height), fps)
    resample_mode = resample_mode or default_resample_mode(track)
    resampled = resample_track(track.scaled_to(width, height), num_frames, resample_mode, fps)
    points = retarget_track(reference_kps, resampled, num_frames, mode, context=context)
    return KeypointTrack(points, (width, height), fps, resampled.valid)
