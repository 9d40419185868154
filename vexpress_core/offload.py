"""Keeping idle networks off the accelerator: each phase moves only the networks it runs."""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from .checkpoint import VExpressModels


def network_bytes(modules) -> int:
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


@contextmanager
def placed(models: VExpressModels, names: tuple[str, ...], run_device: torch.device, idle_device: torch.device,
           make_room: Callable[[int, torch.device], None] | None = None) -> Iterator[VExpressModels]:
    """Moves the named networks to `run_device` for the block and back to `idle_device` afterwards,
    also on error or cancel. Yields the models with `device` set to `run_device`."""
    networks = models.networks()
    unknown = sorted(set(names) - set(networks))
    if unknown:
        raise KeyError(f"unknown V-Express networks {unknown}; known: {sorted(networks)}")
    chosen = [networks[name] for name in names]
    moving = run_device != idle_device and bool(chosen)
    if moving and make_room is not None:
        make_room(int(network_bytes(chosen) * 1.3), run_device)
    try:
        for module in chosen:
            module.to(run_device)
        yield dataclasses.replace(models, device=run_device)
    finally:
        if moving:
            for module in chosen:
                module.to(idle_device)
            if run_device.type == "cuda":
                torch.cuda.empty_cache()


REFERENCE_NETWORKS = ("vae", "reference_net")
SPEECH_NETWORKS = ("audio_encoder",)
DENOISING_NETWORKS = ("denoising_unet", "v_kps_guider", "audio_projection")
DECODING_NETWORKS = ("vae",)
