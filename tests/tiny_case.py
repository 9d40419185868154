"""A small fixed generation case for the tiny models: a random 64x64 picture, 0.3 s of synthetic
speech and a still keypoint track."""
import numpy as np

from vexpress_core.audio import synthetic_speech
from vexpress_core.keypoints import KeypointTrack
from vexpress_core.pipeline import encode_speech, prepare_reference

SIZE = 64


def make_case(models):
    """(reference, speech, track) at SIZE x SIZE and 30 fps."""
    picture = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    reference = prepare_reference(models, picture, SIZE, SIZE)
    speech = encode_speech(models, synthetic_speech(0.3), 30.0)
    points = np.array([[22, 28], [42, 28], [32, 40]], dtype=np.float32)
    track = KeypointTrack(np.repeat(points[None], speech.num_frames, axis=0), (SIZE, SIZE), 30.0)
    return reference, speech, track
