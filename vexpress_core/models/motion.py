"""AnimateDiff-v2 style motion module (`motion_modules.N.temporal_transformer`, published key names).

Inside the UNet video is (B*F, C, H, W); only here does it become (B*H*W, F, C) so that attention
runs across frames at each pixel.
"""
from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from .chunking import residual_in_row_chunks
from .processor import VExpressAttnProcessor


def sinusoidal_position_code(max_len: int, channels: int) -> torch.Tensor:
    """The fixed [1, max_len, channels] code: sin on even channels, cos on odd ones."""
    position = torch.arange(max_len).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, channels, 2) * (-math.log(10000.0) / channels))
    code = torch.zeros(1, max_len, channels)
    code[0, :, 0::2] = torch.sin(position * frequencies)
    code[0, :, 1::2] = torch.cos(position * frequencies)
    return code


class PositionCode(nn.Module):
    def __init__(self, channels: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_position_code(max_len, channels))


class TemporalSelfAttention(Attention):
    """diffusers `Attention` that carries its own position code (`pos_encoder.pe`)."""

    def __init__(self, channels: int, num_heads: int, max_len: int):
        super().__init__(query_dim=channels, heads=num_heads, dim_head=channels // num_heads, bias=False,
                         processor=VExpressAttnProcessor())
        self.pos_encoder = PositionCode(channels, max_len)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalSelfAttention(channels, num_heads, max_len) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(channels) for _ in range(2)])
        self.ff = FeedForward(channels, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(channels)

    def forward(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """tokens: (B*F, H*W, C); each attention sees (B*H*W, F, C).

        Norms and the feed-forward run in the per-frame layout, as published: this random-weight
        parity is sensitive to the order of floating-point operations."""
        batch_frames, pixels, channels = tokens.shape
        batch = batch_frames // num_frames
        for attention, norm in zip(self.attention_blocks, self.norms):
            normed = norm(tokens).reshape(batch, num_frames, pixels, channels).transpose(1, 2)
            normed = normed.reshape(batch * pixels, num_frames, channels)
            attended = attention(normed + attention.pos_encoder.pe[:, :num_frames].to(tokens.dtype))
            attended = attended.reshape(batch, pixels, num_frames, channels).transpose(1, 2)
            tokens = tokens + attended.reshape(batch_frames, pixels, channels)
        return residual_in_row_chunks(self._feed_forward, tokens)

    def _feed_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.ff(self.ff_norm(tokens))


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, num_heads: int, max_len: int, norm_num_groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, num_heads, max_len)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        batch_frames, channels, height, width = hidden_states.shape
        residual = hidden_states
        tokens = self.norm(hidden_states).permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, num_frames)
        tokens = self.proj_out(tokens).reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2)
        return tokens.contiguous() + residual


class MotionModule(nn.Module):
    def __init__(self, channels: int, num_heads: int = 8, max_len: int = 32, norm_num_groups: int = 32):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, num_heads, max_len, norm_num_groups)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.temporal_transformer(hidden_states, num_frames)
