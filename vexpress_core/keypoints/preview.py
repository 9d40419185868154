"""A keypoint track drawn over the reference photo or the driving frames, to see the head's path
before sampling."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .drawing import KPS_COLOURS, draw_kps_image
from .smoothing import ASSUMED_FPS
from .track import KeypointTrack

TRAIL_COLOUR = (255, 255, 0)
DEFAULT_TRAIL_SECONDS = 1.0


def _backgrounds(images: np.ndarray, count: int) -> np.ndarray:
    """uint8 [count,H,W,3]: one image repeated, or count frames as given."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"preview backgrounds must be uint8 RGB [H,W,3] or [N,H,W,3], got {images.dtype} {list(images.shape)}"
        )
    if len(images) == 1:
        return np.repeat(images, count, axis=0)
    if len(images) != count:
        raise ValueError(f"preview has {len(images)} background frames for a {count}-frame track; give 1 or {count}")
    return images.copy()


def overlay_track(
    images: np.ndarray,
    track: KeypointTrack,
    trail_seconds: float = DEFAULT_TRAIL_SECONDS,
    opacity: float = 0.6,
) -> np.ndarray:
    """Frames uint8 [N,H,W,3]: each frame of the track drawn as V-Kps over `images` (one photo for
    every frame, or one frame per track frame), with the nose's path over the last trail_seconds.

    The keypoint dots are opaque, in the V-Kps colours, centred on the track's pixel positions
    (scaled from the track's frame size to the images'); the limbs are blended at `opacity`.
    """
    if not (math.isfinite(trail_seconds) and trail_seconds >= 0):
        raise ValueError(f"trail_seconds must be >= 0, got {trail_seconds}")
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    frames = _backgrounds(images, len(track))
    height, width = frames.shape[1:3]
    points = track.scaled_to(width, height).points
    trail = int(round(trail_seconds * (track.fps or ASSUMED_FPS)))
    for index, (frame, kps) in enumerate(zip(frames, points)):
        drawing = draw_kps_image(height, width, kps)
        limbs = drawing.any(axis=-1)
        frame[limbs] = (frame[limbs] * (1 - opacity) + drawing[limbs] * opacity).astype(np.uint8)
        path = points[max(0, index - trail): index + 1, 2]
        if len(path) > 1:
            cv2.polylines(frame, [np.round(path).astype(np.int32)], False, TRAIL_COLOUR, 1, cv2.LINE_AA)
        for (x, y), colour in zip(kps, KPS_COLOURS):
            cv2.circle(frame, (int(x), int(y)), 4, colour, -1)
    return frames


def preview_strip(frames: np.ndarray, count: int = 5, height: int = 128) -> np.ndarray:
    """uint8 [height, W, 3]: `count` frames evenly spread over the clip, side by side, resized to `height`."""
    frames = np.asarray(frames)
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    width = round(frames.shape[2] * height / frames.shape[1])
    return np.concatenate([cv2.resize(frames[i], (width, height), interpolation=cv2.INTER_AREA) for i in picks], axis=1)
