"""Audio projection: a perceiver resampler from a window of wav2vec2 vectors to a few audio tokens."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PerceiverAttention(nn.Module):
    """Latents attend to (inputs, latents); no biases."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tensor.shape
        return tensor.view(batch, length, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, inputs: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        inputs = self.norm1(inputs)
        latents = self.norm2(latents)
        query = self._split_heads(self.to_q(latents))
        key, value = self.to_kv(torch.cat([inputs, latents], dim=-2)).chunk(2, dim=-1)
        key, value = self._split_heads(key), self._split_heads(value)
        # Scaling q and k separately keeps fp16 products in range; softmax in fp32 (or wider) for the same reason.
        scale = self.dim_head ** -0.25
        weights = (query * scale) @ (key * scale).transpose(-2, -1)
        weights = torch.softmax(weights.to(torch.promote_types(weights.dtype, torch.float32)), dim=-1).to(weights.dtype)
        out = (weights @ value).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class AudioProjection(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        dim: int = 768,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 12,
        num_queries: int = 5,
        embedding_dim: int = 768,
        output_dim: int = 768,
        ff_mult: int = 4,
        max_seq_len: int = 10,
    ):
        super().__init__()
        self.pos_emb = nn.Embedding(max_seq_len, embedding_dim)
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [N, max_seq_len, embedding_dim] -> tokens [N, num_queries, output_dim]."""
        positions = torch.arange(windows.shape[1], device=windows.device)
        inputs = self.proj_in(windows + self.pos_emb(positions))
        latents = self.latents.repeat(windows.shape[0], 1, 1)
        for attention, ff in self.layers:
            latents = attention(inputs, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
