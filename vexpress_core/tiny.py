"""A complete model directory in the published layout with small random weights (no network).

Tests, the demo and benchmarks use it; `sd15=True` writes the full SD1.5-size V-Express networks
(about 2.25 B parameters) with random weights for benchmarking.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from .saving import save_weights, split_weights
from .models import AudioProjection, VExpressUNet, VKpsGuider, build_reference_net

TINY_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [32, 32, 64, 64],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_SIZES = {"block_out_channels": [320, 640, 1280, 1280], "sample_size": 64}


def random_vae(sd15: bool = False) -> AutoencoderKL:
    """A tiny AutoencoderKL, or sd-vae-ft-mse's architecture with `sd15` (random weights)."""
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512) if sd15 else (32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2 if sd15 else 1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512 if sd15 else 64,
    )


def random_wav2vec2(sd15: bool = False) -> Wav2Vec2Model:
    """A one-layer Wav2Vec2Model with hidden size 768, or wav2vec2-base with `sd15` (random weights)."""
    if sd15:
        return Wav2Vec2Model(Wav2Vec2Config())
    config = Wav2Vec2Config(
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=256,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=False,
        feat_extract_norm="group",
    )
    return Wav2Vec2Model(config)


def feature_extractor() -> Wav2Vec2FeatureExtractor:
    """wav2vec2-base-960h's feature-extractor settings (normalising the waveform)."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )


def unet_config_for(sd15: bool) -> dict:
    return dict(TINY_UNET_CONFIG, **(SD15_SIZES if sd15 else {}))


def randomised_zero_outputs(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Zero-initialised layers would make a random model ignore its conditions; give them small noise."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.abs().max() == 0 and parameter.dim() > 1:
                parameter.normal_(0, 0.02, generator=generator)


def random_networks(unet_config: dict, sd15: bool, seed: int) -> dict[str, torch.nn.Module]:
    """The four V-Express networks with random weights, keyed by their published file names."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    networks = {
        "reference_net": build_reference_net(unet_config),
        "denoising_unet": VExpressUNet.from_unet2d_config(unet_config),
        "v_kps_guider": VKpsGuider(conditioning_embedding_channels=unet_config["block_out_channels"][0]),
        "audio_projection": AudioProjection(depth=4 if sd15 else 1),
    }
    for network in networks.values():
        randomised_zero_outputs(network, generator)
    return networks


def random_models(sd15: bool = True, dtype: torch.dtype = torch.float16, device: str = "cuda", seed: int = 0):
    """VExpressModels with random weights built directly in memory (no files), for benchmarks:
    SD1.5-size V-Express networks, sd-vae-ft-mse's VAE and wav2vec2-base when `sd15`."""
    from .checkpoint import ModelPaths, VExpressModels

    networks = list(random_networks(unet_config_for(sd15), sd15, seed).values())
    networks += [random_vae(sd15), random_wav2vec2(sd15)]
    networks = [network.to(device, dtype).eval().requires_grad_(False) for network in networks]
    nowhere = Path("(in memory)")
    paths = ModelPaths(nowhere, {}, nowhere, nowhere, nowhere, nowhere)
    return VExpressModels(*networks, feature_extractor(), paths, dtype, torch.device(device))


def make_tiny_models(out_dir: str | Path, seed: int = 0, sd15: bool = False, fmt: str = "bin") -> Path:
    """Write a model directory in the published layout and return its path (the VAE and wav2vec2
    stay tiny even with `sd15`, which sizes the V-Express networks)."""
    out = Path(out_dir)
    unet_config = unet_config_for(sd15)
    config_dir = out / "stable-diffusion-v1-5" / "unet"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.json").write_text(json.dumps(unet_config, indent=1))
    save_weights(split_weights(random_networks(unet_config, sd15, seed)), out / "v-express", fmt=fmt)
    random_vae().save_pretrained(out / "sd-vae-ft-mse")
    wav2vec2_dir = out / "wav2vec2-base-960h"
    random_wav2vec2().save_pretrained(wav2vec2_dir)
    feature_extractor().save_pretrained(wav2vec2_dir)
    return out
