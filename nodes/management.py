"""The V-Express networks under ComfyUI's model management.

Inside ComfyUI every network gets a `comfy.model_patcher.ModelPatcher`: a phase asks
`model_management.load_models_gpu` for the networks it runs and the working memory it needs
beside them (`memory_required`), so ComfyUI offloads its own models to make room, lists ours among
its loaded models, and evicts them on "unload models" or when another model needs the memory.
Networks ComfyUI leaves in host memory while reporting them loaded (`--novram` loads none of a
model whose layers are not ComfyUI's own) are moved to the GPU for the phase and back after it.
Without ComfyUI (tests, scripts) the core's `placed` moves them.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Mapping

import torch

from vexpress_core.checkpoint import VExpressModels
from vexpress_core.offload import placed

from . import runtime

UNLOAD_ALL = 1e30  # bytes: "free everything" for model_management.free_memory

logger = logging.getLogger(__name__)


class VExpressNetwork(torch.nn.Module):
    """One V-Express network as ComfyUI's ModelPatcher expects it: a module whose `device` it can set
    (diffusers models have a read-only `device`)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module


@dataclass(frozen=True, eq=False)
class ModelHandle:
    """VEXPRESS_MODELS: the loaded networks, where they run, and their ComfyUI model patchers
    (empty without ComfyUI). `low_vram`: a phase's networks leave the accelerator when it ends."""

    models: VExpressModels
    name: str
    load_device: torch.device
    offload_device: torch.device
    low_vram: bool = False
    patchers: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, models: VExpressModels, name: str, load_device: torch.device, offload_device: torch.device,
               low_vram: bool) -> "ModelHandle":
        patchers = {}
        if runtime.model_patcher is not None and runtime.model_management is not None:
            patchers = {key: runtime.model_patcher.ModelPatcher(VExpressNetwork(module), load_device, offload_device)
                        for key, module in models.networks().items()}
        return cls(models, name, load_device, offload_device, low_vram, patchers)

    @property
    def dtype(self) -> torch.dtype:
        return self.models.dtype

    @property
    def model_dir(self):
        return self.models.paths.root

    def using(self, names: tuple[str, ...], working_memory: Callable[[VExpressModels], int] | None = None
              ) -> ContextManager[VExpressModels]:
        """The named networks on `load_device` for the block; yields the models with that device.
        `working_memory(models)`: the bytes the block needs beside the weights, which ComfyUI makes room for."""
        if self.patchers:
            return self._loaded_by_comfyui(names, working_memory(self.models) if working_memory else 0)
        idle = self.offload_device if self.low_vram else self.load_device
        return placed(self.models, names, self.load_device, idle)

    def _chosen(self, names: tuple[str, ...]) -> list:
        unknown = sorted(set(names) - set(self.patchers))
        if unknown:
            raise KeyError(f"unknown V-Express networks {unknown}; known: {sorted(self.patchers)}")
        return [self.patchers[name] for name in names]

    @contextmanager
    def _loaded_by_comfyui(self, names: tuple[str, ...], working_memory: int) -> Iterator[VExpressModels]:
        chosen = self._chosen(names)
        if self.low_vram:
            self.unload([p for p in self.patchers.values() if all(p is not c for c in chosen)])
        runtime.model_management.load_models_gpu(chosen, memory_required=working_memory, force_full_load=True)
        try:
            with placed(self.models, self.left_in_host_memory(names), self.load_device, self.offload_device) as models:
                yield models
        finally:
            if self.low_vram:
                self.unload(chosen)

    def left_in_host_memory(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """Those of the named networks ComfyUI did not (fully) move to the load device."""
        left = tuple(name for name in names if self.patchers[name].loaded_size() < self.patchers[name].model_size())
        if left:
            logger.warning(f"ComfyUI kept V-Express's {', '.join(left)} in host memory (--novram?); they are moved to "
                           f"{self.load_device} while they run and back afterwards")
        return left

    def unload(self, patchers: list | None = None) -> None:
        """Evicts these networks (default: all of ours) through ComfyUI's free_memory, keeping every other model."""
        patchers = list(self.patchers.values()) if patchers is None else patchers
        mm = runtime.model_management
        keep = [loaded for loaded in mm.current_loaded_models if all(loaded.model is not p for p in patchers)]
        mm.free_memory(UNLOAD_ALL, self.load_device, keep_loaded=keep)

    def loaded_networks(self) -> list[str]:
        """Names of our networks ComfyUI currently holds as loaded models."""
        if not self.patchers:
            return []
        held = [loaded.model for loaded in runtime.model_management.current_loaded_models]
        return [name for name, patcher in self.patchers.items() if any(patcher is model for model in held)]
