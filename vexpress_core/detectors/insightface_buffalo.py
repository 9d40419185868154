"""insightface's FaceAnalysis with the buffalo_l pack (never downloads)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .faces import Face, MissingBackend


def _buffalo_l_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / "insightface_models" / "models" / "buffalo_l"


def has_buffalo_l(model_dir: str | Path | None) -> bool:
    """Whether model_dir holds insightface_models/models/buffalo_l with its detector."""
    return model_dir is not None and (_buffalo_l_dir(model_dir) / "det_10g.onnx").is_file()


def _face_from_insightface(face: Any) -> Face:
    return Face(tuple(float(v) for v in face.bbox[:4]), np.asarray(face.kps, np.float32)[:5], float(face.det_score))


class InsightFaceDetector:
    """insightface FaceAnalysis with the buffalo_l pack from <model_dir>/insightface_models (CPU).

    Never downloads. `face_analysis_cls` replaces insightface.app.FaceAnalysis (for tests).
    """

    def __init__(self, model_dir: str | Path, det_size: int = 512, face_analysis_cls: type | None = None):
        if not has_buffalo_l(model_dir):
            raise FileNotFoundError(
                f"insightface buffalo_l models not found: expected {_buffalo_l_dir(model_dir) / 'det_10g.onnx'} "
                "(put the buffalo_l pack in model_ckpts/insightface_models/models/buffalo_l, or use retinaface)"
            )
        if face_analysis_cls is None:
            try:
                from insightface.app import FaceAnalysis as face_analysis_cls
            except ImportError as error:
                raise MissingBackend("the insightface detector needs insightface: pip install insightface") from error
        self._app = face_analysis_cls(
            name="buffalo_l",
            root=str(Path(model_dir) / "insightface_models"),
            providers=["CPUExecutionProvider"],
            allowed_modules=["detection"],
        )
        self._app.prepare(ctx_id=-1, det_size=(det_size, det_size))

    def detect(self, image: np.ndarray) -> list[Face]:
        # insightface expects BGR (the published scripts fed it cv2 images).
        return [_face_from_insightface(face) for face in self._app.get(np.ascontiguousarray(image[..., ::-1]))]
