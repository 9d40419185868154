"""Parity with the published implementation's outputs on the tiny reference model (fp32)."""
import re

import pytest
import torch

from vexpress_core.checkpoint import load_models
from vexpress_core.models import reference_features
from vexpress_core.sampling import Conditions, GuidedDenoiser

PASS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def models(fixture_dir):
    return load_models(fixture_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def reference_io(fixture_dir):
    return torch.load(fixture_dir / "reference_io.pt", weights_only=True)


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual.float() - expected.float()).abs().max().item()


def test_guider_features_match(models, reference_io):
    with torch.no_grad():
        features = models.v_kps_guider(reference_io["inputs"]["kps_images"])
    assert max_error(features, reference_io["outputs"]["kps_features"]) <= PASS_TOLERANCE


def test_audio_tokens_match(models, reference_io):
    with torch.no_grad():
        tokens = models.audio_projection(reference_io["inputs"]["audio_windows"])
    assert max_error(tokens, reference_io["outputs"]["audio_tokens"]) <= PASS_TOLERANCE


def guided_outputs(reference_io):
    pattern = re.compile(r"noise_pred_ref([\d.]+)_aud([\d.]+)_cfg([\d.]+)$")
    found = []
    for key, value in reference_io["outputs"].items():
        match = pattern.match(key)
        if match:
            found.append((tuple(float(g) for g in match.groups()), value))
    assert found, "reference_io.pt holds no noise_pred_ref*_aud*_cfg* outputs"
    return found


def test_denoising_pass_matches(models, reference_io):
    inputs = reference_io["inputs"]
    latents = inputs["noisy_latents"]
    num_frames = latents.shape[2]
    with torch.no_grad():
        features = reference_features(models.reference_net, inputs["reference_latents"])
        kps = models.v_kps_guider(inputs["kps_images"])
        tokens = models.audio_projection(inputs["audio_windows"])
        conditions = Conditions(features, lambda a, b: tokens[a:b], lambda a, b: kps[:, :, a:b])
        for (ref_w, aud_w, cfg), expected in guided_outputs(reference_io):
            # The published un-guided pass hands the UNet fp16-rounded V-Kps features (its residual
            # against an fp32 feature path correlates 0.997 with that rounding); the guided one does not.
            kps_dtype = torch.float16 if cfg <= 1.0 else None
            denoiser = GuidedDenoiser(models.denoising_unet, conditions, cfg, ref_w, aud_w, kps_dtype=kps_dtype)
            prediction = denoiser(latents, inputs["timestep"], [list(range(num_frames))])
            error = max_error(prediction, expected)
            print(f"ref {ref_w} aud {aud_w} cfg {cfg}: max abs error {error:.3g}")
            assert error <= PASS_TOLERANCE
