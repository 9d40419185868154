"""Speed presets: named sets of the sampling settings that trade quality for speed.

Each preset names every setting in PRESET_FIELDS, so choosing one fully decides the sampler's
recipe; settings given explicitly alongside it (command-line options, changed node widgets, a
connected Speed / Quality Options node) win over the preset's. `quality` is the published recipe
and the default. Why each preset is what it is: docs/speed-presets.md (with the measurements
of benchmarks/presets.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from .registry import Registry
from .settings import GenerationSettings

PRESET_FIELDS = ("scheduler", "steps", "guidance_start", "guidance_end", "cache_interval", "cache_threshold")
DEFAULT_PRESET = "quality"


@dataclass(frozen=True)
class Preset:
    summary: str
    values: Mapping[str, object]

    def __post_init__(self) -> None:
        if set(self.values) != set(PRESET_FIELDS):
            raise ValueError(f"a preset sets exactly {', '.join(PRESET_FIELDS)}; got {', '.join(sorted(self.values))}")
        GenerationSettings(**self.values)


PRESETS: Registry[Preset] = Registry("preset")
PRESETS.register("quality", Preset(
    "the published recipe: DDIM, 25 steps, guidance on every step, no cache",
    dict(scheduler="ddim", steps=25, guidance_start=0.0, guidance_end=1.0, cache_interval=1, cache_threshold=0.0),
))
PRESETS.register("fast", Preset(
    "UniPC, 10 steps, guidance on the first 40% of the steps",
    dict(scheduler="unipc", steps=10, guidance_start=0.0, guidance_end=0.4, cache_interval=1, cache_threshold=0.0),
))
PRESETS.register("draft", Preset(
    "UniPC, 6 steps, guidance on the first 2 steps, deep features reused every other step",
    dict(scheduler="unipc", steps=6, guidance_start=0.0, guidance_end=0.3, cache_interval=2, cache_threshold=0.0),
))


def preset_settings(name: str, base: GenerationSettings = GenerationSettings(), **explicit) -> GenerationSettings:
    """`base` with the preset's values, then the `explicit` settings (any GenerationSettings field) over them."""
    return replace(base, **{**PRESETS[name].values, **explicit})
