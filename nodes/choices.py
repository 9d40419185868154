"""The names a user picks in node combos, read from the core's registries each time a schema is
built (an entry registered later, e.g. by another pack, shows up)."""
from __future__ import annotations

import torch

from vexpress_core.dtypes import AUTO, DTYPES
from vexpress_core.detectors import DETECTORS
from vexpress_core.framing import PASTE_REGIONS
from vexpress_core.keypoints import RESAMPLE_MODES, RETARGET_MODES
from vexpress_core.orchestration import CROP_MODES
from vexpress_core.presets import PRESETS
from vexpress_core.sampling import BLEND_WEIGHTS, SCHEDULERS
from vexpress_core.weight_storage import WEIGHT_STORAGES


def dtype_names() -> list[str]:
    return [AUTO, *DTYPES.names()]


def dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def detector_names() -> list[str]:
    return list(DETECTORS.names())


def crop_names() -> list[str]:
    return list(CROP_MODES.names())


def retarget_names() -> list[str]:
    return list(RETARGET_MODES.names())


def resample_names() -> list[str]:
    return [AUTO, *RESAMPLE_MODES.names()]


def blend_names() -> list[str]:
    return list(BLEND_WEIGHTS.names())


def scheduler_names() -> list[str]:
    return list(SCHEDULERS.names())


def paste_region_names() -> list[str]:
    return [AUTO, *PASTE_REGIONS.names()]


def preset_names() -> list[str]:
    return list(PRESETS.names())


def weight_storage_names() -> list[str]:
    return list(WEIGHT_STORAGES.names())
