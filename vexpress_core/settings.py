"""Generation settings in four groups: the published sampling parameters, the context-window
settings, the memory/speed options (which change neither the result's meaning nor, except for
documented rounding, its numbers), and the speed/quality trade-offs (which do; all off by default).

`GenerationSettings` holds one of each. It is built from groups or from flat keyword arguments
(any field of any group), reads flat (`settings.steps`), and `dataclasses.replace` takes flat
fields too, so tests and callers can keep writing `GenerationSettings(width=64, window_batch=2)`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from .frame_cache import DEFAULT_BUDGET_MB
from .sampling import BLEND_WEIGHTS, SCHEDULERS, GuidanceInterval, check_context
from .step_cache import CachePolicy


@dataclass(frozen=True)
class SamplingSettings:
    """The published sampling parameters and output format; defaults are the published ones."""

    width: int = 512
    height: int = 512
    fps: float = 30.0
    steps: int = 25
    guidance_scale: float = 3.5
    reference_weight: float = 0.95
    audio_weight: float = 3.0
    scheduler: str = "ddim"
    seed: int = 42
    eta: float = 0.0
    num_pad_audio_frames: int = 2
    deflicker: bool = True

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 8 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        SCHEDULERS[self.scheduler]


@dataclass(frozen=True)
class WindowSettings:
    """How the video is cut into overlapping windows of frames and how their predictions are fused.
    context_frames is also checked against the loaded motion modules' length when sampling."""

    context_frames: int = 24
    context_overlap: int = 4
    blend: str = "mean"

    def __post_init__(self) -> None:
        check_context(self.context_frames, self.context_overlap)
        BLEND_WEIGHTS[self.blend]


@dataclass(frozen=True)
class MemorySettings:
    """Memory/speed trade-offs: where tensors live, how much runs per call, compilation."""

    window_batch: int | str = "auto"
    decode_chunk: int | str = "auto"
    cache_reference_kv: bool = True
    latents_on_host: bool = False
    compile: bool = False
    vae_tiling: bool = False
    conditioning_budget_mb: int = DEFAULT_BUDGET_MB

    def __post_init__(self) -> None:
        for name in ("window_batch", "decode_chunk"):
            value = getattr(self, name)
            if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be 'auto' or at least 1, got {value!r}")
        if self.conditioning_budget_mb < 0:
            raise ValueError(f"conditioning_budget_mb must be 0 or more, got {self.conditioning_budget_mb}")


@dataclass(frozen=True)
class SpeedSettings:
    """Speed against quality: classifier-free guidance only on the steps in [guidance_start,
    guidance_end) (fractions of the steps; the others run the conditional branch alone), and the
    deep-feature cache (a full UNet pass at most every `cache_interval` steps, earlier when the
    shallow features changed by more than `cache_threshold`). The defaults are the published
    sampler: guidance on every step, no cache."""

    guidance_start: float = 0.0
    guidance_end: float = 1.0
    cache_interval: int = 1
    cache_threshold: float = 0.0

    def __post_init__(self) -> None:
        self.guidance_interval
        self.cache_policy

    @property
    def guidance_interval(self) -> GuidanceInterval:
        return GuidanceInterval(self.guidance_start, self.guidance_end)

    @property
    def cache_policy(self) -> CachePolicy:
        return CachePolicy(self.cache_interval, self.cache_threshold)


GROUPS = {"sampling": SamplingSettings, "windows": WindowSettings, "memory": MemorySettings, "speed": SpeedSettings}
GROUP_OF_FIELD = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}


@dataclass(frozen=True, init=False)
class GenerationSettings:
    """All settings of one generation: `sampling`, `windows`, `memory` and `speed` groups."""

    sampling: SamplingSettings
    windows: WindowSettings
    memory: MemorySettings
    speed: SpeedSettings

    def __init__(self, sampling: SamplingSettings | None = None, windows: WindowSettings | None = None,
                 memory: MemorySettings | None = None, speed: SpeedSettings | None = None, **flat):
        unknown = sorted(set(flat) - set(GROUP_OF_FIELD))
        if unknown:
            raise TypeError(f"GenerationSettings got unknown settings {unknown}; known: {', '.join(GROUP_OF_FIELD)}")
        given = {"sampling": sampling, "windows": windows, "memory": memory, "speed": speed}
        for group, cls in GROUPS.items():
            changes = {name: value for name, value in flat.items() if GROUP_OF_FIELD[name] == group}
            value = cls(**changes) if given[group] is None else dataclasses.replace(given[group], **changes)
            object.__setattr__(self, group, value)

    def __getattr__(self, name: str):
        group = GROUP_OF_FIELD.get(name)
        if group is None:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
        return getattr(object.__getattribute__(self, group), name)
