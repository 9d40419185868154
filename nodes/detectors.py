"""Face detectors shared by the nodes: built once per (choice, model folder) and reused."""
from __future__ import annotations

import functools
from pathlib import Path

from vexpress_core.detectors import FaceDetector, make_detector


@functools.lru_cache(maxsize=4)
def _cached(name: str, model_dir: str | None) -> FaceDetector:
    return make_detector(name, model_dir)


def detector_for(name: str, model_dir: str | Path | None) -> FaceDetector:
    """`make_detector(name, model_dir)`, cached; errors name the missing package or files."""
    return _cached(name, None if model_dir is None else str(model_dir))
