"""Crop plans: where the generation-size face crop sits in every frame of a photo or a video.

A plan holds one box per frame in the original frame's pixels. For a video the boxes come from the
face detector, smoothed over time (zero-phase Gaussian, so jitter goes and real head moves stay),
with one box size per shot and frames without a face interpolated from their neighbours.

Border rule: a box is shifted back inside the frame when it fits there (the face stays inside it,
off-centre); only a box larger than the frame reaches outside it, and that part is filled by
reflection when cropping (`resample.crop_frame`). So crops never show a black band.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..detectors import Face, FaceDetector, select_face

PLAN_FORMAT_VERSION = 2
DEFAULT_MARGIN = 0.3
DEFAULT_SMOOTHING_SECONDS = 0.2
FACE_SIZE_QUANTILE = 0.9  # the shot's box holds the face at its 90th-percentile size
CUT_JUMP = 0.5  # a detection moving by more than this x the face size between frames starts a shot
CUT_SCALE = 1.4  # ... or changing size by more than this ratio
FOLLOW_IOU = 0.2  # below this overlap with the previous face, a frame's face is chosen afresh

ProgressCallback = Callable[[int, int | None], None]


@dataclass(frozen=True, eq=False)
class FaceObservations:
    """The chosen face per frame: boxes float [N,4] (x0, y0, x1, y1), keypoints float32 [N,5,2]
    (insightface order), valid bool [N] (False = no face found; those rows are zeros)."""

    boxes: np.ndarray
    kps: np.ndarray
    valid: np.ndarray
    frame_size: tuple[int, int]
    fps: float | None = None

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True, eq=False)
class CropPlan:
    """Per-frame crop boxes float [N,4] (x0, y0, x1, y1) in pixels of the original `frame_size`
    (width, height), of aspect `crop_size` (the generation width, height); `face_boxes` [N,4] the
    smoothed face box per frame (it shapes the head paste region); `kps` [N,3,2] the face's (left
    eye, right eye, nose) per frame in original pixels, as detected, frames without a face
    interpolated (they shape the lower-face paste region); `valid` frames had a detected face;
    `shots` int [N] numbers the shots (one box size per shot)."""

    frame_size: tuple[int, int]
    crop_size: tuple[int, int]
    boxes: np.ndarray
    face_boxes: np.ndarray
    kps: np.ndarray
    valid: np.ndarray
    shots: np.ndarray
    fps: float | None = None
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, np.float64)
        count = len(boxes)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or count == 0:
            raise ValueError(f"crop plan boxes must have shape [N,4] with N >= 1, got {list(boxes.shape)}")
        if not np.isfinite(boxes).all() or (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
            raise ValueError("crop plan boxes must be finite with x1 > x0 and y1 > y0")
        for name in ("frame_size", "crop_size"):
            size = tuple(int(v) for v in getattr(self, name))
            if len(size) != 2 or min(size) <= 0:
                raise ValueError(f"crop plan {name} must be (width, height) > 0, got {getattr(self, name)}")
            object.__setattr__(self, name, size)
        arrays = {"face_boxes": (np.float64, (count, 4)), "kps": (np.float64, (count, 3, 2)), "valid": (bool, (count,)),
                  "shots": (np.int64, (count,))}
        for name, (dtype, shape) in arrays.items():
            value = np.asarray(getattr(self, name), dtype)
            if value.shape != shape:
                raise ValueError(f"crop plan {name} must have shape {list(shape)}, got {list(value.shape)}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "fps", None if self.fps is None else float(self.fps))

    def __len__(self) -> int:
        return len(self.boxes)

    def to_dict(self) -> dict:
        return {
            "version": PLAN_FORMAT_VERSION,
            "frame_size": list(self.frame_size),
            "crop_size": list(self.crop_size),
            "fps": self.fps,
            "margin": self.margin,
            "boxes": self.boxes.round(3).tolist(),
            "face_boxes": self.face_boxes.round(3).tolist(),
            "kps": self.kps.round(3).tolist(),
            "valid": self.valid.tolist(),
            "shots": self.shots.tolist(),
        }

    @classmethod
    def from_dict(cls, record: dict) -> CropPlan:
        if record.get("version") != PLAN_FORMAT_VERSION:
            raise ValueError(f"crop plan version {record.get('version')!r} is not {PLAN_FORMAT_VERSION}")
        fields = ("frame_size", "crop_size", "boxes", "face_boxes", "kps", "valid", "shots", "fps", "margin")
        return cls(**{name: record[name] for name in fields})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CropPlan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not a crop plan file ({error})") from error


# ---------------------------------------------------------------------------------------------
# Observing faces


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return float(width * height / union)


def _followed_face(faces: list[Face], previous: np.ndarray | None, face_index: int | None) -> Face | None:
    """The face overlapping the previously chosen one most, else the one `face_index` picks."""
    if previous is not None and faces:
        best = max(faces, key=lambda face: _iou(np.asarray(face.bbox), previous))
        if _iou(np.asarray(best.bbox), previous) >= FOLLOW_IOU:
            return best
    try:
        return select_face(faces, face_index, "this frame")
    except ValueError:
        return None


def observe_faces(frames: Iterable[np.ndarray], detector: FaceDetector, face_index: int | None = None,
                  fps: float | None = None, progress: ProgressCallback | None = None,
                  total: int | None = None, where: str = "the video") -> FaceObservations:
    """The chosen face in every RGB uint8 frame, followed from frame to frame by overlap (so
    `face_index` picks a person once, in the first frame where they are found)."""
    total = len(frames) if isinstance(frames, Sized) else total
    boxes, kps, valid, frame_size = [], [], [], None
    previous = None
    for index, frame in enumerate(frames):
        size = (frame.shape[1], frame.shape[0])
        if frame_size is None:
            frame_size = size
        elif size != frame_size:
            raise ValueError(f"{where}: frame {index} is {size} (width, height), the first frame is {frame_size}")
        face = _followed_face(detector.detect(frame), previous, face_index)
        valid.append(face is not None)
        boxes.append(np.zeros(4) if face is None else np.asarray(face.bbox, np.float64))
        kps.append(np.zeros((5, 2), np.float32) if face is None else np.asarray(face.kps, np.float32)[:5])
        previous = boxes[-1] if face is not None else previous
        if progress is not None:
            progress(index + 1, total)
    if frame_size is None:
        raise ValueError(f"{where} has no frames")
    valid = np.array(valid)
    if not valid.any():
        detail = "" if face_index is None else f" with face_index {face_index}"
        raise ValueError(f"no face found{detail} in any of the {len(valid)} frame(s) of {where}")
    return FaceObservations(np.stack(boxes), np.stack(kps), valid, frame_size, fps)


# ---------------------------------------------------------------------------------------------
# Plans


def _shot_ids(boxes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Shot number per frame: a new shot starts at a detection that jumps or changes size
    abruptly from the previous detection; frames without a face stay in the shot before them."""
    shots = np.zeros(len(boxes), np.int64)
    shot, last = 0, None
    for index in range(len(boxes)):
        if valid[index]:
            if last is not None:
                size_now = max(boxes[index, 2] - boxes[index, 0], boxes[index, 3] - boxes[index, 1])
                size_before = max(boxes[last, 2] - boxes[last, 0], boxes[last, 3] - boxes[last, 1])
                jump = np.hypot(*(boxes[index, :2] + boxes[index, 2:] - boxes[last, :2] - boxes[last, 2:]) / 2)
                ratio = max(size_now, size_before) / max(min(size_now, size_before), 1e-6)
                if jump > CUT_JUMP * size_before or ratio > CUT_SCALE:
                    shot += 1
            last = index
        shots[index] = shot
    return shots


def filled_gaps(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Columns of `values` [N,K] at invalid rows interpolated from valid ones (held at the ends)."""
    frames = np.arange(len(values))
    return np.stack([np.interp(frames, frames[valid], values[valid, k]) for k in range(values.shape[1])], axis=-1)


def gaussian_smoothed(values: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing of [N,K] along N. The ends are padded by point reflection
    (2 x end - mirrored samples), so a steady motion is followed to the last frame without lag."""
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    count = len(values)
    index = np.arange(-radius, count + radius)
    padded = values[np.clip(index, 0, count - 1)].astype(np.float64)
    before, after = index < 0, index >= count
    # A shot shorter than the kernel reflects only what it has (the clips below).
    padded[before] = 2 * values[0] - values[np.clip(-index[before], 0, count - 1)]
    padded[after] = 2 * values[-1] - values[np.clip(2 * (count - 1) - index[after], 0, count - 1)]
    return np.stack([np.convolve(padded[:, k], taps, mode="valid") for k in range(values.shape[1])], axis=-1)


def _crop_extent(face_width: float, face_height: float, crop_size: tuple[int, int],
                 margin: float) -> tuple[float, float]:
    """(width, height) of the smallest box of the crop's aspect holding the face plus `margin` x
    its larger side on every side."""
    aspect = crop_size[0] / crop_size[1]
    side = max(face_width, face_height)
    need_width, need_height = face_width + 2 * margin * side, face_height + 2 * margin * side
    width = max(need_width, need_height * aspect)
    return width, width / aspect


def _inside_frame(start: np.ndarray, extent: float, limit: int) -> np.ndarray:
    """Box starts shifted so [start, start + extent) lies in [0, limit); centred when it cannot."""
    if extent >= limit:
        return np.full_like(start, (limit - extent) / 2)
    return np.clip(start, 0.0, limit - extent)


def plan_from_observations(observations: FaceObservations, crop_size: tuple[int, int],
                           margin: float = DEFAULT_MARGIN,
                           smoothing_seconds: float = DEFAULT_SMOOTHING_SECONDS) -> CropPlan:
    """A crop plan from per-frame faces: per shot, one box size; centres filled where no face
    was found and smoothed over time with a Gaussian of `smoothing_seconds` (frames at 30 fps
    when the fps is unknown); keypoints filled but not smoothed (the generated face follows them
    as detected, and so must the lower-face mask)."""
    if margin < 0:
        raise ValueError(f"face margin must be >= 0, got {margin}")
    boxes, valid = observations.boxes, observations.valid
    shots = _shot_ids(boxes, valid)
    sigma = smoothing_seconds * (observations.fps or 30.0)
    frame_width, frame_height = observations.frame_size
    crop_boxes, face_boxes = np.zeros((len(boxes), 4)), np.zeros((len(boxes), 4))
    kps = np.zeros((len(boxes), 3, 2))
    for shot in np.unique(shots):
        rows = shots == shot
        shot_valid = valid[rows]
        detected = boxes[rows][shot_valid]
        face_width = float(np.quantile(detected[:, 2] - detected[:, 0], FACE_SIZE_QUANTILE))
        face_height = float(np.quantile(detected[:, 3] - detected[:, 1], FACE_SIZE_QUANTILE))
        centres = filled_gaps((boxes[rows, :2] + boxes[rows, 2:]) / 2, shot_valid)
        centres = gaussian_smoothed(centres, sigma)
        width, height = _crop_extent(face_width, face_height, crop_size, margin)
        left = _inside_frame(centres[:, 0] - width / 2, width, frame_width)
        top = _inside_frame(centres[:, 1] - height / 2, height, frame_height)
        crop_boxes[rows] = np.stack([left, top, left + width, top + height], axis=-1)
        half = np.array([face_width, face_height]) / 2
        face_boxes[rows] = np.concatenate([centres - half, centres + half], axis=-1)
        kps[rows] = filled_gaps(observations.kps[rows, :3].reshape(-1, 6), shot_valid).reshape(-1, 3, 2)
    return CropPlan(observations.frame_size, crop_size, crop_boxes, face_boxes, kps, valid, shots,
                    observations.fps, margin)


def photo_crop_plan(image: np.ndarray, detector: FaceDetector, crop_size: tuple[int, int],
                    margin: float = DEFAULT_MARGIN, face_index: int | None = None,
                    where: str = "the reference photo") -> tuple[CropPlan, np.ndarray]:
    """A one-frame plan around the chosen face of an RGB photo, and that face's keypoints float32 [5,2]."""
    face = select_face(detector.detect(image), face_index, where)
    observations = FaceObservations(np.asarray([face.bbox], np.float64), np.asarray(face.kps, np.float32)[None, :5],
                                    np.array([True]), (image.shape[1], image.shape[0]))
    return plan_from_observations(observations, crop_size, margin), observations.kps[0]


def pixel_box(box: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, width, height) in whole pixels of a float (x0, y0, x1, y1) box: the region
    that is cropped and pasted back (same size for every frame of a shot)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return round(x0), round(y0), max(round(x1 - x0), 1), max(round(y1 - y0), 1)


def kps_in_crop(plan: CropPlan, index: int, points: np.ndarray) -> np.ndarray:
    """Points [..., 2] in original pixels -> pixels of frame `index`'s crop at the generation size."""
    left, top, width, height = pixel_box(plan.boxes[index])
    scale = np.array([plan.crop_size[0] / width, plan.crop_size[1] / height])
    return ((np.asarray(points, np.float64) - [left, top]) * scale).astype(np.float32)
