"""The names a user picks in node combos, read from the core's registries each time a schema is built."""
from __future__ import annotations

import torch

from vexpress_core.keypoints import DETECTOR_NAMES, RESAMPLE_MODES, RETARGET_MODES
from vexpress_core.sampling import BLEND_WEIGHTS, SCHEDULERS

AUTO = "auto"
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def dtype_names() -> list[str]:
    return [AUTO, *_DTYPES]


def dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(dtype_names())}")
    return _DTYPES[name]


def detector_names() -> list[str]:
    return list(DETECTOR_NAMES)


def retarget_names() -> list[str]:
    return list(RETARGET_MODES)


def resample_names() -> list[str]:
    return [AUTO, *RESAMPLE_MODES]


def blend_names() -> list[str]:
    return sorted(BLEND_WEIGHTS)


def scheduler_names() -> list[str]:
    return sorted(SCHEDULERS)
