"""Row-chunked evaluation of token-wise layers at inference.

The feed-forward of a transformer block widens every token 8x (GEGLU: C -> 2 x 4C) before
narrowing it again. Over a whole batch of frames that intermediate is tens of MB, freshly
allocated and page-faulted on every call; a few thousand tokens at a time it stays in cache, and
so do the norm before it and the residual sum after it. Each token's output is computed by the
same kernels either way, so the values are identical.
"""
from __future__ import annotations

from typing import Callable

import torch

FEED_FORWARD_ROWS = 4096


def residual_in_row_chunks(layer: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor,
                           rows: int = FEED_FORWARD_ROWS) -> torch.Tensor:
    """`tokens + layer(tokens)` for a layer that maps each token (last dimension) on its own and
    keeps its width, `rows` tokens at a time when gradients are off (training keeps one call)."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    if torch.is_grad_enabled() or flat.shape[0] <= rows:
        return tokens + layer(tokens)
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], rows):
        chunk = flat[start:start + rows]
        torch.add(chunk, layer(chunk), out=out[start:start + rows])
    return out.view(tokens.shape)
