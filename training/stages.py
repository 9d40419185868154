"""The one table of what each training stage trains and zeroes, and the parameter parts it names.

Parts (every parameter of `VExpressNet` belongs to exactly one, or to none when no stage can train it):
  reference_net    the ReferenceNet, except what never reaches a captured feature (see `reference_idle_prefixes`)
  spatial_unet     the denoising UNet without its audio attention and motion modules: conv_in/out, time
                   embedding, resnets, spatial transformers (attn1, attn1_5, norm1, norm1_5, ff, norm3, proj_in/out)
  audio_attention  attn2 and norm2 of every denoising transformer block (the audio cross-attention)
  motion_modules   every `motion_modules.*` parameter
  v_kps_guider     the V-Kps guider
  audio_projection the audio projection

Zeroed outputs are set to zero when a stage starts (not when it resumes), so the layer behind them
starts as the identity: `audio_attention_out` = attn2.to_out, `motion_out` = temporal_transformer.proj_out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from vexpress_core.models.reference import reference_block_paths

PARTS = ("reference_net", "spatial_unet", "audio_attention", "motion_modules", "v_kps_guider", "audio_projection")
ZEROED_OUTPUTS = {
    "audio_attention_out": re.compile(r"^denoising_unet\..*\.transformer_blocks\.\d+\.attn2\.to_out\."),
    "motion_out": re.compile(r"^denoising_unet\..*motion_modules\.\d+\.temporal_transformer\.proj_out\."),
}
AUDIO_ATTENTION = re.compile(r"\.transformer_blocks\.\d+\.(attn2|norm2)\.")
MOTION_MODULES = re.compile(r"(^|\.)motion_modules\.")


@dataclass(frozen=True)
class StagePlan:
    trained: tuple[str, ...]
    zeroed: tuple[str, ...]


STAGE_PLANS = {
    # Single frames: learn appearance (ReferenceNet + attn1_5) and pose (V-Kps). Audio attention
    # and motion modules are switched off by zeroing their output layers and kept frozen.
    1: StagePlan(trained=("reference_net", "spatial_unet", "v_kps_guider"), zeroed=("audio_attention_out", "motion_out")),
    # Clips: only the audio path and the temporal layers learn; they start as the identity (the
    # published recipe; AnimateDiff motion weights enter with proj_out zeroed).
    2: StagePlan(trained=("audio_projection", "audio_attention", "motion_modules"), zeroed=("audio_attention_out", "motion_out")),
    # Clips: everything. Nothing is zeroed - that would throw away what stage 2 learned.
    3: StagePlan(trained=PARTS, zeroed=()),
}


def reference_idle_prefixes(reference_net: nn.Module) -> tuple[str, ...]:
    """ReferenceNet parameter prefixes that no stage trains, because they cannot change a captured feature.

    The ReferenceNet runs with a zero text context, so each text cross-attention (`attn2`) adds a
    constant; and nothing after the last block's norm2 (that block's attn2/norm3/ff, its attention's
    proj_out, conv_out) feeds any captured feature.
    """
    # Blocks are registered down, up, mid; the last one to run is the last of the up blocks.
    last_block = [path for path in reference_block_paths(reference_net) if path.startswith("up_blocks.")][-1]
    last_attention = last_block.rsplit(".transformer_blocks.", 1)[0]
    return (f"{last_block}.norm3.", f"{last_block}.ff.", f"{last_attention}.proj_out.", "conv_out.")


def parameter_part(name: str, reference_idle: Iterable[str]) -> str | None:
    """The part (see module docstring) of a `VExpressNet` parameter name, or None if no stage trains it."""
    network, _, inner = name.partition(".")
    if network == "reference_net":
        idle = ".attn2." in f".{inner}" or any(inner.startswith(prefix) for prefix in reference_idle)
        return None if idle else "reference_net"
    if network == "denoising_unet":
        if MOTION_MODULES.search(inner):
            return "motion_modules"
        if AUDIO_ATTENTION.search(f".{inner}"):
            return "audio_attention"
        return "spatial_unet"
    if network in ("v_kps_guider", "audio_projection"):
        return network
    raise ValueError(f"parameter {name} belongs to no V-Express network")


def stage_plan(stage: int) -> StagePlan:
    try:
        return STAGE_PLANS[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage}; stages: {', '.join(map(str, STAGE_PLANS))}") from None


def trainable_names(net: nn.Module, stage: int) -> list[str]:
    """Names of the parameters `stage` trains."""
    plan = stage_plan(stage)
    idle = reference_idle_prefixes(net.reference_net)
    return [name for name, _ in net.named_parameters() if parameter_part(name, idle) in plan.trained]


def zeroed_names(net: nn.Module, stage: int) -> list[str]:
    """Names of the parameters set to zero when `stage` starts."""
    patterns = [ZEROED_OUTPUTS[key] for key in stage_plan(stage).zeroed]
    return [name for name, _ in net.named_parameters() if any(pattern.search(name) for pattern in patterns)]


def apply_stage(net: nn.Module, stage: int, zero_outputs: bool) -> list[str]:
    """Set requires_grad per the stage table (and zero its outputs when starting); return the trained names."""
    trained = set(trainable_names(net, stage))
    zeroed = set(zeroed_names(net, stage)) if zero_outputs else set()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name in zeroed:
                parameter.zero_()
            parameter.requires_grad_(name in trained)
    return sorted(trained)
