"""The speed and memory options keep the results of the plain path."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from vexpress_core.audio import synthetic_speech
from vexpress_core.checkpoint import load_models
from vexpress_core.keypoints import output_track
from vexpress_core.pipeline import GenerationSettings, denoise, encode_speech, prepare_reference
from vexpress_core.sampling import CompiledWithFallback

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 128x128: at 64x64 the tiny random UNet's 1x1 inner blocks make it too ill-conditioned to compare
# different operation orders in fp32.
SETTINGS = GenerationSettings(width=128, height=128, steps=2, context_frames=8, context_overlap=2, seed=7)


@pytest.fixture(scope="module")
def job(tiny_model_dir):
    models = load_models(tiny_model_dir)
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    kps = np.array([[48, 56], [80, 56], [64, 76]], np.float32)
    reference = prepare_reference(models, image, 128, 128)
    speech = encode_speech(models, synthetic_speech(0.5), SETTINGS.fps)
    track = output_track(kps, None, 128, 128, speech.num_frames, "fix_face", fps=SETTINGS.fps)
    return models, reference, speech, track


def final(job, **changes) -> torch.Tensor:
    models, reference, speech, track = job
    return denoise(models, reference, speech, track, replace(SETTINGS, **changes))


def test_reference_kv_cache_keeps_the_result(job):
    cached, recomputed = final(job, cache_reference_kv=True), final(job, cache_reference_kv=False)
    assert (cached - recomputed).abs().max().item() < 1e-3


def test_host_latents_give_identical_results(job):
    assert torch.equal(final(job, latents_on_host=True), final(job))


def test_failed_compilation_falls_back_to_eager(job, monkeypatch):
    def broken_compile(module, **_):
        def call(*args, **kwargs):
            raise torch._dynamo.exc.TorchDynamoException("no compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="running VExpressUNet eagerly"):
        compiled = final(job, compile=True)
    assert torch.equal(compiled, final(job))


def test_compiled_wrapper_passes_attributes_through(job):
    models = job[0]
    wrapper = CompiledWithFallback.__new__(CompiledWithFallback)
    wrapper.module = models.denoising_unet
    assert wrapper.dtype == models.denoising_unet.dtype
    assert wrapper.config.in_channels == 4


def test_cancel_is_honoured_while_decoding(job):
    from vexpress_core.pipeline import decoded_chunks
    from vexpress_core.sampling import Cancelled

    models, _, speech, _ = job
    latents = torch.zeros(1, 4, speech.num_frames, 16, 16)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 1

    chunks = decoded_chunks(models, latents, chunk=4, cancel=cancel)
    assert next(chunks).shape[0] == 4
    with pytest.raises(Cancelled, match="decoding frame 5/"):
        next(chunks)
