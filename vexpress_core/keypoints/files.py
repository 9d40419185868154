"""Track files: published kps.pth (read through a numpy-only unpickler) and our own .npz/.json."""
from __future__ import annotations

import codecs
import json
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct

from .track import KeypointTrack

PUBLISHED_KPS_FRAME_SIZE = (512, 512)
TRACK_FORMAT_VERSION = 1


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
