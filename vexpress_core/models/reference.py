"""ReferenceNet: diffusers' SD1.5 `UNet2DConditionModel`, read through forward hooks.

The reference features are, for every spatial transformer block, the output of its `norm2`
(the hidden state right after the self-attention residual, normalised). They are keyed by the
block's module path, which the denoising UNet shares, so writer and reader pair by path.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock

# The published ReferenceNet file has no `conv_norm_out`; nothing after the last block is used.
REFERENCE_NET_ABSENT_KEYS = ("conv_norm_out.weight", "conv_norm_out.bias")


def build_reference_net(unet_config: Mapping) -> UNet2DConditionModel:
    model = UNet2DConditionModel.from_config(dict(unet_config))
    model.conv_norm_out = None
    return model


def reference_block_paths(reference_net: torch.nn.Module) -> list[str]:
    return [name for name, module in reference_net.named_modules() if isinstance(module, BasicTransformerBlock)]


@contextmanager
def capturing_norm2(reference_net: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Collects `{block path: norm2 output}` while active; hooks are removed on exit."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for path in reference_block_paths(reference_net):
        norm2 = reference_net.get_submodule(path).norm2

        def store(_module, _inputs, output, path=path):
            captured[path] = output

        handles.append(norm2.register_forward_hook(store))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def reference_features(reference_net: UNet2DConditionModel, reference_latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the ReferenceNet once (timestep 0, zero text context) and return its per-block features [B, h*w, C]."""
    context = torch.zeros(
        reference_latents.shape[0], 1, reference_net.config.cross_attention_dim,
        dtype=reference_latents.dtype, device=reference_latents.device,
    )
    with capturing_norm2(reference_net) as captured:
        reference_net(reference_latents, 0, encoder_hidden_states=context, return_dict=False)
    return dict(captured)
