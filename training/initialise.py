"""Where the trained networks start: a V-Express checkpoint (`--init`: a previous stage or the
released weights), an SD1.5-family UNet (ReferenceNet and the spatial denoising UNet, with
attn1_5/norm1_5 copied from attn1/norm1) and AnimateDiff motion weights (mm_sd_v15_v2).

They are applied in that order, so a config's `pretrained_unet` / `motion_module` replace those
parts of an `--init` checkpoint. Every load is strict: missing, unexpected or misshapen keys raise
`CheckpointError` with the lists.
"""
from __future__ import annotations

import logging
import math
import pickle
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from vexpress_core.checkpoint import (
    MOTION_KEY,
    CheckpointError,
    check_position_codes,
    load_vexpress_networks,
    mismatch_report,
    read_state_dict,
    resolve_model_paths,
)
from vexpress_core.models import REFERENCE_NET_ABSENT_KEYS, AudioProjection, VExpressUNet, VKpsGuider, build_reference_net

from .config import TrainConfig
from .network import VExpressNet

logger = logging.getLogger(__name__)

DIFFUSERS_UNET_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LDM_UNET_PREFIX = "model.diffusion_model."
REFERENCE_ATTENTION = {"attn1.": "attn1_5.", "norm1.": "norm1_5."}
PUBLISHED_GUIDER_CHANNELS = (16, 32, 96, 256)


def guider_channels(latent_factor: int) -> tuple[int, ...]:
    """The published guider's channels (16, 32, 96, 256), one stride-2 step per halving of the
    VAE's: the V-Kps features must land on the latent grid (8 = the published VAE)."""
    steps = int(math.log2(latent_factor))
    if 2 ** steps != latent_factor or not 1 <= steps <= len(PUBLISHED_GUIDER_CHANNELS) - 1:
        raise ValueError(f"the VAE downsamples by {latent_factor}; the V-Kps guider supports 2, 4 or 8")
    return PUBLISHED_GUIDER_CHANNELS[: steps + 1]


def fresh_networks(unet_config: Mapping, audio_dim: int, audio_projection_depth: int, latent_factor: int = 8) -> VExpressNet:
    """Randomly initialised networks for audio vectors of `audio_dim` and a VAE downsampling by
    `latent_factor`; the guider's output conv starts at zero so the V-Kps features enter gently."""
    guider = VKpsGuider(conditioning_embedding_channels=unet_config["block_out_channels"][0],
                        block_out_channels=guider_channels(latent_factor))
    nn.init.zeros_(guider.conv_out.weight)
    nn.init.zeros_(guider.conv_out.bias)
    return VExpressNet(
        build_reference_net(unet_config),
        VExpressUNet.from_unet2d_config(unet_config),
        guider,
        AudioProjection(depth=audio_projection_depth, embedding_dim=audio_dim,
                        dim=unet_config["cross_attention_dim"], output_dim=unet_config["cross_attention_dim"]),
    )


def checkpoint_networks(models_dir: Path, weights_dir: Path) -> VExpressNet:
    """The four networks of a V-Express checkpoint folder (five files, .safetensors or .bin); the
    loader gives every tensor its own aligned allocation, which exact resumes rely on."""
    return VExpressNet(*load_vexpress_networks(resolve_model_paths(models_dir, weights_dir)))


def sd_unet_file(path: Path) -> Path:
    """The weights file of an SD1.5-family UNet given as a file, a UNet folder or a pipeline folder."""
    if path.is_file():
        return path
    for folder in (path / "unet", path):
        for name in DIFFUSERS_UNET_FILES:
            if (folder / name).is_file():
                return folder / name
    raise CheckpointError(f"pretrained_unet {path}: no {' or '.join(DIFFUSERS_UNET_FILES)} in it or in its unet/ folder")


def sd_unet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A diffusers-format SD1.5-family UNet state dict."""
    state = read_state_dict(sd_unet_file(Path(path)))
    if any(key.startswith(LDM_UNET_PREFIX) for key in state):
        raise CheckpointError(
            f"pretrained_unet {path} is an original (LDM) checkpoint; convert it to diffusers format first, "
            "e.g. UNet2DConditionModel.from_single_file(...).save_pretrained(folder)"
        )
    return state


def with_reference_attention(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` plus attn1_5/norm1_5 of every transformer block, copied from its attn1/norm1."""
    copies = {}
    for key, value in state.items():
        for source, target in REFERENCE_ATTENTION.items():
            if ".transformer_blocks." in key and f".{source}" in key:
                copies[key.replace(f".{source}", f".{target}")] = value.clone()
    return {**state, **copies}


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                 expected_keys: Iterable[str] | None = None, ignored: Iterable[str] = ()) -> None:
    """Copy `state` into `module` after a strict key/shape check against `expected_keys` (default: all)."""
    shapes = {key: value.shape for key, value in module.state_dict().items()}
    expected = {key: shapes[key] for key in (expected_keys or shapes)}
    report = mismatch_report(source, expected, state, ignored)
    if report:
        raise CheckpointError(report)
    check_position_codes(source, state)
    module.load_state_dict({key: value for key, value in state.items() if key in expected}, strict=False)


def load_sd_unet(net: VExpressNet, path: str | Path) -> None:
    """ReferenceNet and spatial denoising UNet from an SD1.5-family UNet (attn1_5/norm1_5 from attn1/norm1)."""
    state = sd_unet_state(path)
    load_checked(net.reference_net, state, f"pretrained_unet {path} (ReferenceNet)", ignored=REFERENCE_NET_ABSENT_KEYS)
    spatial = [key for key in net.denoising_unet.state_dict() if MOTION_KEY not in key]
    load_checked(net.denoising_unet, with_reference_attention(state), f"pretrained_unet {path} (denoising UNet)", spatial)


def motion_state(path: str | Path) -> dict[str, torch.Tensor]:
    """An AnimateDiff motion-module checkpoint's tensors (`state_dict` wrappers and `module.` prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"motion_module {path} does not exist (expected AnimateDiff's mm_sd_v15_v2.ckpt)")
    if path.suffix == ".safetensors":
        return read_state_dict(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"motion_module {path}: cannot be read as a weights-only checkpoint ({error})") from error
    state = state.get("state_dict", state) if isinstance(state, Mapping) else state
    if not isinstance(state, Mapping):
        raise CheckpointError(f"motion_module {path}: expected a state dict, found {type(state).__name__}")
    return {key.removeprefix("module."): value for key, value in state.items() if isinstance(value, torch.Tensor)}


def load_motion_module(net: VExpressNet, path: str | Path) -> None:
    """All motion modules of the denoising UNet from an AnimateDiff v2 checkpoint."""
    motion = [key for key in net.denoising_unet.state_dict() if MOTION_KEY in key]
    load_checked(net.denoising_unet, motion_state(path), f"motion_module {path}", motion)


def initial_networks(config: TrainConfig, unet_config: Mapping, audio_dim: int, models_dir: Path,
                     init_dir: Path | None, latent_factor: int = 8) -> VExpressNet:
    """The networks a stage starts from (see the module docstring), in fp32."""
    if init_dir is not None:
        net = checkpoint_networks(models_dir, init_dir)
    else:
        net = fresh_networks(unet_config, audio_dim, config.audio_projection_depth, latent_factor)
        if config.pretrained_unet is None:
            logger.warning("no --init and no pretrained_unet: the ReferenceNet and denoising UNet start from random weights")
    if config.pretrained_unet is not None:
        load_sd_unet(net, config.pretrained_unet)
    if config.motion_module is not None:
        load_motion_module(net, config.motion_module)
    return net.float().train()
