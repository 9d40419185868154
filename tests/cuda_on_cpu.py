"""A CUDA device played by the CPU, so that the pack's CUDA-only paths run in CPU-only CI.

Inside `cuda_on_the_cpu(free_bytes)`:
  * tensors and modules sent to a CUDA device stay in host memory (values are computed on the CPU
    as usual); a module remembers where it was sent: `placed_on(module)`;
  * `torch.cuda.mem_get_info` reports `free_bytes` (a number, or a callable read at each call);
  * `torch.Generator(device="cuda")` is a host generator that reports cuda, so library code that
    checks a generator's device (diffusers' `randn_tensor`) treats it as a CUDA generator;
  * `Tensor.pin_memory` records the call in `FakeCuda.pinned` instead of needing a CUDA driver.
The context manager works in spawned processes too (no pytest fixture needed).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest
import torch

GPU = torch.device("cuda", 0)
HOST = torch.device("cpu")
TOTAL_BYTES = 12 * 2**30  # a 12 GB card

_tensor_to = torch._C.TensorBase.to
_module_to = torch.nn.Module.to
_Generator = torch.Generator


def _is_cuda(value) -> bool:
    return isinstance(value, (str, torch.device)) and torch.device(value).type == "cuda"


def _on_host(value):
    return HOST if _is_cuda(value) else value


def _tensor_to_host(self, *args, **kwargs):
    return _tensor_to(self, *map(_on_host, args), **{key: _on_host(value) for key, value in kwargs.items()})


def _module_to_host(self, *args, **kwargs):
    device = torch._C._nn._parse_to(*args, **kwargs)[0]
    result = _module_to(self, *args, **kwargs)
    if device is not None:
        for module in self.modules():
            module.__dict__["placed_on"] = device
    return result


def placed_on(module: torch.nn.Module) -> torch.device:
    """Where `module` was last sent (its weights' own device if it never was)."""
    return module.__dict__.get("placed_on") or next(module.parameters()).device


class _ReportedGenerator(_Generator):
    """A host generator; it reports the device it was asked for."""

    def __new__(cls, device="cpu"):
        generator = super().__new__(cls, "cpu")
        generator.reported = torch.device(device)
        return generator

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self) -> torch.device:
        return self.reported


@dataclass
class FakeCuda:
    free_bytes: int | Callable[[], int]
    total_bytes: int = TOTAL_BYTES
    pinned: list[tuple[int, ...]] = field(default_factory=list)

    def mem_get_info(self, device=None) -> tuple[int, int]:
        free = self.free_bytes() if callable(self.free_bytes) else self.free_bytes
        return int(free), self.total_bytes


@contextmanager
def cuda_on_the_cpu(free_bytes: int | Callable[[], int] = 8 * 2**30) -> Iterator[FakeCuda]:
    fake = FakeCuda(free_bytes)

    def pin_memory(tensor, *args, **kwargs):
        fake.pinned.append(tuple(tensor.shape))
        return tensor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "to", _tensor_to_host)
        patch.setattr(torch.nn.Module, "to", _module_to_host)
        patch.setattr(torch.Tensor, "pin_memory", pin_memory)
        patch.setattr(torch, "Generator", _ReportedGenerator)
        patch.setattr(torch.cuda, "mem_get_info", fake.mem_get_info)
        patch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
        patch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
        yield fake
