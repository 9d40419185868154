"""Same seed, same initial noise as the published CLI, and explicit initial latents are used."""
import pytest
import torch

from vexpress_core.checkpoint import load_models
from vexpress_core.pipeline import (
    GenerationSettings,
    denoise,
    initial_latents,
    published_noise_draws,
)

from tiny_case import SIZE, make_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(width=SIZE, height=SIZE, steps=1, context_frames=8, context_overlap=2)


def published_cli_noise(seed, shape, encoder_layers, dtype=torch.float32):
    """The published inference.py, transcribed: `generator = torch.manual_seed(seed)` (torch's
    global generator), the audio encoded with transformers 4.41.1 (whose wav2vec2 encoder draws
    `torch.rand([])` from the global generator once per layer, in eval mode too), then diffusers'
    `randn_tensor(shape, generator, device=cpu, dtype=pipeline dtype)`. Run inside fork_rng so the
    test leaves the global generator as it found it."""
    with torch.random.fork_rng(devices=[]):
        generator = torch.manual_seed(seed)
        for _ in range(encoder_layers):
            torch.rand([])
        return torch.randn(shape, generator=generator, dtype=dtype)


@pytest.mark.parametrize("seed, frames, width, height, layers, dtype", [
    (42, 6, 64, 64, 12, torch.float32),  # wav2vec2-base-960h, the published defaults
    (7, 13, 80, 48, 1, torch.float32),  # the tiny fixture's one-layer encoder
    (0, 5, 64, 64, 12, torch.float16),  # the published CLI's default dtype draws fp16 noise
    (3, 5, 64, 64, 24, torch.float64),
])
def test_initial_latents_are_the_published_cli_noise(seed, frames, width, height, layers, dtype):
    shape = [1, 4, frames, height // 8, width // 8]
    ours = initial_latents(seed, frames, width, height, dtype=dtype, encoder_layers=layers)
    assert ours.dtype == dtype
    assert torch.equal(ours, published_cli_noise(seed, shape, layers, dtype))
    # The draws matter: without them the same seed gives other noise.
    assert not torch.equal(ours, initial_latents(seed, frames, width, height, dtype=dtype))


def test_initial_latents_leave_the_global_generator_alone():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = initial_latents(5, 6, 64, 64, encoder_layers=12)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)
    assert torch.equal(initial_latents(5, 6, 64, 64, encoder_layers=12), first)


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    return load_models(tiny_model_dir)


@pytest.fixture(scope="module")
def case(models):
    return make_case(models)


def test_denoise_starts_from_the_published_noise_of_the_loaded_encoder(models, case):
    reference, speech, track = case
    settings = GenerationSettings(**dict(FAST, seed=5))
    layers = models.audio_encoder.config.num_hidden_layers
    assert published_noise_draws(models) == layers == 1
    noise = published_cli_noise(5, [1, 4, speech.num_frames, SIZE // 8, SIZE // 8], layers)
    from_seed = denoise(models, reference, speech, track, settings)
    assert torch.equal(from_seed, denoise(models, reference, speech, track, settings, latents=noise))


def test_explicit_initial_latents_are_used(models, case):
    reference, speech, track = case
    settings = GenerationSettings(**dict(FAST, seed=5))
    seed_noise = initial_latents(5, speech.num_frames, SIZE, SIZE, encoder_layers=published_noise_draws(models))
    other = torch.randn(seed_noise.shape, generator=torch.Generator().manual_seed(77))
    from_seed = denoise(models, reference, speech, track, settings)
    explicit = denoise(models, reference, speech, track, settings, latents=other)
    assert (explicit - from_seed).abs().max().item() > 1e-2
    # The explicit latents decide the result, not the seed.
    assert torch.equal(explicit, denoise(models, reference, speech, track, GenerationSettings(**dict(FAST, seed=6)), latents=other))
    assert torch.equal(from_seed, denoise(models, reference, speech, track, settings, latents=seed_noise))
