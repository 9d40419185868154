"""Face detectors shared by the nodes: built once per (choice, model folder) and reused."""
from __future__ import annotations

import functools
from pathlib import Path

from vexpress_core.keypoints import Face, FaceDetector, make_detector


@functools.lru_cache(maxsize=4)
def _cached(name: str, model_dir: str | None) -> FaceDetector:
    return make_detector(name, model_dir)


def detector_for(name: str, model_dir: str | Path | None) -> FaceDetector:
    """`make_detector(name, model_dir)`, cached; errors name the missing package or files."""
    return _cached(name, None if model_dir is None else str(model_dir))


def select_face(faces: list[Face], face_index: int | None, where: str) -> Face:
    """The largest face, or the face_index-th from the left; a clear error when there is none."""
    if not faces:
        raise ValueError(f"no face found in {where}; use a clear, front-facing portrait")
    if face_index is None:
        return max(faces, key=lambda face: face.area)
    ordered = sorted(faces, key=lambda face: face.bbox[0] + face.bbox[2])
    if not 0 <= face_index < len(ordered):
        raise ValueError(f"face_index {face_index} is out of range: {where} has {len(ordered)} face(s)")
    return ordered[face_index]
