"""Resampling a track to the output's frame count: a registry of modes (`stretch` published, `time`)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ..registry import Registry
from .track import KeypointTrack


def default_resample_mode(track: KeypointTrack) -> str:
    """'time' when the track knows its fps, else the published 'stretch'."""
    return "time" if track.fps else "stretch"


def _stretch_positions(track_length: int, num_frames: int) -> np.ndarray:
    # Source positions of F.interpolate(mode='linear', align_corners=False).
    positions = (np.arange(num_frames) + 0.5) * (track_length / num_frames) - 0.5
    return np.clip(positions, 0, track_length - 1)


def _time_positions(track_length: int, num_frames: int, track_fps: float, out_fps: float) -> np.ndarray:
    positions = np.arange(num_frames) * (track_fps / out_fps)
    if track_length == 1:
        return np.zeros(num_frames)
    period = 2 * (track_length - 1)
    folded = np.mod(positions, period)
    return np.where(folded > track_length - 1, period - folded, folded)


def _track_at(track: KeypointTrack, positions: np.ndarray, fps: float | None) -> KeypointTrack:
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, len(track) - 1)
    weight = positions - lower
    w = weight[:, None, None]
    points = (1 - w) * track.points[lower].astype(np.float64) + w * track.points[upper]
    valid = track.valid[lower] & (track.valid[upper] | (weight == 0))
    return KeypointTrack(points, track.frame_size, fps, valid)


Resampler = Callable[[KeypointTrack, int, "float | None"], KeypointTrack]
RESAMPLE_MODES: Registry[Resampler] = Registry("resample mode")


@RESAMPLE_MODES.register("stretch")
def stretched_track(track: KeypointTrack, num_frames: int, out_fps: float | None) -> KeypointTrack:
    """The published resampling: cut to num_frames if longer, then linear interpolation over the whole length."""
    cut = dataclasses.replace(track, points=track.points[:num_frames], valid=track.valid[:num_frames])
    return _track_at(cut, _stretch_positions(len(cut), num_frames), out_fps)


@RESAMPLE_MODES.register("time")
def timed_track(track: KeypointTrack, num_frames: int, out_fps: float | None) -> KeypointTrack:
    """Output frame i shows the track at time i/out_fps, playing it back and forth when the output is
    longer; needs track.fps and out_fps."""
    if not track.fps:
        raise ValueError(
            "'time' resampling needs the track's fps; set it (published kps.pth files have none) or use 'stretch'"
        )
    if not out_fps or out_fps <= 0:
        raise ValueError(f"'time' resampling needs a positive out_fps, got {out_fps}")
    return _track_at(track, _time_positions(len(track), num_frames, track.fps, out_fps), out_fps)


def resample_track(
    track: KeypointTrack, num_frames: int, mode: str = "stretch", out_fps: float | None = None
) -> KeypointTrack:
    """The track resampled to num_frames output frames by a mode of RESAMPLE_MODES."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    return RESAMPLE_MODES[mode](track, num_frames, out_fps)
