"""A toy dub: a toy video of a moving head speaking babble A, re-voiced with babble B by the toy model
through the steps of `generate --dub` (frame_video, the reference and speech phases, the video's own
track, denoising, decoding, paste-back), pasted once with each region from the same generated crops.
The truth is the same identity, head track and blinks rendered speaking B."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vexpress_core import pipeline
from vexpress_core.checkpoint import load_models
from vexpress_core.demo import TOY_MODEL_DIR, TOY_SIZE
from vexpress_core.detectors import make_detector
from vexpress_core.framing import CropPlan, PasteSettings
from vexpress_core.framing.modes import frame_video, full_frame_chunks
from vexpress_core.offload import DECODING_NETWORKS
from vexpress_core.orchestration import denoising_phase, generation_settings, reference_phase, speech_phase, using_models
from vexpress_core.pipeline import GenerationSettings
from vexpress_core.video import read_video_frames, write_mp4

from .clips import Clip, render_clip
from .speech import SAMPLE_RATE, babble

IDENTITY = POSE = 1001  # held out: the toy model's moving-head evaluation case
SPEECH_A, SPEECH_B = 1010, 1011  # held-out babble seeds
SECONDS, FPS = 3.0, 25.0
VIDEO_SIZE = 256  # the toy world drawn large: the crop is shrunk to the model's 64x64 and pasted back enlarged
FACE_MARGIN = 0.7  # the crop box then holds the whole frame, as the toy model was trained (prepare --crop center)
# Framed that wide, the default feather (0.08 of the crop) is half an eye distance: more than the
# room between the cartoon's big eyes and its mouth. Both regions are pasted with this one.
FEATHER = 0.04
REGIONS = ("lower-face", "head")


@dataclass(frozen=True)
class ToyDub:
    spoken: Clip  # the video's truth: babble A
    truth: Clip  # the same identity, head track and blinks speaking babble B
    originals: np.ndarray  # the video's frames as decoded (the canvas), uint8 [N, size, size, 3]
    plan: CropPlan
    pasted: dict[str, np.ndarray]  # the dub pasted with each of REGIONS, uint8 [N, size, size, 3]


def toy_dub(work: Path, models_dir: Path = TOY_MODEL_DIR, seconds: float = SECONDS) -> ToyDub:
    """The toy dub, its video written to `work`."""
    wave_a, wave_b = babble(SPEECH_A, seconds), babble(SPEECH_B, seconds)
    spoken = render_clip(IDENTITY, wave_a, POSE, VIDEO_SIZE, FPS)
    truth = render_clip(IDENTITY, wave_b, POSE, VIDEO_SIZE, FPS)
    video = write_mp4(spoken.frames, Path(work) / "spoken.mp4", FPS, audio=(wave_a, SAMPLE_RATE))
    framing = frame_video(video, make_detector("auto", models_dir), TOY_SIZE, TOY_SIZE, FACE_MARGIN,
                          seconds_needed=seconds)
    models = load_models(models_dir)
    using = using_models(models)
    reference = reference_phase(using, framing.framed_reference)
    speech = speech_phase(using, wave_b, framing.plan.fps)
    track = framing.driving_track(speech.num_frames, speech.fps)
    settings = generation_settings(reference, speech, GenerationSettings())
    final = denoising_phase(using, reference, speech, track, settings)
    with using(DECODING_NETWORKS) as decoding:
        crops = list(pipeline.video_chunks(decoding, final, settings))
    pasted = {region: np.concatenate(list(full_frame_chunks(iter(crops), framing, speech.num_frames, speech.fps,
                                                            PasteSettings(FEATHER, region=region))))
              for region in REGIONS}
    originals = np.stack(list(read_video_frames(video)))[:speech.num_frames]
    return ToyDub(spoken, truth, originals, framing.plan, pasted)
