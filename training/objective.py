"""The training objective: v-prediction MSE on zero-terminal-SNR noise, Min-SNR weighted, with a
lip-region weight, offset noise and conditional dropout. All randomness comes from one generator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from diffusers import AutoencoderKL, DDPMScheduler

from vexpress_core.sampling import SCHEDULER_CONFIG

from .config import TrainConfig
from .network import ConditionKeep, VExpressNet


def training_scheduler() -> DDPMScheduler:
    """The noise schedule of the released model (zero terminal SNR, v-prediction), for adding noise."""
    return DDPMScheduler.from_config(SCHEDULER_CONFIG)


@dataclass(frozen=True)
class DropoutRates:
    """`uncond` drops every condition of a sample; the other rates apply to the remaining samples."""

    reference: float
    kps: float
    audio: float
    uncond: float

    @classmethod
    def from_config(cls, config: TrainConfig) -> "DropoutRates":
        return cls(config.reference_drop_rate, config.kps_drop_rate, config.audio_drop_rate, config.uncond_rate)


def condition_keep(batch: int, num_frames: int, rates: DropoutRates, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> ConditionKeep:
    """Keep masks: the reference per frame, V-Kps and audio per sample, all off for `uncond` samples."""
    def kept(shape: tuple[int, ...], rate: float) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device) >= rate

    conditioned = kept((batch,), rates.uncond)
    reference = kept((batch, num_frames), rates.reference) & conditioned[:, None]
    kps = kept((batch,), rates.kps) & conditioned
    audio = kept((batch,), rates.audio) & conditioned
    return ConditionKeep(reference.float(), kps.float(), audio.float())


def offset_noise(latents: torch.Tensor, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise plus `offset` times a per-sample, per-channel constant (shared by all frames and pixels)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    constant_shape = latents.shape[:2] + (1,) * (latents.ndim - 2)
    constant = torch.randn(constant_shape, generator=generator, device=latents.device, dtype=latents.dtype)
    return noise + offset * constant


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample Min-SNR-gamma loss weights [B] for the scheduler's prediction type (1 when gamma is 0).

    For v-prediction the SNR is taken as SNR + 1 (the v-loss is (SNR + 1) times the x0-loss), as the
    published trainer does; this keeps the zero-SNR terminal step at weight 1 instead of 0, and it
    is the step every trailing-spacing sampler starts from.
    """
    if gamma == 0:
        return torch.ones(timesteps.shape, device=timesteps.device)
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas_cumprod / (1.0 - alphas_cumprod) + 1.0
    return snr.clamp(max=gamma) / snr


def prediction_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> torch.Tensor:
    """The v-prediction target; zero terminal SNR leaves nothing for an epsilon model to predict at the last step."""
    if scheduler.config.prediction_type != "v_prediction":
        raise ValueError(f"zero-terminal-SNR training needs v_prediction, the scheduler has {scheduler.config.prediction_type!r}")
    return scheduler.get_velocity(latents, noise, timesteps)


def lip_weights(lip_masks: torch.Tensor, lip_loss_weight: float) -> torch.Tensor:
    """Per-pixel loss weights: 1 outside the mouth box, `lip_loss_weight` inside (masks in [0, 1])."""
    return 1.0 + (lip_loss_weight - 1.0) * lip_masks


@torch.no_grad()
def encode_video(vae: AutoencoderKL, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Latents [B, C, F, h, w] (a posterior sample, scaled) of frames [B, 3, F, H, W] in [-1, 1]."""
    batch, _, num_frames = frames.shape[:3]
    flat = frames.transpose(1, 2).flatten(0, 1).to(vae.dtype)
    latents = vae.encode(flat).latent_dist.sample(generator=generator) * vae.config.scaling_factor
    return latents.float().unflatten(0, (batch, num_frames)).transpose(1, 2)


@torch.no_grad()
def encode_reference(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Reference latents [B, C, h, w]: the posterior mean, scaled, as at inference."""
    return vae.encode(images.to(vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor


def training_loss(net: VExpressNet, vae: AutoencoderKL, scheduler: DDPMScheduler, batch: Mapping[str, torch.Tensor],
                  config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The weighted v-prediction loss of one batch (see the module docstring)."""
    frames = batch["frames"]
    latents = encode_video(vae, frames, generator)
    reference_latents = encode_reference(vae, batch["reference"])
    size, num_frames = latents.shape[0], latents.shape[2]
    noise = offset_noise(latents, config.noise_offset, generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,), generator=generator, device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = prediction_target(scheduler, latents, noise, timesteps)
    keep = condition_keep(size, num_frames, DropoutRates.from_config(config), generator, latents.device)
    # Under DeepSpeed fp16/bf16 the networks themselves are half precision; under autocast they stay fp32.
    dtype = next(net.parameters()).dtype
    prediction = net(noisy.to(dtype), timesteps, reference_latents.to(dtype), batch["audio"].to(dtype),
                     batch["kps_images"].to(dtype), keep)
    squared = (prediction.float() - target.float()) ** 2 * lip_weights(batch["lip_masks"], config.lip_loss_weight)
    per_sample = squared.mean(dim=tuple(range(1, squared.ndim)))
    return (per_sample * min_snr_weights(scheduler, timesteps, config.snr_gamma)).mean()
