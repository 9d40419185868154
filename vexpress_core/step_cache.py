"""Reuse across sampling steps (DeepCache-style): the UNet's deep features, kept per window batch.

On a full pass the UNet hands its deep features (the input of its last up block) and its shallow
features (the output of its first down block) to the cache. On the following steps it runs only
that first down block, asks the cache whether the kept deep features may stand in for everything
below it, and if so runs only the last up block on them. Deep features change slowly from step to
step while the shallow ones carry the detail, so most of the work is skipped at a small cost.

A kept entry is refreshed (a full pass) when it is `interval` steps old, or earlier when the shallow
features moved by more than `threshold` (their mean absolute change relative to their mean absolute
value at the last full pass, the cheap change measure of TeaCache). The cache reaches the UNet as
an explicit argument (`VExpressUNet.forward(deep_cache=...)`); nothing is patched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import torch


@dataclass(frozen=True)
class CachePolicy:
    """interval: at most this many steps between full UNet passes (1 = every step: no cache);
    threshold: also refresh when the shallow features changed by more than this (0 = by interval only)."""

    interval: int = 1
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or isinstance(self.interval, bool) or self.interval < 1:
            raise ValueError(f"cache_interval must be a whole number of steps >= 1 (1 = no cache), got {self.interval!r}")
        if self.threshold < 0:
            raise ValueError(f"cache_threshold must be 0 (refresh by interval only) or more, got {self.threshold}")

    @property
    def enabled(self) -> bool:
        return self.interval > 1


def relative_change(now: torch.Tensor, before: torch.Tensor) -> float:
    return ((now - before).abs().mean() / before.abs().mean().clamp_min(1e-12)).item()


@dataclass
class _Entry:
    step: int
    deep: torch.Tensor
    shallow: torch.Tensor | None  # kept only when a threshold needs it


class DeepFeatureCache:
    """One entry per window batch (its key): the deep features of its last full pass. Counts
    `hits` (passes that reused them) and `refreshes` (full passes that stored them)."""

    def __init__(self, policy: CachePolicy):
        self.policy = policy
        self._entries: dict[Hashable, _Entry] = {}
        self.hits = 0
        self.refreshes = 0

    def slot(self, key: Hashable, step: int) -> "CacheSlot":
        """What the UNet gets for window batch `key` at sampling step `step`."""
        return CacheSlot(self, key, step)


@dataclass
class CacheSlot:
    """One UNet call's view of the cache: `reusable(shallow)` gives the kept deep features or None
    (run the full UNet), `store(shallow, deep)` keeps a full pass's features."""

    cache: DeepFeatureCache
    key: Hashable
    step: int

    def reusable(self, shallow: torch.Tensor) -> torch.Tensor | None:
        entry = self.cache._entries.get(self.key)
        policy = self.cache.policy
        if entry is None or self.step - entry.step >= policy.interval:
            return None
        # Another batch layout (guidance switched off for this step) needs its own deep features.
        if entry.deep.shape[0] != shallow.shape[0]:
            return None
        if policy.threshold > 0 and relative_change(shallow, entry.shallow) > policy.threshold:
            return None
        self.cache.hits += 1
        return entry.deep

    def store(self, shallow: torch.Tensor, deep: torch.Tensor) -> None:
        kept_shallow = shallow if self.cache.policy.threshold > 0 else None
        self.cache._entries[self.key] = _Entry(self.step, deep, kept_shallow)
        self.cache.refreshes += 1
