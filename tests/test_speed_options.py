"""The speed/quality options (issue 19): solvers, guidance interval, deep-feature cache, fp8 weights
and the presets, in the core, the command line and the nodes. With all of them off the outputs are
the published pipeline's (tests/test_parity.py); here: what each option does and how it is chosen."""
from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from comfyui_like import NODES, execute
from tiny_case import SIZE, make_case
from vexpress_core import cli, pipeline, weight_storage
from vexpress_core.checkpoint import load_models
from vexpress_core.saving import save_weights, split_weights
from vexpress_core.models import reference_features
from vexpress_core.pipeline import GenerationSettings, audio_token_source, kps_feature_source
from vexpress_core.presets import PRESET_FIELDS, PRESETS, preset_settings
from vexpress_core.sampling import Conditions, GuidanceInterval, GuidedDenoiser, StepPosition, make_scheduler, sample
from vexpress_core.settings import SpeedSettings
from vexpress_core.step_cache import CachePolicy
from vexpress_core.weight_storage import FLOAT8, WEIGHT_STORAGES, StreamedSafetensors, stored_dtypes, stored_weight_keys

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BY_ID = NODES.nodes_by_id()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    models = load_models(tiny_model_dir)
    return models, *make_case(models)  # 9 frames at 64x64


def guided_denoiser(tiny, guidance_scale=3.5, **options) -> GuidedDenoiser:
    models, reference, speech, track = tiny
    conditions = Conditions(reference.features, audio_token_source(models, speech, 2),
                            kps_feature_source(models, track, SIZE, SIZE))
    return GuidedDenoiser(models.denoising_unet, conditions, guidance_scale, 0.95, 3.0, True, **options)


def noise(tiny) -> torch.Tensor:
    speech = tiny[2]
    return torch.randn(1, 4, speech.num_frames, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def unet_calls(tiny):
    """Every denoising-UNet call: its batch size, zero-context videos, and whether its deep blocks ran."""
    unet = tiny[0].denoising_unet
    calls = []

    def record(module, args, kwargs):
        calls.append({"batch": args[0].shape[0], "zero_context": kwargs.get("zero_context_videos", 0), "deep": False})

    def deep_ran(module, args):
        calls[-1]["deep"] = True

    handles = [unet.register_forward_pre_hook(record, with_kwargs=True),
               unet.mid_block.resnets[0].register_forward_pre_hook(deep_ran)]
    yield calls
    for handle in handles:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# Solvers


@pytest.mark.parametrize("name, kind", [("dpmpp", DPMSolverMultistepScheduler), ("unipc", UniPCMultistepScheduler)])
def test_solvers_keep_the_models_noise_schedule(name, kind):
    scheduler = make_scheduler(name)
    assert type(scheduler) is kind
    config = scheduler.config
    assert (config.prediction_type, config.rescale_betas_zero_snr, config.timestep_spacing) == ("v_prediction", True, "trailing")
    assert (config.solver_order, config.final_sigmas_type, config.beta_schedule) == (2, "zero", "scaled_linear")
    if name == "dpmpp":
        assert config.algorithm_type == "dpmsolver++"  # DPM-Solver++ 2M
    else:
        assert config.solver_type == "bh2" and config.predict_x0
    ddim = make_scheduler("ddim")
    for steps in (6, 10):
        scheduler.set_timesteps(steps)
        ddim.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == ddim.timesteps.tolist()
        assert int(scheduler.timesteps[0]) == 999  # trailing: the first step at zero SNR, the pure noise
    assert isinstance(make_scheduler("ddim"), DDIMScheduler)


@pytest.mark.parametrize("name", ["dpmpp", "unipc"])
def test_solvers_denoise_through_the_pipeline(tiny, name):
    models, reference, speech, track = tiny
    settings = GenerationSettings(width=SIZE, height=SIZE, steps=3, context_frames=4, context_overlap=1, scheduler=name)
    final = pipeline.denoise(models, reference, speech, track, settings)
    assert final.shape == (1, 4, speech.num_frames, 8, 8) and torch.isfinite(final).all()


# ---------------------------------------------------------------------------------------------
# Guidance on part of the steps


def test_guidance_interval_covers_a_fraction_of_the_steps():
    interval = GuidanceInterval(0.0, 0.4)
    assert [i for i in range(10) if interval.covers(StepPosition(i, 10))] == [0, 1, 2, 3]
    assert [i for i in range(6) if GuidanceInterval(0.5, 1.0).covers(StepPosition(i, 6))] == [3, 4, 5]
    for start, end in ((0.5, 0.5), (-0.1, 0.5), (0.2, 1.5)):
        with pytest.raises(ValueError, match="guidance interval"):
            GuidanceInterval(start, end)


def test_steps_without_guidance_run_the_conditional_half_alone(tiny, unet_calls):
    models, reference, speech, track = tiny
    settings = GenerationSettings(width=SIZE, height=SIZE, steps=4, context_frames=4, context_overlap=1)
    pipeline.denoise(models, reference, speech, track, settings)
    everywhere = list(unet_calls)
    unet_calls.clear()
    pipeline.denoise(models, reference, speech, track, replace(settings, guidance_end=0.5))
    windows = 3  # 9 frames in windows of 4 overlapping by 1, one window per call on the CPU
    assert [call["batch"] for call in everywhere] == [2] * 4 * windows
    assert [call["batch"] for call in unet_calls] == [2] * 2 * windows + [1] * 2 * windows
    assert [call["zero_context"] for call in unet_calls] == [1] * 2 * windows + [0] * 2 * windows
    # Half the UNet rows on the unguided half of the steps: 3/4 of the published work in all.
    assert sum(call["batch"] for call in unet_calls) * 4 == sum(call["batch"] for call in everywhere) * 3


def test_a_full_interval_is_the_published_guidance(tiny):
    latents = noise(tiny)
    windows = [list(range(0, 4)), list(range(3, 7))]
    denoiser = guided_denoiser(tiny)
    with torch.no_grad():
        plain = denoiser(latents, torch.tensor(500), windows)
        at_step = denoiser.at_step(3, 4)(latents, torch.tensor(500), windows)
    assert torch.equal(plain, at_step)


# ---------------------------------------------------------------------------------------------
# Deep-feature cache


def test_cache_policy_validates():
    assert not CachePolicy().enabled and CachePolicy(2).enabled
    with pytest.raises(ValueError, match="cache_interval"):
        CachePolicy(0)
    with pytest.raises(ValueError, match="cache_threshold"):
        CachePolicy(2, -0.1)


def test_a_cached_pass_on_unchanged_input_is_the_full_pass(tiny):
    latents = noise(tiny)
    windows = [list(range(0, 4))]
    cached = guided_denoiser(tiny, cache=CachePolicy(2))
    with torch.no_grad():
        full = guided_denoiser(tiny)(latents, torch.tensor(700), windows)
        first = cached(latents, torch.tensor(700), windows, step=StepPosition(0, 2))
        reused = cached(latents, torch.tensor(700), windows, step=StepPosition(1, 2))
    assert (cached.deep_cache.refreshes, cached.deep_cache.hits) == (1, 1)
    assert torch.equal(first, full) and torch.equal(reused, full)


def run_sampler(tiny, steps, **options) -> GuidedDenoiser:
    denoiser = guided_denoiser(tiny, **options)
    with torch.no_grad():
        sample(denoiser, noise(tiny), make_scheduler("ddim"), steps, context_frames=4, context_overlap=1)
    return denoiser


def test_deep_blocks_run_every_interval_steps(tiny, unet_calls):
    denoiser = run_sampler(tiny, 5, cache=CachePolicy(3))
    windows = 3
    # Per window: full passes at steps 0 and 3, the kept deep features at 1, 2 and 4.
    assert (denoiser.deep_cache.refreshes, denoiser.deep_cache.hits) == (2 * windows, 3 * windows)
    assert [call["deep"] for call in unet_calls] == [True] * windows + [False] * 2 * windows + [True] * windows + [False] * windows


def test_the_cache_refreshes_when_guidance_stops(tiny):
    denoiser = run_sampler(tiny, 5, cache=CachePolicy(3), guidance_interval=GuidanceInterval(0.0, 0.4))
    # Guided steps 0, 1 (1 reuses 0); step 2 is unguided, a batch of another size: a full pass, reused at 3 and 4.
    assert (denoiser.deep_cache.refreshes, denoiser.deep_cache.hits) == (2 * 3, 3 * 3)


def test_the_change_threshold_refreshes_early(tiny):
    eager = run_sampler(tiny, 4, cache=CachePolicy(10, threshold=1e-9))
    assert eager.deep_cache.hits == 0 and eager.deep_cache.refreshes == 4 * 3
    lax = run_sampler(tiny, 4, cache=CachePolicy(2, threshold=1e9))
    assert (lax.deep_cache.refreshes, lax.deep_cache.hits) == (2 * 3, 2 * 3)


def test_without_the_cache_the_unet_gets_no_cache_argument(tiny):
    seen = []
    handle = tiny[0].denoising_unet.register_forward_pre_hook(lambda m, a, k: seen.append(sorted(k)), with_kwargs=True)
    try:
        run_sampler(tiny, 1)
    finally:
        handle.remove()
    assert seen and all("deep_cache" not in keys for keys in seen)


# ---------------------------------------------------------------------------------------------
# fp8 weight storage


@pytest.fixture(scope="module")
def fixture_models(fixture_dir):
    return load_models(fixture_dir), load_models(fixture_dir, weight_storage="fp8_e4m3")


def test_fp8_weights_are_stored_as_float8_e4m3fn(fixture_models):
    plain, fp8 = fixture_models
    for name in ("reference_net", "denoising_unet"):
        network = getattr(fp8, name)
        stored = stored_dtypes(network)
        assert set(stored) == stored_weight_keys(getattr(plain, name)) and set(stored.values()) == {torch.float8_e4m3fn}
        assert any("motion_modules" in key for key in stored) or name == "reference_net"
        assert network.conv_in.weight.dtype == torch.float32 and network.dtype == torch.float32
        weight_bytes = sum(p.numel() * p.element_size() for p in network.parameters())
        plain_bytes = sum(p.numel() * p.element_size() for p in getattr(plain, name).parameters())
        assert weight_bytes < 0.45 * plain_bytes
    for name in ("v_kps_guider", "audio_projection", "vae", "audio_encoder"):
        assert {p.dtype for p in getattr(fp8, name).parameters()} == {torch.float32}
    # Read back through the parametrization: the compute dtype, within e4m3's rounding of the original.
    block = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    original, expanded = plain.denoising_unet.get_submodule(block).weight, fp8.denoising_unet.get_submodule(block).weight
    assert expanded.dtype == torch.float32
    assert ((expanded - original).abs() <= original.abs().amax(dim=1, keepdim=True) / 16).all()


def fixture_prediction(models, reference_io, audio_weight=3.0) -> torch.Tensor:
    inputs = reference_io["inputs"]
    with torch.no_grad():
        features = reference_features(models.reference_net, inputs["reference_latents"])
        kps = models.v_kps_guider(inputs["kps_images"])
        tokens = models.audio_projection(inputs["audio_windows"])
        conditions = Conditions(features, lambda a, b: tokens[a:b], lambda a, b: kps[:, :, a:b])
        denoiser = GuidedDenoiser(models.denoising_unet, conditions, 3.5, 0.95, audio_weight)
        frames = inputs["noisy_latents"].shape[2]
        return denoiser(inputs["noisy_latents"], inputs["timestep"], [list(range(frames))])


def test_fp8_outputs_stay_close_to_the_unquantised_model(fixture_models, fixture_dir):
    """One guided pass on the fixture's inputs: e4m3 keeps 3 mantissa bits, so the random tiny model
    moves by about 16% (bf16 weights and compute: 6%), a fraction of what one conditioning pathway does."""
    plain, fp8 = fixture_models
    reference_io = torch.load(fixture_dir / "reference_io.pt", weights_only=True)
    exact = fixture_prediction(plain, reference_io)

    def relative(other):
        return ((other - exact).norm() / exact.norm()).item()

    assert relative(fixture_prediction(fp8, reference_io)) < 0.2
    assert relative(fixture_prediction(fp8, reference_io)) < 0.25 * relative(fixture_prediction(plain, reference_io, 0.0))


def test_fp8_networks_hand_freed_host_memory_back_after_each_part_of_a_block(fixture_models, fixture_dir, monkeypatch):
    """Each fp8 layer call leaves an expanded weight behind in glibc's heap: on the CPU the fp8
    networks return it after every ResNet, transformer, motion module and sampler of their blocks."""
    plain, fp8 = fixture_models
    released = []
    monkeypatch.setattr(weight_storage, "release_freed_host_memory", lambda: released.append(True))
    parts = [m for m in fp8.denoising_unet.modules() if m._forward_hooks]
    assert {type(m).__name__ for m in parts} >= {"FrameResnetBlock", "SpatialTransformer", "MotionModule", "Downsample2D"}
    reference_io = torch.load(fixture_dir / "reference_io.pt", weights_only=True)
    fixture_prediction(fp8, reference_io)
    assert len(released) >= len(parts)
    released.clear()
    fixture_prediction(plain, reference_io)
    assert not released and not any(m._forward_hooks for m in plain.denoising_unet.modules())


def test_fp8_loads_the_same_from_streamed_safetensors(tiny_model_dir, tmp_path):
    copy = tmp_path / "safetensors"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("v-express"))
    plain = load_models(tiny_model_dir)
    save_weights(split_weights(plain.networks()), copy / "v-express")
    streamed = StreamedSafetensors(copy / "v-express" / "reference_net.safetensors")
    state = plain.reference_net.state_dict()
    assert set(streamed) == set(state) - {"conv_norm_out.weight", "conv_norm_out.bias"}
    assert all(torch.equal(streamed[key], state[key]) for key in list(streamed)[:20])
    from_bin, from_safetensors = (load_models(folder, weight_storage="fp8_e4m3") for folder in (tiny_model_dir, copy))
    for name in ("reference_net", "denoising_unet"):
        a, b = getattr(from_bin, name).state_dict(), getattr(from_safetensors, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def test_storing_an_in_memory_network_matches_loading_it(tiny_model_dir, tiny):
    network = load_models(tiny_model_dir).denoising_unet
    weight_storage.store_float8(network, torch.float32)
    loaded = load_models(tiny_model_dir, weight_storage="fp8_e4m3").denoising_unet
    a, b = network.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def test_without_float8_in_torch_the_error_says_so(tiny_model_dir, monkeypatch):
    assert FLOAT8 is torch.float8_e4m3fn
    monkeypatch.setattr(weight_storage, "FLOAT8", None)
    with pytest.raises(ValueError, match="float8_e4m3fn.*torch 2.1 or newer"):
        load_models(tiny_model_dir, weight_storage="fp8_e4m3")
    with pytest.raises(ValueError, match="unknown weight storage 'int4'"):
        load_models(tiny_model_dir, weight_storage="int4")


# ---------------------------------------------------------------------------------------------
# Presets


def test_presets_registry():
    assert PRESETS.names() == ("quality", "fast", "draft")
    published = GenerationSettings()
    assert preset_settings("quality") == published
    for name in PRESETS:
        assert set(PRESETS[name].values) == set(PRESET_FIELDS)
    fast, draft = preset_settings("fast"), preset_settings("draft")
    assert draft.steps < fast.steps < published.steps
    assert fast.speed.guidance_end < 1.0 and draft.speed.cache_policy.enabled


def parsed(*options) -> GenerationSettings:
    args = cli.parser().parse_args(["generate", "--models", "m", "--reference", "r", "--audio", "a", "--out", "o", *options])
    return cli.settings_from(args)


def test_cli_preset_and_explicit_options():
    assert parsed() == GenerationSettings() == parsed("--preset", "quality")
    fast = parsed("--preset", "fast")
    assert {name: getattr(fast, name) for name in PRESET_FIELDS} == PRESETS["fast"].values
    # Explicit options win, also when they give the published value.
    assert parsed("--preset", "fast", "--steps", "25").steps == 25
    chosen = parsed("--preset", "draft", "--scheduler", "ddim", "--guidance-interval", "0", "1", "--cache-interval", "1",
                    "--width", "64")
    assert (chosen.scheduler, chosen.steps, chosen.speed, chosen.width) == ("ddim", 6, SpeedSettings(), 64)
    mixed = parsed("--cache-interval", "3", "--cache-threshold", "0.1", "--guidance-interval", "0.1", "0.6")
    assert (mixed.scheduler, mixed.steps) == ("ddim", 25)
    assert mixed.speed == SpeedSettings(0.1, 0.6, 3, 0.1)
    with pytest.raises(SystemExit):
        parsed("--preset", "turbo")


def test_generate_runs_a_preset(tiny_model_dir, samples_dir, tmp_path, monkeypatch):
    seen = []
    real = pipeline.denoise

    def spy(models, reference, speech, track, settings, *args, **kwargs):
        seen.append(settings)
        return real(models, reference, speech, track, settings, *args, **kwargs)

    monkeypatch.setattr(pipeline, "denoise", spy)
    audio = samples_dir / "short_case_10" / "aud.mp3"
    import soundfile

    from vexpress_core.audio import load_audio

    speech = tmp_path / "speech.wav"
    soundfile.write(speech, load_audio(audio)[:8000], 16000, subtype="FLOAT")
    code = cli.main(["generate", "--models", str(tiny_model_dir), "--reference", str(samples_dir / "short_case_10" / "ref.jpg"),
                     "--audio", str(speech), "--width", "64", "--height", "64", "--context-frames", "8",
                     "--context-overlap", "2", "--device", "cpu", "--preset", "draft", "--steps", "2",
                     "--weight-storage", "fp8_e4m3", "--out", str(tmp_path / "out.mp4")])
    assert code == 0 and (tmp_path / "out.mp4").is_file()
    (settings,) = seen
    assert (settings.scheduler, settings.steps, settings.speed) == ("unipc", 2, SpeedSettings(0.0, 0.3, 2, 0.0))


# ---------------------------------------------------------------------------------------------
# Nodes


def spec(node_id: str, name: str):
    return next(s for s in BY_ID[node_id].INPUTS if s.name == name)


def test_node_inputs_offer_the_registries():
    preset = spec("VExpressSampler", "preset")
    assert preset.optional and preset.choices() == list(PRESETS.names()) and preset.default == "quality"
    assert spec("VExpressSampler", "speed_options").type == NODES.types.SPEED_OPTIONS
    assert "unipc" in spec("VExpressSampler", "scheduler").choices()
    storage = spec("VExpressLoadModels", "weight_storage")
    assert storage.optional and storage.choices() == list(WEIGHT_STORAGES.names()) and storage.default == "dtype"
    defaults = {s.name: s.default for s in BY_ID["VExpressSpeedOptions"].INPUTS}
    assert BY_ID["VExpressSpeedOptions"].run(**defaults) == (SpeedSettings(),)
    outcome = execute(BY_ID["VExpressSpeedOptions"], {**defaults, "guidance_start": 0.6, "guidance_end": 0.6})
    assert "guidance interval" in outcome.exception_message


SAMPLER = dict(steps=25, cfg=3.5, reference_weight=0.95, audio_weight=3.0, scheduler="ddim", seed=1, deflicker=True)


def node_settings(preset, speed=None, **widgets) -> GenerationSettings:
    reference, speech = SimpleNamespace(width=64, height=64), SimpleNamespace(fps=25.0)
    return NODES.sampling.generation_settings(reference, speech, **{**SAMPLER, **widgets}, preset=preset, speed=speed)


def test_sampler_widgets_left_at_their_defaults_follow_the_preset():
    assert node_settings("quality") == replace(GenerationSettings(), width=64, height=64, fps=25.0, seed=1)
    fast = node_settings("fast")
    assert {name: getattr(fast, name) for name in PRESET_FIELDS} == PRESETS["fast"].values
    assert node_settings("fast", steps=30).steps == 30 and node_settings("draft", scheduler="dpmpp").scheduler == "dpmpp"
    chosen = SpeedSettings(cache_interval=3)
    assert node_settings("draft", chosen).speed == chosen and node_settings("draft", chosen).steps == 6
    assert asdict(node_settings("quality", SpeedSettings(0.0, 0.5)).speed) == asdict(SpeedSettings(0.0, 0.5))


def test_sampler_node_runs_with_its_preset(monkeypatch):
    seen = []

    def frames_phase(using, reference, speech, kps, settings, callback=None, cancel=None):
        seen.append(settings)
        return SimpleNamespace(frames=np.zeros((3, 64, 64, 3), np.uint8), fps=25.0)

    monkeypatch.setattr(NODES.sampling, "frames_phase", frames_phase)
    models = SimpleNamespace(using=None, low_vram=False)
    speech = SimpleNamespace(speech=None, fps=25.0, audio={"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000})
    reference = SimpleNamespace(width=64, height=64)
    outcome = execute(BY_ID["VExpressSampler"], dict(models=models, reference=reference, speech=speech, kps=None, **SAMPLER,
                                                      previews=False, preset="draft",
                                                      speed_options=SpeedSettings(guidance_end=0.5)))
    assert outcome.ok, outcome.exception_message
    (settings,) = seen
    assert (settings.scheduler, settings.steps, settings.speed) == ("unipc", 6, SpeedSettings(guidance_end=0.5))


def test_load_node_stores_fp8_weights(tiny_model_dir, monkeypatch):
    runtime = NODES.runtime
    monkeypatch.setenv(runtime.MODEL_ROOT_ENV, str(tiny_model_dir.parent))
    monkeypatch.setattr(runtime, "folder_paths", None)
    (handle,) = BY_ID["VExpressLoadModels"].run(model=tiny_model_dir.name, dtype="fp32", keep_idle_on="gpu",
                                                 weight_storage="fp8_e4m3")
    assert set(stored_dtypes(handle.models.denoising_unet).values()) == {torch.float8_e4m3fn}
