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


# ---------------------------------------------------------------------------------------------
# The unconditional branch's zero contexts


def zero_context_block_outputs(rows: int):
    from vexpress_core.models import VExpressTransformerBlock

    torch.manual_seed(0)
    block = VExpressTransformerBlock(64, 8, 8, 96).eval()
    for parameter in block.parameters():  # random biases too, so the bias path is really exercised
        parameter.data.normal_(0, 0.5)
    hidden = torch.randn(2 * rows, 9, 64)
    audio, reference = torch.randn(rows, 5, 96), torch.randn(rows, 12, 64)
    with torch.no_grad():
        as_published = block(hidden, torch.cat([torch.zeros_like(audio), audio]),
                             torch.cat([torch.zeros_like(reference), reference]), 0.95, 3.0)
        shortcut = block(hidden, audio, reference, 0.95, 3.0, zero_context_rows=rows)
    return as_published, shortcut


def test_zero_contexts_give_exactly_the_output_projection_bias():
    as_published, shortcut = zero_context_block_outputs(rows=3)
    assert torch.equal(shortcut, as_published)


def test_zero_context_shortcut_is_bit_identical_through_the_denoiser(job):
    from vexpress_core.pipeline import audio_token_source, kps_feature_source
    from vexpress_core.sampling import Conditions, GuidedDenoiser

    models, reference, speech, track = job
    conditions = Conditions(reference.features, audio_token_source(models, speech, 2),
                            kps_feature_source(models, track, 128, 128))
    latents = torch.randn(1, 4, speech.num_frames, 16, 16, generator=torch.Generator().manual_seed(1))
    windows = [list(range(0, 8)), list(range(6, 14))]
    with torch.no_grad():
        predictions = [GuidedDenoiser(models.denoising_unet, conditions, 3.5, 0.95, 3.0, zero_context_shortcut=on)(
            latents, torch.tensor(500), windows) for on in (False, True)]
    assert torch.equal(predictions[0], predictions[1])


# ---------------------------------------------------------------------------------------------
# Per-frame conditioning computed once


def test_frame_cache_computes_each_frame_once_within_the_budget():
    from vexpress_core.frame_cache import FrameCache

    calls = []

    def compute(start, stop):
        calls.append((start, stop))
        return torch.arange(start, stop, dtype=torch.float32)[None, :, None].expand(2, -1, 3).clone()

    cache = FrameCache(compute, 40, frame_axis=1, chunk=16)
    cache.fill()
    for start, stop in [(0, 24), (20, 40), (0, 24), (15, 17)]:
        assert torch.equal(cache(start, stop), compute(start, stop))
    assert calls[:3] == [(0, 16), (16, 32), (32, 40)] and cache.computed_frames == 40
    small = FrameCache(compute, 40, frame_axis=1, chunk=16, budget_bytes=2 * 16 * 3 * 4)  # room for one chunk
    for _ in range(2):
        small(0, 40)
    assert small.computed_frames == 16 + 2 * 24  # the first chunk is kept, the rest recomputed on each use
    with pytest.raises(ValueError, match=r"frame range \[30, 41\)"):
        cache(30, 41)


def test_conditioning_budget_does_not_change_the_result(job):
    assert torch.equal(final(job, conditioning_budget_mb=0), final(job))


def test_window_batch_auto_is_one_window_on_cpu(job):
    from vexpress_core.pipeline import resolved_window_batch

    models = job[0]
    assert GenerationSettings().window_batch == "auto"
    assert resolved_window_batch(GenerationSettings(), models, 84) == 1
    assert resolved_window_batch(GenerationSettings(window_batch=3), models, 84) == 3
    for bad in (0, "fast", 1.5):
        with pytest.raises(ValueError, match="window_batch must be 'auto' or at least 1"):
            GenerationSettings(window_batch=bad)


def test_decode_chunk_auto_is_one_frame_on_cpu_as_published(job):
    from vexpress_core.pipeline import resolved_decode_chunk

    models = job[0]
    assert GenerationSettings().decode_chunk == "auto"
    sizes = {size: resolved_decode_chunk(GenerationSettings(width=size, height=size), models) for size in (64, 128, 256, 512)}
    assert sizes == {64: 1, 128: 1, 256: 1, 512: 1}
    assert resolved_decode_chunk(GenerationSettings(decode_chunk=3), models) == 3
    with pytest.raises(ValueError, match="decode_chunk must be 'auto' or at least 1"):
        GenerationSettings(decode_chunk=0)


def guider_calls_and_features(models, track, stop):
    """Frames per guider call while the feature source fills its first chunk, and frames [0, stop)."""
    from vexpress_core.pipeline import kps_feature_source

    calls = []
    handle = models.v_kps_guider.register_forward_pre_hook(lambda _m, inputs: calls.append(inputs[0].shape[2]))
    try:
        features = kps_feature_source(models, track, 128, 128)(0, stop)
    finally:
        handle.remove()
    return calls, features


def guider_on_every_frame(models, track, stop):
    from vexpress_core.keypoints import draw_track

    with torch.no_grad():
        drawings = torch.from_numpy(draw_track(track, 128, 128, 0, stop)).float() / 255.0
        return models.v_kps_guider(drawings.permute(3, 0, 1, 2)[None].contiguous())


def test_guider_runs_in_pixel_bounded_batches_with_the_same_features(job):
    from vexpress_core.keypoints import KeypointTrack

    models, _, _, still = job
    shift = np.arange(len(still), dtype=np.float32)[:, None, None] * np.float32(2)
    moving = KeypointTrack(still.points + shift, still.frame_size, still.fps)
    calls, features = guider_calls_and_features(models, moving, 10)
    first_chunk = min(16, len(moving))  # the cache computes its whole first chunk, 4 frames per call at 128x128
    assert calls == [4] * (first_chunk // 4) + ([first_chunk % 4] if first_chunk % 4 else [])
    assert torch.equal(features, guider_on_every_frame(models, moving, 10))


def test_identical_keypoint_frames_share_one_guider_run(job):
    models, _, _, still = job
    calls, features = guider_calls_and_features(models, still, 10)
    assert calls == [1]
    assert torch.equal(features, guider_on_every_frame(models, still, 10))


def test_distinct_frames_keep_the_order_of_first_appearance():
    from vexpress_core.pipeline import distinct_frames

    frames = np.array([[3], [1], [3], [2], [1]], np.uint8)
    distinct, frame_of = distinct_frames(frames)
    assert distinct.tolist() == [[3], [1], [2]] and frame_of == [0, 1, 0, 2, 1]
    assert np.array_equal(distinct[frame_of], frames)
