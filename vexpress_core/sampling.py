"""Sampling: classifier-free guidance over context windows, one scheduler step over all frames.

The model call is composed as `guided(windowed(unet))`-style pure pieces:
  * `context_windows` is a pure function of (length, size, overlap);
  * `blend_weights` comes from a registry of fuse schedules (`mean` = published, `ramp`);
  * `GuidedDenoiser` runs the conditional and unconditional branches of many windows in one batch
    (on the steps of its guidance interval; the conditional branch alone on the others), optionally
    with a deep-feature cache across steps (step_cache.py);
  * `sample` asks the denoiser for every frame's prediction, then steps any diffusers scheduler once.
"""
from __future__ import annotations

import functools
import inspect
import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping, Sequence

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

from .host_memory import release_freed_host_memory
from .registry import Registry
from .step_cache import CachePolicy, DeepFeatureCache

# The published motion modules' length: the bound of settings and UI widgets before a model is
# loaded. Sampling also checks the loaded UNet's own length (VExpressModels.motion_length).
MAX_CONTEXT_FRAMES = 32

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}

# Every scheduler keeps the model's training noise schedule: v-prediction, zero terminal SNR and
# trailing spacing (the first step at the last training timestep, where the noise is pure; the
# multistep solvers replace its zero alpha by 2**-24 so their log-SNR stays finite). Karras or
# leading spacings would start below that timestep and leave residual signal the model never saw.
MULTISTEP_CONFIG = {k: v for k, v in SCHEDULER_CONFIG.items() if k != "clip_sample"}

SCHEDULERS: Registry[Callable[[], object]] = Registry("scheduler")
SCHEDULERS.register("ddim", lambda: DDIMScheduler(**SCHEDULER_CONFIG))
# DPM-Solver++ 2M: second-order multistep on the clean-image prediction, first order on the last step.
SCHEDULERS.register("dpmpp", lambda: DPMSolverMultistepScheduler(
    **MULTISTEP_CONFIG, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
))
SCHEDULERS.register("euler", lambda: EulerDiscreteScheduler(**MULTISTEP_CONFIG, final_sigmas_type="zero"))
# UniPC (bh2 predictor-corrector, order 2): the strongest of these at 5-10 steps.
SCHEDULERS.register("unipc", lambda: UniPCMultistepScheduler(
    **MULTISTEP_CONFIG, solver_order=2, predict_x0=True, solver_type="bh2", final_sigmas_type="zero",
))


class Cancelled(RuntimeError):
    """Raised when the cancel check asks the sampler to stop."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where predictions and latents are combined: the model's dtype, at least float32 (fp16 and
    bf16 models accumulate in float32, float64 models stay float64)."""
    return torch.promote_types(dtype, torch.float32)


def make_scheduler(name: str = "ddim"):
    return SCHEDULERS[name]()


def check_context(context_frames: int, context_overlap: int, motion_length: int = MAX_CONTEXT_FRAMES) -> None:
    if not 1 <= context_frames <= motion_length:
        raise ValueError(f"context_frames must be in 1..{motion_length} (the motion modules' position code), got {context_frames}")
    if not 0 <= context_overlap < context_frames:
        raise ValueError(f"context_overlap must be in 0..context_frames-1 ({context_frames - 1}), got {context_overlap}")


def context_windows(num_frames: int, context_frames: int = 24, context_overlap: int = 4) -> list[list[int]]:
    """Windows of `context_frames` consecutive frames, `context_overlap` shared between neighbours,
    covering every frame; the last window is aligned to the end. Where the length fits the published
    schedule (a whole number of windows) the windows are exactly the published ones."""
    check_context(context_frames, context_overlap)
    if num_frames <= context_frames:
        return [list(range(num_frames))]
    stride = context_frames - context_overlap
    starts = list(range(0, num_frames - context_frames + 1, stride))
    if starts[-1] + context_frames < num_frames:
        starts.append(num_frames - context_frames)
    return [list(range(start, start + context_frames)) for start in starts]


BLEND_WEIGHTS: Registry[Callable[[int], torch.Tensor]] = Registry("blend")


@BLEND_WEIGHTS.register("mean")
def mean_weights(length: int) -> torch.Tensor:
    return torch.ones(length)


@BLEND_WEIGHTS.register("ramp")
def ramp_weights(length: int) -> torch.Tensor:
    """A triangular ramp, so frames near a window's edge count less than those at its centre."""
    positions = torch.arange(length, dtype=torch.float64)
    return torch.minimum(positions + 1, length - positions) / math.ceil(length / 2)


def blend_weights(name: str, length: int) -> torch.Tensor:
    return BLEND_WEIGHTS[name](length)


@dataclass
class Conditions:
    """Per-generation conditioning. Per-frame pieces are produced on demand for a frame range."""

    reference_features: Mapping[str, torch.Tensor]  # block path -> [1, L, C]
    audio_tokens: Callable[[int, int], torch.Tensor]  # (start, stop) -> [n, T, D]
    kps_features: Callable[[int, int], torch.Tensor] | None  # (start, stop) -> [1, C0, n, h, w]


class CompiledWithFallback:
    """A `torch.compile`d network that runs eagerly instead when compilation fails (no compiler,
    an unsupported platform, Python, backend or op). Attribute access goes to the wrapped network."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        try:
            self._call = torch.compile(module)
        except Exception as error:  # raised by compile() itself, e.g. on a platform or Python it does not support
            self._call = self._eager(error)

    def _eager(self, error: Exception) -> torch.nn.Module:
        warnings.warn(f"torch.compile failed, running {type(self.module).__name__} eagerly: {error}", stacklevel=3)
        return self.module

    def __call__(self, *args, **kwargs):
        try:
            return self._call(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:
            if self._call is self.module:
                raise
            self._call = self._eager(error)
            return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def _with_unconditional(tensor: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(tensor), tensor])


@dataclass(frozen=True)
class GuidanceInterval:
    """The steps that get classifier-free guidance: those whose position index / steps lies in
    [start, end). The published sampler guides every step: (0, 1)."""

    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"the guidance interval needs 0 <= start < end <= 1 (fractions of the steps), "
                             f"got [{self.start}, {self.end})")

    def covers(self, step: "StepPosition") -> bool:
        return self.start <= step.index / step.count < self.end


@dataclass(frozen=True)
class StepPosition:
    """Which sampling step a model call belongs to: `index` of `count`."""

    index: int
    count: int


class GuidedDenoiser:
    """Model predictions with classifier-free guidance, for several windows in one batch.

    The unconditional branch zeroes the reference features, the V-Kps features and the audio
    tokens as inputs. With zero contexts the reference and audio attentions output exactly their
    output projections' biases, so by default (`zero_context_shortcut`) the UNet gives the
    unconditional half that output instead of running those attentions (bit-identical).
    With `cache_reference_kv` the reference attention's keys and values are computed once and
    shared by all frames (same values, a different order of floating-point operations).
    Window latents are moved to the UNet's device and predictions back to the latents' device,
    so latents may stay in host memory when the device is short of it.

    Trading quality for speed (both off by default): guidance only on the steps of
    `guidance_interval`, the conditional branch alone (half the batch) on the others; and `cache`,
    a deep-feature cache across steps (step_cache.py). Both need the step: call `at_step(i, n)`."""

    def __init__(self, unet, conditions: Conditions, guidance_scale: float = 3.5,
                 reference_weight: float = 1.0, audio_weight: float = 1.0, cache_reference_kv: bool = False,
                 zero_context_shortcut: bool = True, guidance_interval: GuidanceInterval = GuidanceInterval(),
                 cache: CachePolicy = CachePolicy()):
        self.unet = unet
        self.cache_reference_kv = cache_reference_kv
        self.conditions = conditions
        self.guidance_scale = guidance_scale
        self.reference_weight = reference_weight
        self.audio_weight = audio_weight
        self.guided = guidance_scale > 1.0
        self.shortcut = self.guided and zero_context_shortcut
        self.guidance_interval = guidance_interval
        self.deep_cache = DeepFeatureCache(cache) if cache.enabled else None
        self._reference_cache: dict[tuple[int, bool], dict[str, torch.Tensor]] = {}

    def _reference(self, windows: int, doubled: bool) -> dict[str, torch.Tensor]:
        key = (windows, doubled)
        if key not in self._reference_cache:
            features = {}
            for path, feature in self.conditions.reference_features.items():
                batch = feature.expand(windows, *feature.shape[1:])
                features[path] = _with_unconditional(batch) if doubled else batch
            if self.cache_reference_kv:
                features = self.unet.reference_kv(features)
            self._reference_cache[key] = features  # a few sizes: full batches and the remainder
        return self._reference_cache[key]

    def guides(self, step: StepPosition | None) -> bool:
        """Whether a call at `step` (None: a call outside a step schedule) runs the unconditional branch."""
        return self.guided and (step is None or self.guidance_interval.covers(step))

    def at_step(self, index: int, count: int) -> Callable[..., torch.Tensor]:
        """The denoiser for step `index` of `count` (what the guidance interval and the cache go by)."""
        return partial(self, step=StepPosition(index, count))

    def __call__(self, latents: torch.Tensor, timestep, windows: Sequence[Sequence[int]],
                 step: StepPosition | None = None) -> torch.Tensor:
        """latents [1, C, F, h, w] (all frames) -> predictions [len(windows), C, n, h, w] per window."""
        dtype = self.unet.dtype
        device = self.unet.device
        guided = self.guides(step)
        shortcut = guided and self.shortcut
        batch = torch.stack([latents[0, :, list(window)] for window in windows]).to(device, dtype)
        audio = torch.stack([self.conditions.audio_tokens(w[0], w[-1] + 1) for w in windows]).to(device, dtype)
        kps = None
        if self.conditions.kps_features is not None:
            kps = torch.cat([self.conditions.kps_features(w[0], w[-1] + 1) for w in windows]).to(device, dtype)
        if guided:
            batch = torch.cat([batch, batch])
            audio = audio if shortcut else _with_unconditional(audio)
            kps = _with_unconditional(kps) if kps is not None else None
        options = {}
        if self.deep_cache is not None and step is not None:
            options["deep_cache"] = self.deep_cache.slot(tuple(window[0] for window in windows), step.index)
        prediction = self.unet(
            batch, timestep, audio.flatten(0, 1), self._reference(len(windows), guided and not shortcut), kps,
            reference_weight=self.reference_weight, audio_weight=self.audio_weight,
            zero_context_videos=len(windows) if shortcut else 0, **options,
        ).to(accumulation_dtype(dtype))
        if guided:
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + self.guidance_scale * (conditional - unconditional)
        if batch.device.type == "cpu":
            release_freed_host_memory()  # a UNet call's temporaries, left in glibc's heap
        return prediction.to(latents.device)


def window_batches(windows: Sequence[Sequence[int]], batch_size: int) -> list[list[Sequence[int]]]:
    return [list(windows[i:i + batch_size]) for i in range(0, len(windows), batch_size)]


@dataclass(frozen=True)
class Shard:
    """This process's share of every step's window batches when several processes (one per GPU)
    denoise one video: batch i belongs to rank i % world, so every process must cut the windows into
    the same batches (`smallest` agrees on a batch size). Partial sums are added across processes
    after each step, so every process steps identical latents; tensors in host memory are added over
    `host_group` (see `host_process_group`)."""

    rank: int = 0
    world: int = 1
    host_group: torch.distributed.ProcessGroup | None = None

    @classmethod
    def from_process_group(cls) -> "Shard":
        """Every process of the group calls this at the same point (it may create a process group)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_rank(), torch.distributed.get_world_size(), host_process_group())
        return cls()

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.world == self.rank

    def summed(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(tensor, group=self.host_group if tensor.device.type == "cpu" else None)
        return tensor

    def smallest(self, value: int) -> int:
        """The smallest of every process's `value` (every process calls this)."""
        if self.world == 1:
            return value
        values = torch.tensor([value])
        torch.distributed.all_reduce(values, torch.distributed.ReduceOp.MIN, group=self.host_group)
        return int(values)


def host_process_group() -> torch.distributed.ProcessGroup | None:
    """The group that adds host tensors: the default group (None) when its backend can, else a gloo
    group over the same processes (NCCL, accelerate's multi-GPU backend, adds only CUDA tensors)."""
    if "cpu:" in torch.distributed.get_backend_config():
        return None
    return _gloo_group(torch.distributed.group.WORLD)


@functools.lru_cache(maxsize=1)
def _gloo_group(world: torch.distributed.ProcessGroup) -> torch.distributed.ProcessGroup:
    """One gloo group per default group `world` (a new one after the default group is re-created)."""
    return torch.distributed.new_group(backend="gloo")


@dataclass
class Progress:
    step: int
    num_steps: int
    window: int
    num_windows: int
    frames: Sequence[int] = ()  # the frames of the window just predicted
    denoised: Callable[[], torch.Tensor] | None = None  # that window's clean-latent estimate [C, n, h, w], on demand


def clean_estimate(scheduler, model_input: torch.Tensor, timestep, prediction: torch.Tensor) -> torch.Tensor:
    """x0 from a v-prediction: sqrt(a) * x_t - sqrt(1 - a) * v (the scaled model input is x_t for every scheduler)."""
    alpha = scheduler.alphas_cumprod[int(timestep)].to(prediction.device, torch.float32)
    return alpha.sqrt() * model_input.to(prediction.device, torch.float32) - (1 - alpha).sqrt() * prediction.float()


def blended_prediction(denoiser: GuidedDenoiser, latents: torch.Tensor, timestep, windows: Sequence[Sequence[int]],
                       window_batch: int, blend: str, on_window: Callable[[int], None], shard: Shard = Shard(),
                       on_prediction: Callable[[Sequence[int], torch.Tensor], None] | None = None) -> torch.Tensor:
    """Every frame's prediction: the weighted mean over the windows that cover it. `on_prediction(window,
    prediction)` sees each window's own prediction before `on_window(done)` counts it."""
    total = torch.zeros_like(latents, dtype=accumulation_dtype(latents.dtype))
    weight_sum = torch.zeros(latents.shape[2], device=latents.device, dtype=total.dtype)
    done = 0
    for index, group in enumerate(window_batches(windows, window_batch)):
        if not shard.owns(index):
            continue
        predictions = denoiser(latents, timestep, group)
        for window, prediction in zip(group, predictions):
            weights = blend_weights(blend, len(window)).to(latents.device, total.dtype)
            total[0, :, window] += prediction * weights[None, :, None, None]
            weight_sum[window] += weights
            done += 1
            if on_prediction is not None:
                on_prediction(window, prediction)
            on_window(done)
    total, weight_sum = shard.summed(total), shard.summed(weight_sum)
    return (total / weight_sum[None, None, :, None, None]).to(latents.dtype)


def at_step(denoiser: Callable[..., torch.Tensor], index: int, count: int) -> Callable[..., torch.Tensor]:
    """A GuidedDenoiser's view for one step; any other denoiser (a plain callable) as it is."""
    return denoiser.at_step(index, count) if isinstance(denoiser, GuidedDenoiser) else denoiser


def step_options(scheduler, **options) -> dict:
    """The options (eta, the seeded generator) that this scheduler's `step` accepts, so the seed
    reaches any scheduler that draws noise while stepping, not only DDIM."""
    accepted = inspect.signature(scheduler.step).parameters
    return {name: value for name, value in options.items() if name in accepted}


def sample(denoiser: GuidedDenoiser, latents: torch.Tensor, scheduler, num_steps: int, *,
           context_frames: int = 24, context_overlap: int = 4, blend: str = "mean", window_batch: int = 1,
           generator: torch.Generator | None = None, eta: float = 0.0,
           callback: Callable[[Progress], None] | None = None,
           cancel: Callable[[], bool] | None = None, shard: Shard | None = None) -> torch.Tensor:
    """Denoise `latents` [1, C, F, h, w] (already initial noise) and return the final latents.

    `cancel()` is checked before every batch of windows and raises `Cancelled`; `callback` gets a
    `Progress` after every window. `shard` (default: from the torch.distributed process group, if
    any) spreads each step's window batches over processes."""
    shard = shard or Shard.from_process_group()
    num_frames = latents.shape[2]
    windows = context_windows(num_frames, context_frames, context_overlap)
    scheduler.set_timesteps(num_steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    step_kwargs = step_options(scheduler, eta=eta, generator=generator)
    latest: dict = {}  # the last window's frames and clean-latent estimate, for the callback
    for index, timestep in enumerate(scheduler.timesteps):

        def on_window(done: int) -> None:
            if callback is not None:
                callback(Progress(index, num_steps, done, len(windows), tuple(latest["window"]), latest["denoised"]))
            if cancel is not None and cancel():
                raise Cancelled(f"cancelled at step {index + 1}/{num_steps}, window {done}/{len(windows)}")

        if cancel is not None and cancel():
            raise Cancelled(f"cancelled before step {index + 1}/{num_steps}")
        model_input = scheduler.scale_model_input(latents, timestep)

        def on_prediction(window, window_prediction, x=model_input, t=timestep) -> None:
            latest.update(window=window, denoised=lambda: clean_estimate(scheduler, x[0, :, list(window)], t, window_prediction))

        prediction = blended_prediction(at_step(denoiser, index, num_steps), model_input, timestep, windows, window_batch,
                                        blend, on_window, shard, on_prediction)
        latents = scheduler.step(prediction, timestep, latents, **step_kwargs).prev_sample
    return latents
