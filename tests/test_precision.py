"""Every stage computes in the model's dtype or a wider one: float64 stays float64, fp16/bf16
predictions are combined in float32."""
import pytest
import torch

from vexpress_core.models.audio_projection import PerceiverAttention
from vexpress_core.sampling import accumulation_dtype, blended_prediction, context_windows, make_scheduler, sample


def echo_denoiser(dtype: torch.dtype):
    """Stands in for the guided UNet: each window's prediction is its latents, in `dtype`."""

    def predict(latents, timestep, windows):
        return torch.stack([latents[0, :, list(window)] for window in windows]).to(dtype)

    return predict


def float64_only_latents(num_frames: int = 13) -> torch.Tensor:
    """Latents whose values float32 cannot hold (1 + 1e-12 steps)."""
    generator = torch.Generator().manual_seed(0)
    return 1.0 + 1e-12 * torch.randn([1, 4, num_frames, 2, 2], generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("blend", ["mean", "ramp"])
def test_float64_blending_stays_float64(blend):
    latents = float64_only_latents()
    windows = context_windows(latents.shape[2], 6, 3)
    blended = blended_prediction(echo_denoiser(torch.float64), latents, 999, windows, 2, blend, lambda done: None)
    assert blended.dtype == torch.float64
    # The weighted mean of identical predictions is the prediction; a float32 stage would lose
    # the 1e-12 detail (errors near 6e-8).
    assert (blended - latents).abs().max().item() < 1e-14


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_predictions_accumulate_in_float32(dtype):
    assert accumulation_dtype(dtype) == torch.float32
    latents = torch.randn([1, 4, 13, 2, 2], generator=torch.Generator().manual_seed(1))
    windows = context_windows(latents.shape[2], 6, 3)
    blended = blended_prediction(echo_denoiser(dtype), latents, 999, windows, 1, "ramp", lambda done: None)
    assert blended.dtype == torch.float32
    # The half-precision predictions, mean-blended with float32 rounding (about 1e-7 relative); in
    # half precision the ramp weights alone would round by 1e-3.
    assert (blended - latents.to(dtype).float()).abs().max().item() < 2e-6


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp", "euler"])
def test_float64_sampling_returns_float64(scheduler):
    latents = float64_only_latents(8)
    final = sample(echo_denoiser(torch.float64), latents, make_scheduler(scheduler), 4, context_frames=6, context_overlap=2)
    assert final.dtype == torch.float64


def test_float64_perceiver_attention_has_no_float32_softmax():
    torch.manual_seed(0)
    attention = PerceiverAttention(dim=64, dim_head=16, heads=4).double()
    features, latents = torch.randn(2, 10, 64, dtype=torch.float64), torch.randn(2, 5, 64, dtype=torch.float64)
    with torch.no_grad():
        out = attention(features, latents)
        # The same attention written out in float64.
        normed_latents = attention.norm2(latents)
        context = torch.cat([attention.norm1(features), normed_latents], dim=-2)
        heads = lambda x: x.view(x.shape[0], x.shape[1], 4, 16).transpose(1, 2)
        query = heads(attention.to_q(normed_latents))
        key, value = (heads(t) for t in attention.to_kv(context).chunk(2, dim=-1))
        weights = torch.softmax(query @ key.transpose(-2, -1) / 4.0, dim=-1)
        expected = attention.to_out((weights @ value).transpose(1, 2).reshape(2, 5, 64))
    assert out.dtype == torch.float64
    # A float32 softmax leaves errors near 1e-8 here.
    assert (out - expected).abs().max().item() < 1e-12
