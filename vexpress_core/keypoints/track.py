"""The keypoint track type: (left eye, right eye, nose) per frame, with frame size, fps and a valid mask."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class KeypointTrack:
    """Per-frame (left eye, right eye, nose) points, float32 [N,3,2], in pixels of `frame_size`.

    `frame_size` is (width, height); `fps` is None when unknown; `valid` marks frames where a face
    was detected (the others were filled in); it defaults to all True.
    """

    points: np.ndarray
    frame_size: tuple[int, int]
    fps: float | None = None
    valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float32)
        if points.ndim != 3 or points.shape[1:] != (3, 2):
            raise ValueError(f"keypoint track points must have shape [N,3,2], got {list(points.shape)}")
        if len(points) == 0:
            raise ValueError("keypoint track is empty: it needs at least one frame")
        if not np.isfinite(points).all():
            raise ValueError("keypoint track holds NaN or infinite coordinates")
        frame_size = tuple(int(v) for v in self.frame_size)
        if len(frame_size) != 2 or min(frame_size) <= 0:
            raise ValueError(f"frame_size must be (width, height) > 0, got {self.frame_size}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive or None, got {self.fps}")
        valid = np.ones(len(points), bool) if self.valid is None else np.asarray(self.valid)
        if valid.shape != (len(points),) or valid.dtype != bool:
            raise ValueError(
                f"valid must be a bool array of shape [{len(points)}], got {valid.dtype} {list(valid.shape)}"
            )
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "frame_size", frame_size)
        object.__setattr__(self, "fps", None if self.fps is None else float(self.fps))
        object.__setattr__(self, "valid", valid)

    def __len__(self) -> int:
        return len(self.points)

    def scaled_to(self, width: int, height: int) -> KeypointTrack:
        """The same track with coordinates in a (width, height) frame."""
        scale = np.array([width / self.frame_size[0], height / self.frame_size[1]], np.float32)
        return dataclasses.replace(self, points=self.points * scale, frame_size=(width, height))
