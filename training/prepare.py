"""Prepare talking-face videos for training: `python training prepare --videos DIR --out DATA --models MODELS`.

Per clip: the frames cropped to a square and resized to the training resolution, the face box and
5 landmarks per frame (the V-Kps points are the first three), a mouth box per frame from the
mouth corners, and wav2vec2 vectors interpolated to two per frame (see training/clipdata.py).
Clips with no face, several faces, no audio or an unreadable video are skipped and listed in
DATA/report.json. Clips already prepared are skipped, so an interrupted run can simply be rerun.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import av
import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from vexpress_core.audio import SAMPLE_RATE, encode_audio, load_audio, load_audio_encoder, padded_audio_sequence
from vexpress_core.detectors import DETECTORS, FaceDetector, make_detector
from vexpress_core.video import read_video_frames, video_fps_and_length

from .clipdata import CLIPS, FRAMES, META, REPORT, ClipLabels, ClipMeta, finish_clip, partial_dir, read_meta, write_frames, write_manifest

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
CROP_MODES = ("face", "center")


class SkipClip(Exception):
    """The clip cannot be used; the message says why."""


@dataclass(frozen=True)
class PrepareOptions:
    resolution: int = 512
    crop: str = "face"
    face_scale: float = 1.6
    mouth_scale: float = 1.5
    max_missing: float = 0.05
    jpeg_quality: int = 95


@dataclass(frozen=True)
class FaceTrack:
    """Per-frame face box [N,4] and landmarks [N,5,2] in source pixels; found [N] marks detected frames."""

    boxes: np.ndarray
    landmarks: np.ndarray
    found: np.ndarray
    frame_size: tuple[int, int]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Prepare talking-face clips for V-Express training.")
    parser.add_argument("--videos", required=True, type=Path, help="folder searched recursively for video files with speech")
    parser.add_argument("--out", required=True, type=Path, help="output data folder (rerunning skips finished clips)")
    parser.add_argument("--models", required=True, type=Path, help="model directory holding wav2vec2-base-960h/ (and insightface_models/ if used)")
    parser.add_argument("--resolution", type=int, default=PrepareOptions.resolution, help="square training resolution in pixels")
    parser.add_argument("--crop", choices=CROP_MODES, default=PrepareOptions.crop,
                        help="'face': a square around the clip's faces; 'center': the central square of the frame")
    parser.add_argument("--face-scale", type=float, default=PrepareOptions.face_scale,
                        help="crop side / the longer side of the box holding every face box of the clip "
                             "(1.6 frames a head like the published 512x512 samples)")
    parser.add_argument("--mouth-scale", type=float, default=PrepareOptions.mouth_scale,
                        help="mouth box side / mouth-corner distance (1.5 covers the lips and an open mouth)")
    parser.add_argument("--max-missing", type=float, default=PrepareOptions.max_missing,
                        help="largest fraction of frames without a detected face (their boxes are interpolated)")
    parser.add_argument("--jpeg-quality", type=int, default=PrepareOptions.jpeg_quality, help="JPEG quality of stored frames")
    parser.add_argument("--detector", choices=DETECTORS.names(), default="auto", help="face detector")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device for wav2vec2")
    return parser.parse_args(argv)


def find_videos(folder: Path) -> list[Path]:
    """Video files under `folder`, sorted; raises when there is none."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--videos {folder} is not a folder")
    videos = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise FileNotFoundError(f"no videos in {folder} (looked for {', '.join(VIDEO_SUFFIXES)} files, recursively)")
    return videos


def clip_id(video: Path, root: Path) -> str:
    """A folder name for a video: its path under `root` without suffix, separators as '__'."""
    relative = video.relative_to(root).with_suffix("")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "__".join(relative.parts))


def clip_audio(video: Path) -> np.ndarray:
    """The soundtrack as 16 kHz mono float32; SkipClip when there is none or it is silent."""
    try:
        return load_audio(video)
    except (OSError, ValueError) as error:
        raise SkipClip(f"no audio ({error})") from None


def filled(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Rows of `values` [N, ...] where `found` is False, linearly interpolated from found rows."""
    frames = np.arange(len(values))
    flat = values.reshape(len(values), -1)
    columns = [np.interp(frames, frames[found], flat[found, k]) for k in range(flat.shape[1])]
    return np.stack(columns, axis=-1).reshape(values.shape).astype(np.float32)


def face_track(frames: Iterable[np.ndarray], detector: FaceDetector, max_missing: float) -> FaceTrack:
    """One face per frame; SkipClip on several faces, too many frames without one, or no frames."""
    boxes, landmarks, found, frame_size = [], [], [], None
    for index, frame in enumerate(frames):
        frame_size = (frame.shape[1], frame.shape[0])
        faces = detector.detect(frame)
        if len(faces) > 1:
            raise SkipClip(f"several faces ({len(faces)} in frame {index})")
        face = faces[0] if faces else None
        boxes.append(np.zeros(4, np.float32) if face is None else np.asarray(face.bbox, np.float32))
        landmarks.append(np.zeros((5, 2), np.float32) if face is None else face.kps)
        found.append(face is not None)
    if frame_size is None:
        raise SkipClip("no video frames")
    found = np.array(found)
    missing = int((~found).sum())
    if missing > max_missing * len(found) or not found.any():
        raise SkipClip(f"no face in {missing} of {len(found)} frames")
    return FaceTrack(filled(np.stack(boxes), found), filled(np.stack(landmarks), found), found, frame_size)


def crop_square(track: FaceTrack, mode: str, face_scale: float) -> tuple[int, int, int]:
    """(x0, y0, side) in whole pixels of the square cut from every frame, inside the frame."""
    width, height = track.frame_size
    limit = min(width, height)
    if mode == "center":
        return (width - limit) // 2, (height - limit) // 2, limit
    x1, y1 = track.boxes[:, :2].min(axis=0)
    x2, y2 = track.boxes[:, 2:].max(axis=0)
    side = min(limit, round(face_scale * max(x2 - x1, y2 - y1)))
    x0 = int(np.clip(round((x1 + x2 - side) / 2), 0, width - side))
    y0 = int(np.clip(round((y1 + y2 - side) / 2), 0, height - side))
    return x0, y0, side


def cropped_frames(frames: Iterable[np.ndarray], square: tuple[int, int, int], resolution: int) -> Iterator[np.ndarray]:
    """Frames cut to `square` and resized to resolution x resolution."""
    x0, y0, side = square
    interpolation = cv2.INTER_AREA if side > resolution else cv2.INTER_LINEAR
    for frame in frames:
        yield cv2.resize(frame[y0 : y0 + side, x0 : x0 + side], (resolution, resolution), interpolation=interpolation)


def mouth_boxes(landmarks: np.ndarray, mouth_scale: float) -> np.ndarray:
    """Square boxes [N,4] centred between the mouth corners, `mouth_scale` times their distance wide."""
    corners = landmarks[:, 3:5]
    centre = corners.mean(axis=1)
    half = mouth_scale * np.linalg.norm(corners[:, 1] - corners[:, 0], axis=-1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], axis=-1).astype(np.float32)


def frame_labels(track: FaceTrack, square: tuple[int, int, int], resolution: int, mouth_scale: float,
                 offsets: np.ndarray) -> ClipLabels:
    """Labels in training-frame pixels: boxes on pixel edges, points on pixel centres."""
    x0, y0, side = square
    scale = resolution / side
    origin = np.array([x0, y0], np.float32)
    boxes = ((track.boxes.reshape(-1, 2, 2) - origin) * scale).reshape(-1, 4)
    landmarks = (track.landmarks + 0.5 - origin) * scale - 0.5
    return ClipLabels(
        frame_offsets=offsets,
        face_boxes=boxes.astype(np.float32),
        landmarks=landmarks.astype(np.float32),
        mouth_boxes=mouth_boxes(landmarks + 0.5, mouth_scale),
        face_found=track.found,
    )


def audio_per_frame(wave: np.ndarray, num_frames: int, fps: float, feature_extractor, encoder) -> np.ndarray:
    """wav2vec2 vectors of the soundtrack cut (or padded with silence) to the video's length,
    interpolated to two per frame [2N, D] - the rows inference windows over."""
    samples = round(num_frames / fps * SAMPLE_RATE)
    wave = np.pad(wave[:samples], (0, max(0, samples - len(wave))))
    try:
        hidden = encode_audio(wave, feature_extractor, encoder)
    except ValueError as error:
        raise SkipClip(f"no usable audio ({error})") from None
    return padded_audio_sequence(hidden, num_frames, num_pad=0).numpy()


def prepare_clip(video: Path, clip_dir: Path, detector: FaceDetector, feature_extractor, encoder,
                 options: PrepareOptions) -> ClipMeta:
    """Prepare one video into `clip_dir`; SkipClip says why it cannot be used."""
    try:
        fps, _ = video_fps_and_length(video)
    except (av.error.FFmpegError, ValueError, IndexError) as error:
        raise SkipClip(f"cannot read the video ({error or 'no video stream'})") from None
    wave = clip_audio(video)
    partial = partial_dir(clip_dir)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        track = face_track(read_video_frames(video), detector, options.max_missing)
        square = crop_square(track, options.crop, options.face_scale)
        frames = cropped_frames(read_video_frames(video), square, options.resolution)
        offsets = write_frames(frames, partial / FRAMES, options.jpeg_quality)
        if len(offsets) - 1 != len(track.found):
            raise SkipClip(f"the video decoded to {len(track.found)} frames, then to {len(offsets) - 1}")
        meta = ClipMeta(clip_dir.name, len(track.found), fps, str(video), options.resolution)
        audio = audio_per_frame(wave, meta.num_frames, fps, feature_extractor, encoder)
    except (av.error.FFmpegError, ValueError) as error:
        shutil.rmtree(partial)
        raise SkipClip(f"cannot read the video ({error})") from None
    except SkipClip:
        shutil.rmtree(partial)
        raise
    finish_clip(clip_dir, meta, frame_labels(track, square, options.resolution, options.mouth_scale, offsets), audio)
    return meta


def prepare(videos_dir: Path, out: Path, models: Path, options: PrepareOptions, detector_name: str = "auto",
            device: str = "cpu") -> dict:
    """Prepare every video under `videos_dir` into `out`; returns (and writes) the report."""
    videos = find_videos(videos_dir)
    if options.crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {options.crop!r}")
    detector = make_detector(detector_name, models)
    feature_extractor, encoder = load_audio_encoder(models, device=device)
    clips_dir = out / CLIPS
    clips_dir.mkdir(parents=True, exist_ok=True)
    report = {"prepared": [], "already_done": [], "skipped": []}
    progress = tqdm(videos, desc="preparing clips", unit="clip")
    for video in progress:
        clip_dir = clips_dir / clip_id(video, videos_dir)
        if (clip_dir / META).is_file():
            done_at = read_meta(clip_dir).resolution
            if done_at != options.resolution:
                raise ValueError(f"{clip_dir} was prepared at {done_at} px, not {options.resolution}: use another --out")
            report["already_done"].append(str(video))
            continue
        try:
            prepare_clip(video, clip_dir, detector, feature_extractor, encoder, options)
            report["prepared"].append(str(video))
        except SkipClip as reason:
            report["skipped"].append({"video": str(video), "reason": str(reason)})
        progress.set_postfix(prepared=len(report["prepared"]), skipped=len(report["skipped"]))
    clips = write_manifest(out, options.resolution)
    report["clips_in_manifest"] = len(clips)
    (out / REPORT).write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = PrepareOptions(args.resolution, args.crop, args.face_scale, args.mouth_scale, args.max_missing, args.jpeg_quality)
    try:
        report = prepare(args.videos, args.out, args.models, options, args.detector, args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"prepared {len(report['prepared'])}, already done {len(report['already_done'])}, "
          f"skipped {len(report['skipped'])}; {report['clips_in_manifest']} clips in {args.out / 'manifest.json'}")
    for skipped in report["skipped"]:
        print(f"  skipped {skipped['video']}: {skipped['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
