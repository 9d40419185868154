"""Spatial transformer of the V-Express denoising UNet.

Each block is diffusers' `BasicTransformerBlock` plus a reference attention (`norm1_5`/`attn1_5`,
the published key names) placed between the self-attention and the audio cross-attention. The
reference feature and both weights are explicit arguments of `forward`, so nothing is patched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import nn

from .chunking import residual_in_row_chunks
from .processor import VExpressAttnProcessor


@dataclass
class ReferenceKV:
    """attn1_5's key and value of one block's reference feature, [B, heads, L, head_dim], computed once
    per generation. Each video's frames share them, so queries of all frames attend in one call."""

    key: torch.Tensor
    value: torch.Tensor


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, channels = tensor.shape
    return tensor.view(batch, length, heads, channels // heads).transpose(1, 2)


class VExpressTransformerBlock(BasicTransformerBlock):
    """self-attention -> reference attention (x w_ref) -> audio attention (x w_audio) -> feed-forward."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, cross_attention_dim: int):
        super().__init__(
            dim,
            num_attention_heads,
            attention_head_dim,
            cross_attention_dim=cross_attention_dim,
            activation_fn="geglu",
        )
        self.norm1_5 = nn.LayerNorm(dim)
        self.attn1_5 = Attention(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim, bias=False)
        for attention in (self.attn1, self.attn1_5, self.attn2):
            attention.set_processor(VExpressAttnProcessor())

    def reference_kv(self, reference_feature: torch.Tensor) -> ReferenceKV:
        heads = self.attn1_5.heads
        return ReferenceKV(_heads(self.attn1_5.to_k(reference_feature), heads), _heads(self.attn1_5.to_v(reference_feature), heads))

    def _cached_reference_attention(self, normed: torch.Tensor, cache: ReferenceKV) -> torch.Tensor:
        batch_frames, pixels, channels = normed.shape
        batch = cache.key.shape[0]
        query = _heads(self.attn1_5.to_q(normed).reshape(batch, -1, channels), self.attn1_5.heads)
        out = F.scaled_dot_product_attention(query, cache.key, cache.value)
        out = out.transpose(1, 2).reshape(batch_frames, pixels, channels)
        return self.attn1_5.to_out[1](self.attn1_5.to_out[0](out))

    def _reference_attention(self, normed: torch.Tensor, reference_feature: torch.Tensor | ReferenceKV) -> torch.Tensor:
        if isinstance(reference_feature, ReferenceKV):
            return self._cached_reference_attention(normed, reference_feature)
        return self.attn1_5(normed, encoder_hidden_states=reference_feature)

    def forward(
        self,
        hidden_states: torch.Tensor,
        audio_tokens: torch.Tensor,
        reference_feature: torch.Tensor | ReferenceKV,
        reference_weight: float = 1.0,
        audio_weight: float = 1.0,
        zero_context_rows: int = 0,
    ) -> torch.Tensor:
        """`zero_context_rows`: the leading rows of the batch whose reference feature and audio tokens are
        all zeros (CFG's unconditional branch). `audio_tokens` and `reference_feature` then hold only the
        other rows; see `zero_context_residual`."""
        norm_hidden = self.norm1(hidden_states)
        hidden_states = hidden_states + self.attn1(norm_hidden)
        rows = zero_context_rows
        if rows and not (_zero_context_gives_bias(self.attn1_5) and _zero_context_gives_bias(self.attn2)):
            raise ValueError("zero_context_rows needs attn1_5 and attn2 without key/value biases")
        reference_out = self._reference_attention(self.norm1_5(hidden_states[rows:]), reference_feature)
        hidden_states = zero_context_residual(hidden_states, reference_out, reference_weight, rows, self.attn1_5)
        audio_out = self.attn2(self.norm2(hidden_states[rows:]), encoder_hidden_states=audio_tokens)
        hidden_states = zero_context_residual(hidden_states, audio_out, audio_weight, rows, self.attn2)
        return residual_in_row_chunks(self._feed_forward, hidden_states)

    def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.ff(self.norm3(hidden_states))


def _zero_context_gives_bias(attention: Attention) -> bool:
    return attention.to_k.bias is None and attention.to_v.bias is None and attention.residual_connection is False \
        and attention.rescale_output_factor == 1.0


def zero_context_residual(hidden_states: torch.Tensor, out: torch.Tensor, weight: float, zero_rows: int,
                          attention: Attention) -> torch.Tensor:
    """`hidden + weight * attention(hidden, context)` where `out` is the attention's output for the rows
    after the first `zero_rows`, whose context is all zeros. For those rows keys and values are zero
    (no key/value biases), so the attention's output is exactly its output projection's bias: that is
    what they get, bit for bit, without running the attention."""
    if not zero_rows:
        return hidden_states + weight * out
    bias = attention.to_out[0].bias
    zero_out = weight * (bias if bias is not None else hidden_states.new_zeros(hidden_states.shape[-1]))
    result = torch.empty_like(hidden_states)
    torch.add(hidden_states[:zero_rows], zero_out, out=result[:zero_rows])
    torch.add(hidden_states[zero_rows:], weight * out, out=result[zero_rows:])
    return result


class SpatialTransformer(nn.Module):
    """GroupNorm -> 1x1 proj_in -> V-Express blocks -> 1x1 proj_out, residual; on (B*F, C, H, W)."""

    def __init__(self, channels: int, num_heads: int, cross_attention_dim: int, norm_num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [VExpressTransformerBlock(channels, num_heads, channels // num_heads, cross_attention_dim)]
        )
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        audio_tokens: torch.Tensor,
        reference_features: list[torch.Tensor],
        reference_weight: float,
        audio_weight: float,
        zero_context_rows: int = 0,
    ) -> torch.Tensor:
        batch, channels, height, width = hidden_states.shape
        residual = hidden_states
        hidden_states = self.proj_in(self.norm(hidden_states))
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        for block, reference_feature in zip(self.transformer_blocks, reference_features):
            hidden_states = block(hidden_states, audio_tokens, reference_feature, reference_weight, audio_weight,
                                  zero_context_rows)
        hidden_states = hidden_states.reshape(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(hidden_states) + residual
