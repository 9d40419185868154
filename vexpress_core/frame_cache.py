"""Per-frame conditioning computed once per generation, within a memory budget.

Context windows overlap and every step visits every window again, so per-frame conditioning
(V-Kps features, audio tokens) asked for window by window would be computed
steps x windows x window-length times. `FrameCache` computes it in fixed chunks of frames, keeps
chunks in host memory while they fit in the budget and recomputes only the chunks beyond it when
they are asked for. Chunk boundaries never depend on the windows or the budget, so every frame
gets bit-identical values whatever the budget.
"""
from __future__ import annotations

from typing import Callable

import torch

DEFAULT_BUDGET_MB = 1024
DEFAULT_CHUNK = 16


class FrameCache:
    """`cache(start, stop)` -> `compute(start, stop)` for any frame range, computed chunk by chunk.

    compute(start, stop): the conditioning of frames [start, stop) with frames along `frame_axis`.
    budget_bytes: how much of it may be kept; chunks past it are recomputed on every request.
    store: the device kept chunks live on (the host, so a GPU holds only the window in use); results
    are returned on the device `compute` gives them on.
    """

    def __init__(self, compute: Callable[[int, int], torch.Tensor], num_frames: int, frame_axis: int,
                 budget_bytes: int = DEFAULT_BUDGET_MB * 2**20, chunk: int = DEFAULT_CHUNK,
                 store: torch.device | str = "cpu"):
        if num_frames < 1 or chunk < 1:
            raise ValueError(f"num_frames and chunk must be at least 1, got {num_frames} and {chunk}")
        self.compute = compute
        self.num_frames = num_frames
        self.frame_axis = frame_axis
        self.budget_bytes = max(0, int(budget_bytes))
        self.chunk = chunk
        self.store = torch.device(store)
        self.kept: dict[int, torch.Tensor] = {}
        self.kept_bytes = 0
        self.computed_frames = 0  # frames run through `compute`, for tests and benchmarks

    def _chunk(self, index: int) -> torch.Tensor:
        kept = self.kept.get(index)
        if kept is not None:
            return kept
        start = index * self.chunk
        stop = min(start + self.chunk, self.num_frames)
        values = self.compute(start, stop)
        self.computed_frames += stop - start
        size = values.numel() * values.element_size()
        if self.kept_bytes + size <= self.budget_bytes:
            stored = values.to(self.store)
            self.kept[index] = stored
            self.kept_bytes += size
            return stored
        return values

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        if not 0 <= start < stop <= self.num_frames:
            raise ValueError(f"frame range [{start}, {stop}) is outside the video's {self.num_frames} frames")
        pieces = []
        for index in range(start // self.chunk, (stop - 1) // self.chunk + 1):
            first = index * self.chunk
            values = self._chunk(index)
            low, high = max(start, first) - first, min(stop, first + self.chunk) - first
            pieces.append(values.narrow(self.frame_axis, low, high - low))
        result = pieces[0] if len(pieces) == 1 else torch.cat([p.to(pieces[0].device) for p in pieces], self.frame_axis)
        return result

    def fill(self) -> None:
        """Compute every chunk that fits in the budget now (conditioning first, then sampling)."""
        for index in range((self.num_frames - 1) // self.chunk + 1):
            if self.kept_bytes >= self.budget_bytes:
                return
            self._chunk(index)
