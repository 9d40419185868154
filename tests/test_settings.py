"""Generation settings in three groups, and the model limits read from the loaded networks."""
import dataclasses
from types import SimpleNamespace

import pytest

from vexpress_core.checkpoint import load_models
from vexpress_core.pipeline import check_model_limits
from vexpress_core.settings import GenerationSettings, MemorySettings, SamplingSettings, WindowSettings


def test_groups_hold_the_published_defaults():
    settings = GenerationSettings()
    assert settings.sampling == SamplingSettings() and settings.windows == WindowSettings()
    assert settings.memory == MemorySettings()
    assert (settings.steps, settings.guidance_scale, settings.reference_weight, settings.audio_weight) == (25, 3.5, 0.95, 3.0)
    assert (settings.context_frames, settings.context_overlap, settings.blend) == (24, 4, "mean")
    assert (settings.window_batch, settings.decode_chunk, settings.cache_reference_kv) == ("auto", "auto", True)


def test_flat_and_grouped_construction_agree():
    flat = GenerationSettings(width=64, steps=3, context_frames=12, blend="ramp", window_batch=2, vae_tiling=True)
    grouped = GenerationSettings(SamplingSettings(width=64, steps=3), WindowSettings(context_frames=12, blend="ramp"),
                                 MemorySettings(window_batch=2, vae_tiling=True))
    assert flat == grouped and hash(flat) == hash(grouped)
    assert flat.windows.context_frames == 12 and flat.memory.window_batch == 2 and flat.sampling.width == 64
    mixed = GenerationSettings(windows=WindowSettings(context_frames=12), context_overlap=2)
    assert mixed.windows == WindowSettings(context_frames=12, context_overlap=2)


def test_replace_takes_flat_fields_and_keeps_the_rest():
    settings = GenerationSettings(width=64, steps=3, window_batch=2)
    changed = dataclasses.replace(settings, steps=5, decode_chunk=4)
    assert changed.steps == 5 and changed.decode_chunk == 4
    assert changed.width == 64 and changed.window_batch == 2 and settings.steps == 3
    assert dataclasses.replace(settings, windows=WindowSettings(context_frames=8)).context_frames == 8


def test_unknown_settings_raise_naming_them():
    with pytest.raises(TypeError, match="colour"):
        GenerationSettings(colour="red")
    with pytest.raises(AttributeError, match="colour"):
        GenerationSettings().colour
    with pytest.raises(dataclasses.FrozenInstanceError):
        GenerationSettings().sampling = SamplingSettings()


def test_each_group_validates_its_own_fields():
    with pytest.raises(ValueError, match="width"):
        SamplingSettings(width=60)
    with pytest.raises(ValueError, match="unknown scheduler"):
        SamplingSettings(scheduler="plms")
    with pytest.raises(ValueError, match="context_overlap"):
        WindowSettings(context_frames=8, context_overlap=8)
    with pytest.raises(ValueError, match="unknown blend"):
        WindowSettings(blend="median")
    with pytest.raises(ValueError, match="window_batch"):
        MemorySettings(window_batch=0)


def test_model_limits_are_read_from_the_loaded_networks(tiny_model_dir):
    models = load_models(tiny_model_dir)
    assert models.motion_length == models.denoising_unet.config.motion_max_len == 32
    assert models.vae_scale_factor == 8 and models.latent_channels == 4
    check_model_limits(models, GenerationSettings(width=64, height=64, context_frames=32, context_overlap=4))


def test_settings_beyond_a_models_limits_are_refused():
    short_motion = SimpleNamespace(motion_length=16, vae_scale_factor=8)
    with pytest.raises(ValueError, match=r"context_frames must be in 1..16"):
        check_model_limits(short_motion, GenerationSettings(context_frames=24))
    check_model_limits(short_motion, GenerationSettings(context_frames=16))
    coarse_vae = SimpleNamespace(motion_length=32, vae_scale_factor=16)
    with pytest.raises(ValueError, match="width must be a multiple of 16"):
        check_model_limits(coarse_vae, GenerationSettings(width=72, height=64))
