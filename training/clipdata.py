"""On-disk layout of prepared training data (written by prepare.py, read by dataset.py).

    DATA/manifest.json             {"format", "resolution", "clips": [{"id", "num_frames", "fps", "source"}]}
    DATA/report.json               the last preparation run: prepared, already done and skipped clips (with reasons)
    DATA/clips/<id>/frames.jpgs    the clip's frames at the training resolution, JPEG images back to back
    DATA/clips/<id>/labels.npz     frame_offsets [N+1] (byte offsets into frames.jpgs), face_boxes [N,4],
                                   landmarks [N,5,2] (insightface order; the first three are the V-Kps points),
                                   mouth_boxes [N,4], face_found [N] (False where a box was interpolated)
    DATA/clips/<id>/audio.npy      wav2vec2 vectors interpolated to two per frame [2N, 768], float32
    DATA/clips/<id>/meta.json      the clip's manifest entry; written last, so its presence marks the clip done

Coordinates are pixels of the square training frame: points use pixel centres (pixel i is at i),
boxes (x1, y1, x2, y2) use pixel edges.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

DATA_FORMAT = 1
MANIFEST = "manifest.json"
REPORT = "report.json"
CLIPS = "clips"
FRAMES = "frames.jpgs"
LABELS = "labels.npz"
AUDIO = "audio.npy"
META = "meta.json"


class DataError(ValueError):
    """Prepared data is missing, malformed or unusable with the configuration."""


@dataclass(frozen=True)
class ClipMeta:
    id: str
    num_frames: int
    fps: float
    source: str
    resolution: int


@dataclass(frozen=True)
class ClipLabels:
    frame_offsets: np.ndarray
    face_boxes: np.ndarray
    landmarks: np.ndarray
    mouth_boxes: np.ndarray
    face_found: np.ndarray


def partial_dir(clip_dir: Path) -> Path:
    """The folder a clip is written into before it is moved into place."""
    return clip_dir.with_name(clip_dir.name + ".partial")


def write_frames(frames: Iterable[np.ndarray], path: Path, quality: int) -> np.ndarray:
    """Stream RGB frames into `path` as JPEG images back to back; return their byte offsets [N+1]."""
    offsets = [0]
    with open(path, "wb") as stream:
        for frame in frames:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise DataError(f"{path}: frame {len(offsets) - 1} could not be JPEG-encoded")
            stream.write(data.tobytes())
            offsets.append(offsets[-1] + data.size)
    return np.array(offsets, np.int64)


def finish_clip(clip_dir: Path, meta: ClipMeta, labels: ClipLabels, audio: np.ndarray) -> None:
    """Write the labels, audio and meta next to the frames in the partial folder, then move it into place."""
    partial = partial_dir(clip_dir)
    np.savez(partial / LABELS, **asdict(labels))
    np.save(partial / AUDIO, audio.astype(np.float32))
    (partial / META).write_text(json.dumps(asdict(meta), indent=1))
    partial.replace(clip_dir)


def read_meta(clip_dir: Path) -> ClipMeta:
    try:
        return ClipMeta(**json.loads((clip_dir / META).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise DataError(f"{clip_dir}: unreadable {META} ({error}); delete the folder and rerun `python training prepare`") from error


def read_labels(clip_dir: Path) -> ClipLabels:
    try:
        with np.load(clip_dir / LABELS) as data:
            return ClipLabels(**{name: data[name] for name in ClipLabels.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{clip_dir}: unreadable {LABELS} ({error}); delete the folder and rerun `python training prepare`") from error


def read_frames(clip_dir: Path, offsets: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """RGB uint8 frames [len(indices), H, W, 3] of a clip."""
    images = []
    with open(clip_dir / FRAMES, "rb") as stream:
        for index in indices:
            stream.seek(int(offsets[index]))
            data = np.frombuffer(stream.read(int(offsets[index + 1] - offsets[index])), np.uint8)
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"{clip_dir / FRAMES}: frame {index} is not a readable JPEG; rerun `python training prepare` for this clip")
            images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return np.stack(images)


def write_manifest(data_dir: Path, resolution: int) -> list[ClipMeta]:
    """Rebuild manifest.json from every finished clip folder; return its clips."""
    clips = sorted((read_meta(meta.parent) for meta in (data_dir / CLIPS).glob(f"*/{META}")), key=lambda clip: clip.id)
    manifest = {"format": DATA_FORMAT, "resolution": resolution, "clips": [asdict(clip) for clip in clips]}
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return clips


def read_manifest(data_dir: Path) -> tuple[int, list[ClipMeta]]:
    """(resolution, clips) of prepared data; raises DataError with what to do when it is missing or empty."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: prepare the data first with `python training prepare --videos DIR --out {data_dir} --models MODELS`")
    try:
        manifest = json.loads(path.read_text())
        data_format = manifest.get("format")
        clips = [ClipMeta(**clip) for clip in manifest["clips"]]
        resolution = int(manifest["resolution"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{path} is not a training manifest ({error}); rerun `python training prepare`") from error
    if data_format != DATA_FORMAT:
        raise DataError(f"{path}: data format {data_format!r}, this trainer reads format {DATA_FORMAT}; rerun `python training prepare`")
    if not clips:
        raise DataError(f"{path} lists no clips; see {Path(data_dir) / REPORT} for why clips were skipped")
    return resolution, clips
