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
            kl_weight: float = 1e-6, log=print) -> dict[str, float]:
    """Fit the VAE to toy frames (L1 + MSE reconstruction, a small KL), then set its scaling factor so
    latents have unit variance. Returns the held-out reconstruction PSNR and the scaling factor."""
    rng = np.random.default_rng([2718, seed])
    torch.manual_seed(seed)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.05)
    for step in range(1, steps + 1):
        pixels = vae_batch(rng, batch, size)
        posterior = vae.encode(pixels).latent_dist
        decoded = vae.decode(posterior.sample()).sample
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
