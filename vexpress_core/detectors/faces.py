"""Detected faces, the detector protocol every backend follows, and choosing one face."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face: bbox (x1, y1, x2, y2), kps float32 [5,2] in insightface order
    (left eye, right eye, nose, mouth left, mouth right; left = image left), score."""

    bbox: tuple[float, float, float, float]
    kps: np.ndarray
    score: float

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


class MissingBackend(RuntimeError):
    """An optional package a detector runs on (onnxruntime, insightface) is not installed."""


class FaceDetector(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 [H,W,3] image."""
        ...


def chosen_face(faces: list[Face], face_index: int | None) -> Face | None:
    """The largest face, or the face_index-th counted from the image's left; None if absent."""
    if not faces:
        return None
    if face_index is None:
        return max(faces, key=lambda face: face.area)
    left_to_right = sorted(faces, key=lambda face: face.bbox[0] + face.bbox[2])
    return left_to_right[face_index] if 0 <= face_index < len(left_to_right) else None


def select_face(faces: list[Face], face_index: int | None, where: str) -> Face:
    """The largest face, or the face_index-th from the image's left; a clear error naming `where` when absent."""
    face = chosen_face(faces, face_index)
    if face is None:
        if not faces:
            raise ValueError(f"no face found in {where}; use a clear, front-facing portrait")
        raise ValueError(f"face_index {face_index} is out of range: {where} has {len(faces)} face(s)")
    return face


def reference_keypoints(image_rgb: np.ndarray, detector: FaceDetector, face_index: int | None = None) -> np.ndarray:
    """(left eye, right eye, nose) float32 [3,2] of the chosen face in the reference image."""
    return select_face(detector.detect(image_rgb), face_index, "the reference image").kps[:3].copy()
