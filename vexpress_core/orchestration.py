"""One orchestration for every front end (CLI, nodes): phases called in order.

    framed_reference   photo -> crop + face keypoints found at the photo's own resolution (no network)
    reference_phase    -> VAE latents and ReferenceNet features (PreparedReference)
    speech_phase       16 kHz speech -> its wav2vec2 encoding (Speech)
    driving_track      track file or driving video -> KeypointTrack, or None
    track_phase        -> the keypoints drawn on each output frame (scaled, resampled, retargeted)
    video_phase        -> an mp4 with the speech; frames_phase -> the frames in memory

The CLI runs them back to back (`cli.run_generate`), the nodes one or two per node. Networks are
reached through `using(names, working_memory)`, a context manager yielding the models with those
networks placed where they run (CLI: `offload.placed`, nodes: ComfyUI's model management), so
placement stays the front end's business; `working_memory(models)` is the bytes the block needs
beside the weights, for front ends that make room for it (ComfyUI). Denoising and decoding are
separate blocks, so in low-VRAM mode the VAE decodes with the UNet off the GPU. Pipeline functions
are called through the module so tests can observe them.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager

import cv2
import numpy as np
import torch

from . import pipeline
from .checkpoint import VExpressModels
from .detectors import Face, FaceDetector, extract_track_from_video, select_face
from .keypoints import DEFAULT_SMOOTH, KeypointTrack, RetargetContext, crop_box, load_any_track, output_track, smoothed_track
from .offload import DECODING_NETWORKS, DENOISING_NETWORKS, REFERENCE_NETWORKS, SPEECH_NETWORKS
from .pipeline import Generation, GenerationSettings, Reference, Speech
from .registry import Registry
from .sampling import Progress
from .video import check_output_path

Using = Callable[..., ContextManager[VExpressModels]]  # using(names, working_memory=None)

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropMode:
    """`box(image_size, aspect, face, face_margin)` -> (x0, y0, x1, y1) of the photo to resize to the
    output; with `needs_face` it gets the chosen face of the whole photo, else None."""

    box: Callable[[tuple[int, int], float, "Face | None", float], Box]
    needs_face: bool = False


CROP_MODES: Registry[CropMode] = Registry("crop mode")
CROP_MODES.register("center", CropMode(lambda size, aspect, face, margin: crop_box(size, aspect)))
CROP_MODES.register("face", CropMode(lambda size, aspect, face, margin: crop_box(size, aspect, face.bbox, margin), True))
CROP_MODES.register("stretch", CropMode(lambda size, aspect, face, margin: (0, 0, *size)))
# Centre: identical to the published stretch for square photos (the published samples), and never
# distorts the face of a photo whose aspect differs from the output's.
DEFAULT_CROP = "center"
DEFAULT_FACE_MARGIN = 0.6


def using_models(models: VExpressModels) -> Using:
    """`using` for models that stay where they are."""
    return lambda names, working_memory=None: nullcontext(models)


@dataclass(frozen=True)
class Framing:
    """How the reference photo becomes the model's input: crop mode, margin for crop='face', and
    the face to use (None = the largest; 0, 1, ... counted from the image's left)."""

    crop: str = DEFAULT_CROP
    face_margin: float = DEFAULT_FACE_MARGIN
    face_index: int | None = None

    def __post_init__(self) -> None:
        CROP_MODES[self.crop]
        if self.face_margin < 0:
            raise ValueError(f"face_margin must be at least 0, got {self.face_margin}")


@dataclass(frozen=True, eq=False)
class PreparedReference:
    """The reference at the output size (VAE latents, ReferenceNet features) and its (left eye,
    right eye, nose) keypoints float32 [3,2] in pixels of that output image."""

    reference: Reference
    keypoints: np.ndarray

    @property
    def width(self) -> int:
        return int(self.reference.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.reference.image.shape[0])


def _detection_scale(size: tuple[int, int], width: int, height: int) -> float:
    """Images are searched at their own resolution, or enlarged to the output size when smaller:
    shrinking first can lose a small or low-contrast face the output size would not need to lose."""
    return max(1.0, width / size[0], height / size[1])


def _faces_found(image: np.ndarray, detector: FaceDetector, width: int, height: int) -> list:
    scale = _detection_scale((image.shape[1], image.shape[0]), width, height)
    if scale == 1.0:
        return detector.detect(image)
    enlarged = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    return [replace(face, bbox=tuple(v / scale for v in face.bbox), kps=face.kps / np.float32(scale))
            for face in detector.detect(enlarged)]


@dataclass(frozen=True, eq=False)
class FramedReference:
    """The reference photo cropped and resized to the output size (uint8 [H, W, 3]) and its (left
    eye, right eye, nose) keypoints float32 [3,2] in those pixels; no network has run yet."""

    image: np.ndarray
    keypoints: np.ndarray


def framed_reference(image: np.ndarray, width: int, height: int, detector: FaceDetector | None,
                     framing: Framing = Framing(), keypoints: np.ndarray | None = None) -> FramedReference:
    """The reference photo cropped per `framing`, resized to width x height, with its keypoints.

    The face is searched in the photo at its own resolution (crop modes that need a face: the whole
    photo; otherwise the crop), and its points mapped to the output size. `keypoints` ([3,2] in the
    photo's pixels) skips detection (except to place a face crop)."""
    image = np.asarray(image)
    mode = CROP_MODES[framing.crop]
    face = None
    if mode.needs_face:
        if detector is None:
            raise ValueError(f"crop={framing.crop!r} needs a face detector")
        face = select_face(_faces_found(image, detector, width, height), framing.face_index, "the reference image")
    x0, y0, x1, y1 = mode.box((image.shape[1], image.shape[0]), width / height, face, framing.face_margin)
    cropped = image[y0:y1, x0:x1]
    if keypoints is not None:
        points = np.asarray(keypoints, np.float32) - np.array([x0, y0], np.float32)
    elif face is not None:
        points = face.kps[:3] - np.array([x0, y0], np.float32)
    else:
        if detector is None:
            raise ValueError("the reference keypoints need a face detector or known keypoints")
        faces = _faces_found(cropped, detector, width, height)
        points = select_face(faces, framing.face_index, "the reference image").kps[:3]
    scale = np.array([width / (x1 - x0), height / (y1 - y0)], np.float32)
    return FramedReference(pipeline.resized_reference(cropped, width, height), (points * scale).astype(np.float32))


def reference_phase(using: Using, framed: FramedReference) -> PreparedReference:
    """VAE-encode the framed reference and run the ReferenceNet once."""
    height, width = framed.image.shape[:2]
    with using(REFERENCE_NETWORKS) as models:
        return PreparedReference(pipeline.prepare_reference(models, framed.image, width, height), framed.keypoints)


def speech_phase(using: Using, waveform_16k: np.ndarray, fps: float, name: str = "audio") -> Speech:
    with using(SPEECH_NETWORKS) as models:
        return pipeline.encode_speech(models, waveform_16k, fps, name=name)


def driving_track(kps_file: str | Path | None = None, kps_fps: float | None = None,
                  driving_video: str | Path | None = None, detector: FaceDetector | None = None,
                  face_index: int | None = None, smooth: float | None = None) -> KeypointTrack | None:
    """The driving track from a track file (its fps replaced by kps_fps when given) or from a video
    (detected at the video's own resolution), or None without either; smoothed with strength
    `smooth` (default: DEFAULT_SMOOTH for a video, 0 = as is for a file)."""
    if kps_file is not None:
        track = load_any_track(kps_file)
        return smoothed_track(replace(track, fps=kps_fps) if kps_fps else track, smooth or 0.0)
    if driving_video is not None:
        if detector is None:
            raise ValueError("a driving video needs a face detector")
        track = extract_track_from_video(driving_video, detector, face_index)
        return smoothed_track(track, DEFAULT_SMOOTH if smooth is None else smooth)
    return None


def default_retarget_mode(driving: KeypointTrack | None) -> str:
    """naive_retarget with a driving track, fix_face without one."""
    return "naive_retarget" if driving is not None else "fix_face"


def track_phase(reference: PreparedReference, speech: Speech, driving: KeypointTrack | None,
                retarget: str | None = None, resample: str | None = None,
                motion_scale: float = 1.0, motion_seed: int = 0) -> KeypointTrack:
    """The keypoints drawn on each output frame: the driving track scaled to the output size,
    resampled to the speech's frames and retargeted onto the reference face (or, for modes that make
    their own motion such as speech_motion, moved with the speech)."""
    return planned_track(reference.keypoints, (reference.width, reference.height), speech.waveform,
                         speech.num_frames, speech.fps, driving, retarget, resample, motion_scale, motion_seed)


def planned_track(keypoints: np.ndarray, size: tuple[int, int], waveform_16k: np.ndarray, num_frames: int,
                  fps: float, driving: KeypointTrack | None, retarget: str | None = None, resample: str | None = None,
                  motion_scale: float = 1.0, motion_seed: int = 0) -> KeypointTrack:
    """`track_phase` from plain values, before any network has run (previews)."""
    context = RetargetContext(waveform_16k, fps, size, motion_scale, motion_seed)
    return output_track(keypoints, driving, size[0], size[1], num_frames, retarget or default_retarget_mode(driving),
                        resample, fps, context=context)


def generation_settings(reference: PreparedReference, speech: Speech, settings: GenerationSettings) -> GenerationSettings:
    """The settings with the output size of the reference and the fps of the speech."""
    return replace(settings, width=reference.width, height=reference.height, fps=speech.fps)


def denoising_phase(using: Using, reference: PreparedReference, speech: Speech, track: KeypointTrack,
                    settings: GenerationSettings, callback: Callable[[Progress], None] | None = None,
                    cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """The final latents, with the settings of `generation_settings`."""
    settings = generation_settings(reference, speech, settings)
    with using(DENOISING_NETWORKS, lambda models: pipeline.denoising_memory(settings, models, speech.num_frames)) as models:
        return pipeline.denoise(models, reference.reference, speech, track, settings, callback=callback, cancel=cancel)


def video_phase(using: Using, reference: PreparedReference, speech: Speech, track: KeypointTrack,
                settings: GenerationSettings, out: str | Path, callback: Callable[[Progress], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> Path:
    """Generate and stream the frames into an mp4 with the speech."""
    check_output_path(out)
    settings = generation_settings(reference, speech, settings)
    final = denoising_phase(using, reference, speech, track, settings, callback, cancel)
    with using(DECODING_NETWORKS, lambda models: pipeline.decoding_memory(settings, models)) as models:
        return pipeline.written_video(models, final, speech, settings, out, cancel)


def frames_phase(using: Using, reference: PreparedReference, speech: Speech, track: KeypointTrack,
                 settings: GenerationSettings, callback: Callable[[Progress], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> Generation:
    """Generate the whole video in memory (frames, fps, the speech cut to the video)."""
    settings = generation_settings(reference, speech, settings)
    final = denoising_phase(using, reference, speech, track, settings, callback, cancel)
    with using(DECODING_NETWORKS, lambda models: pipeline.decoding_memory(settings, models)) as models:
        return pipeline.decoded_generation(models, final, speech, settings, cancel)
