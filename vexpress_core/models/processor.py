"""The attention processor of the V-Express attentions (diffusers' processor API).

Every attention of this model is plain: token sequences in, no mask, no spatial or group norm,
no q/k norms, no residual connection and an output scale of 1. For those, diffusers'
`AttnProcessor2_0` still divides the whole output by the scale, and self-attention reads its
input three times for three projections. `VExpressAttnProcessor` runs the same kernels on the same
values without those passes: one projection with the q/k/v weights stacked (each output column is
the same dot product) and no division by 1, so the outputs are bit-identical. Anything else
(a mask, 4-D input, another attention configuration) goes to diffusers' own processor.

CUDA's attention kernels index the batch with one grid dimension, at most 65,535 blocks; a larger
batch fails ("invalid configuration argument") and can leave a long-lived process's CUDA context
unusable. The motion modules attend over frames at every pixel of every video, a batch of
2 x window_batch x (H/8) x (W/8), so the processor splits the batch into chunks under that limit:
batch items are independent, so the values are those of one call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

MAX_ATTENTION_BATCH = 65535


def is_plain(attn: Attention) -> bool:
    return (attn.spatial_norm is None and attn.group_norm is None and attn.norm_q is None and attn.norm_k is None
            and not attn.norm_cross and not attn.residual_connection and attn.rescale_output_factor == 1.0)


def _heads(tensor: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    return tensor.view(batch, -1, heads, tensor.shape[-1] // heads).transpose(1, 2)


def _self_projections(attn: Attention, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    projections = (attn.to_q, attn.to_k, attn.to_v)
    if any(layer.bias is not None for layer in projections):
        return tuple(layer(hidden_states) for layer in projections)
    stacked = torch.cat([layer.weight for layer in projections])
    return F.linear(hidden_states, stacked).split([layer.out_features for layer in projections], dim=-1)


def attention_in_batch_chunks(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`F.scaled_dot_product_attention` of [B, heads, L, d] inputs, at most MAX_ATTENTION_BATCH batch items per call."""
    batch = query.shape[0]
    if batch <= MAX_ATTENTION_BATCH:
        return F.scaled_dot_product_attention(query, key, value)
    # Laid out [B, L, heads, d] like the kernels' own outputs, so the caller's reshape stays a view.
    out = query.new_empty(batch, query.shape[2], query.shape[1], value.shape[-1]).transpose(1, 2)
    for start in range(0, batch, MAX_ATTENTION_BATCH):
        rows = slice(start, start + MAX_ATTENTION_BATCH)
        out[rows] = F.scaled_dot_product_attention(query[rows], key[rows], value[rows])
    return out


class VExpressAttnProcessor:
    """`AttnProcessor2_0`'s values for plain attentions, with the no-op passes left out."""

    def __init__(self) -> None:
        self.fallback = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if attention_mask is not None or hidden_states.ndim != 3 or args or kwargs or not is_plain(attn):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        batch = hidden_states.shape[0]
        if encoder_hidden_states is None:
            query, key, value = _self_projections(attn, hidden_states)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        out = attention_in_batch_chunks(
            _heads(query, batch, attn.heads), _heads(key, batch, attn.heads), _heads(value, batch, attn.heads)
        )
        out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[3])
        return attn.to_out[1](attn.to_out[0](out))
