"""The bundled toy V-Express talks: a held-out toy face, held-out babble and a moving head, generated
at the published defaults, scored against the toy world's ground truth (training/toy/metrics.py).

A regression in sampling, audio, pose conditioning, reference transfer or loading moves one of these
figures past its bound; zeroing the audio tokens is shown to fail the lip-sync bound.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from vexpress_core.checkpoint import load_models
from vexpress_core.demo import TOY_MODEL_DIR, model_directory
from vexpress_core.pipeline import GenerationSettings
from vexpress_training.toy.clips import render_clip
from vexpress_training.toy.evaluate import generate_case
from vexpress_training.toy.metrics import pause_frames, scores
from vexpress_training.toy.speech import babble
from vexpress_training.toy.world import NEUTRAL, frame_points, identity

CASE = {"identity": 1007, "babble": 1010, "pose": 1007, "seconds": 4.0}
# Bounds with a margin below the bundled model's figures on this case (r 0.94, silence -0.10,
# +1.8 dB over the reference copy, centroid error 3.9 px); untrained networks score r near 0, PSNR
# below the copy and centroid errors of 5-30 px.
LIP_SYNC_R = 0.7
SILENCE = 0.15
PSNR_GAIN_DB = 1.0
CENTROID_PX = 5.0


class ZeroTokens(torch.nn.Module):
    """An audio projection whose tokens are all zero (the audio pathway cut)."""

    def __init__(self, projection: torch.nn.Module):
        super().__init__()
        self.projection = projection

    @property
    def dtype(self) -> torch.dtype:
        return self.projection.dtype

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(self.projection(windows))


@pytest.fixture(scope="module")
def toy_models():
    return load_models(TOY_MODEL_DIR)


@pytest.fixture(scope="module")
def clip():
    return render_clip(CASE["identity"], babble(CASE["babble"], CASE["seconds"]), CASE["pose"])


def figures(models, clip):
    generated = generate_case(models, clip, GenerationSettings())
    reference_points = frame_points(identity(CASE["identity"]), NEUTRAL, clip.frames.shape[1])
    return scores(generated, clip.frames, clip.points, clip.reference, reference_points, clip.opening, clip.fps)


def test_the_case_has_a_long_pause_and_a_moving_head(clip):
    assert pause_frames(clip.opening, clip.fps).sum() >= clip.fps
    assert np.ptp(clip.points[:, 2, 0]) > 3 and np.ptp(clip.points[:, 2, 1]) > 1


def test_the_toy_model_talks_follows_the_head_and_keeps_the_face(toy_models, clip):
    result = figures(toy_models, clip)
    assert result.lip_sync_r >= LIP_SYNC_R, result
    assert result.silence is not None and result.silence <= SILENCE, result
    assert result.psnr_db >= result.baseline_psnr_db + PSNR_GAIN_DB, result
    assert result.centroid_px <= CENTROID_PX, result


def test_without_audio_tokens_the_mouth_no_longer_follows_the_speech(toy_models, clip):
    cut = replace(toy_models, audio_projection=ZeroTokens(toy_models.audio_projection))
    assert figures(cut, clip).lip_sync_r < LIP_SYNC_R


def test_models_toy_names_the_bundled_model(tmp_path, monkeypatch):
    assert model_directory("toy") == TOY_MODEL_DIR
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()
    assert model_directory("toy") == tmp_path / "toy" or model_directory("toy").resolve() == (tmp_path / "toy").resolve()
    assert model_directory("elsewhere") == type(TOY_MODEL_DIR)("elsewhere")
