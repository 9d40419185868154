"""The weight precisions a user picks by name (`fp32`, `fp16`, `bf16`), and `auto`."""
from __future__ import annotations

import torch

from .registry import Registry

DTYPES: Registry[torch.dtype] = Registry("dtype")
DTYPES.register("fp32", torch.float32)
DTYPES.register("fp16", torch.float16)
DTYPES.register("bf16", torch.bfloat16)

AUTO = "auto"


def auto_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA devices, fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def resolved_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The dtype for a name of DTYPES or 'auto' (see `auto_dtype`)."""
    return auto_dtype(device) if name == AUTO else DTYPES[name]
