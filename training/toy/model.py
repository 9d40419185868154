"""The toy V-Express's model folder before training: configs in the published layout, a frozen
random wav2vec2, and a VAE fitted to toy frames (the released model ships a trained VAE; a random
one decodes no picture, so the toy fits its own first)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from transformers import Wav2Vec2Config, Wav2Vec2Model

from vexpress_core.tiny import TINY_UNET_CONFIG, feature_extractor

from .metrics import psnr
from .world import head_track, identity, render

logger = logging.getLogger(__name__)

# The tiny test model's SD1.5 layout, sized for 16x16 latents and 64-wide audio tokens.
TOY_UNET_CONFIG = dict(TINY_UNET_CONFIG, block_out_channels=[32, 64, 64, 64], cross_attention_dim=64,
                       layers_per_block=1, sample_size=16)


def toy_wav2vec2(seed: int) -> Wav2Vec2Model:
    """A small random wav2vec2 (two layers of 64), kept frozen as the published one is."""
    torch.manual_seed(seed)
    config = Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            do_stable_layer_norm=False, feat_extract_norm="group")
    return Wav2Vec2Model(config).eval()


def toy_vae() -> AutoencoderKL:
    """sd-vae-ft-mse's design with three blocks: 64x64 frames to 16x16 latents (4 channels)."""
    return AutoencoderKL(block_out_channels=(16, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4,
                         norm_num_groups=16, sample_size=64)


def vae_batch(rng: np.random.Generator, batch: int, size: int) -> torch.Tensor:
    """Toy frames of random training identities, poses, mouth openings and blinks, in [-1, 1] [B, 3, H, W]."""
    frames = []
    for _ in range(batch):
        person = identity(int(rng.integers(0, 1000)))
        pose = head_track(int(rng.integers(0, 1 << 30)), 1, 25.0)[0] if rng.uniform() < 0.7 else head_track(None, 1, 25.0)[0]
        frames.append(render(person, pose, rng.uniform() ** 0.7 if rng.uniform() < 0.8 else 0.0, float(rng.uniform() < 0.05), size))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def fit_vae(vae: AutoencoderKL, steps: int, size: int, seed: int, batch: int = 16, learning_rate: float = 2e-3,
            kl_weight: float = 1e-6, latent_noise: float = 0.0, log=print) -> dict[str, float]:
    """Fit the VAE to toy frames (L1 + MSE reconstruction, a small KL), then set its scaling factor so
    latents have unit variance. Returns the held-out reconstruction PSNR and the scaling factor.

    `latent_noise` adds Gaussian noise of that fraction of the latents' spread before decoding, so the
    decoder learns to turn slightly wrong latents (a denoiser's) into clean pictures."""
    rng = np.random.default_rng([2718, seed])
    torch.manual_seed(seed)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.05)
    for step in range(1, steps + 1):
        pixels = vae_batch(rng, batch, size)
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.sample()
        if latent_noise:
            latents = latents + latent_noise * latents.detach().std() * torch.randn_like(latents)
        decoded = vae.decode(latents).sample
        loss = (decoded - pixels).abs().mean() + ((decoded - pixels) ** 2).mean() + kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        pixels = vae_batch(np.random.default_rng([2718, seed, 1]), 64, size)
        latents = vae.encode(pixels).latent_dist.mean
        decoded = vae.decode(latents).sample.clamp(-1, 1)
        mse = ((decoded - pixels) / 2).pow(2).mean().item()
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    return {"psnr": 10 * np.log10(1.0 / mse), "scaling_factor": scaling}


def held_out_reconstruction(vae: AutoencoderKL, size: int, identities: range = range(1000, 1040)) -> np.ndarray:
    """PSNR (dB) of encode-then-decode on 8 frames of each held-out identity (moving head, mouth
    alternating closed and half open): the ceiling no generation with this VAE can pass."""
    results = []
    for seed in identities:
        person, poses = identity(seed), head_track(seed, 8, 25.0)
        frames = np.stack([render(person, pose, 0.5 * (index % 2), 0.0, size) for index, pose in enumerate(poses)])
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad():
            decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
        results.append(psnr((decoded.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5, frames))
    return np.array(results)


VAE_STEPS, VAE_BATCH, VAE_LATENT_NOISE = 8000, 4, 0.1


def vae_main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python training toy vae",
                                     description="Fit the toy VAE on its own, before `toy train OUT --vae DIR` (about 18 minutes "
                                                 "on 2 CPU cores at the defaults).")
    parser.add_argument("out", type=Path, help="output folder: a diffusers AutoencoderKL (config.json, safetensors) and fit.json")
    parser.add_argument("--steps", type=int, default=VAE_STEPS, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=VAE_BATCH, help="frames a step (more steps on smaller batches fit "
                                                                    "better in the same time, down to 4)")
    parser.add_argument("--latent-noise", type=float, default=VAE_LATENT_NOISE,
                        help="noise added to the latents before decoding, as a fraction of their spread")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.latent_noise < 0:
        parser.error("--steps and --batch must be positive and --latent-noise at least 0")
    if args.size % 4 or args.size < 64:
        parser.error(f"--size must be a multiple of 4 (the VAE halves it twice) and at least 64, got {args.size}")
    started = time.time()

    def log(message: str) -> None:
        print(f"[toy vae {time.time() - started:7.1f} s] {message}", flush=True)

    vae = toy_vae()
    figures = fit_vae(vae, args.steps, args.size, args.seed, batch=args.batch, latent_noise=args.latent_noise, log=log)
    held_out = held_out_reconstruction(vae, args.size)
    figures.update(held_out_psnr_mean=float(held_out.mean()), held_out_psnr_p10=float(np.percentile(held_out, 10)),
                   seconds=round(time.time() - started, 1), steps=args.steps, batch=args.batch,
                   latent_noise=args.latent_noise, seed=args.seed)
    vae.save_pretrained(args.out, safe_serialization=True)
    (args.out / "fit.json").write_text(json.dumps(figures, indent=1))
    log(f"wrote {args.out}: reconstruction of held-out identities 1000-1039 {figures['held_out_psnr_mean']:.2f} dB mean, "
        f"{figures['held_out_psnr_p10']:.2f} dB 10th percentile; scaling factor {figures['scaling_factor']:.4f}")
    return 0


def write_model_base(out: Path, vae: AutoencoderKL, seed: int) -> Path:
    """The non-V-Express parts of a published-layout folder: UNet config, VAE, wav2vec2 and its processor."""
    config_dir = out / "stable-diffusion-v1-5" / "unet"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.json").write_text(json.dumps(TOY_UNET_CONFIG, indent=1))
    vae.save_pretrained(out / "sd-vae-ft-mse", safe_serialization=True)
    wav2vec2_dir = out / "wav2vec2-base-960h"
    toy_wav2vec2(seed).save_pretrained(wav2vec2_dir, safe_serialization=True)
    feature_extractor().save_pretrained(wav2vec2_dir)
    return out
