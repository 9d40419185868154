"""A small fixed generation case for the tiny models: a random 64x64 picture, 0.3 s of synthetic
speech and a still keypoint track."""
import numpy as np
import torch

from vexpress_core.audio import synthetic_speech
from vexpress_core.keypoints import KeypointTrack
from vexpress_core.pipeline import encode_speech, prepare_reference
from vexpress_core.settings import GenerationSettings

SIZE = 64


SECONDS = 0.3
FRAMES = 9  # at 30 fps
SETTINGS = GenerationSettings(width=SIZE, height=SIZE, steps=2, context_frames=4, context_overlap=1)  # 3 windows


def framed_reference():
    """The picture and its (left eye, right eye, nose) keypoints."""
    picture = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return picture, np.array([[22, 28], [42, 28], [32, 40]], dtype=np.float32)


def comfy_audio() -> dict:
    """The speech as ComfyUI's AUDIO."""
    return {"waveform": torch.from_numpy(synthetic_speech(SECONDS))[None, None], "sample_rate": 16000}


def make_case(models):
    """(reference, speech, track) at SIZE x SIZE and 30 fps."""
    picture, points = framed_reference()
    reference = prepare_reference(models, picture, SIZE, SIZE)
    speech = encode_speech(models, synthetic_speech(SECONDS), 30.0)
    track = KeypointTrack(np.repeat(points[None], speech.num_frames, axis=0), (SIZE, SIZE), 30.0)
    return reference, speech, track
