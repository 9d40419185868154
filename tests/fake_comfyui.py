"""Fakes of ComfyUI's modules (folder_paths, comfy.model_management, comfy.model_patcher, comfy.utils)
and the `comfy` fixture that installs them in the pack's runtime, for tests that run nodes without ComfyUI.

The model management keeps ComfyUI's bookkeeping: patchers are loaded (`model.device` set to the load
device, nothing moved) and evicted. With `vram_bytes` set it also keeps ComfyUI's memory accounting
(v0.3.48 - v0.3.64): load_models_gpu frees room for the weights plus `memory_required` and
free_memory evicts, oldest first, only until that much is free; with `novram` it loads nothing, as
`--novram` leaves modules without ComfyUI's cast layers in host memory while the patcher reports
the load device.
"""
from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from comfyui_like import NODES

runtime = NODES.runtime



class FakeFolderPaths(types.ModuleType):
    def __init__(self, base: Path):
        super().__init__("folder_paths")
        self.models_dir = str(base / "models")
        self.folder_names_and_paths = {}
        self.input_dir = base / "input"

    def add_model_folder_path(self, name, path, is_default=False):
        paths = self.folder_names_and_paths.setdefault(name, ([], set()))[0]
        if path not in paths:
            paths.insert(0, path) if is_default else paths.append(path)

    def get_folder_paths(self, name):
        return list(self.folder_names_and_paths[name][0])

    def get_input_directory(self):
        return str(self.input_dir)

    def get_annotated_filepath(self, name):
        return str(self.input_dir / name)


class InterruptProcessingException(Exception):
    pass


class FakeModelPatcher:
    """comfy.model_patcher.ModelPatcher's part the pack relies on: model (its `device` set to where it
    is), load/offload device, size. The fakes record placement without moving tensors."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.model.device = offload_device
        self.size = size or sum(t.numel() * t.element_size() for t in model.state_dict().values())
        self.loaded_bytes = 0

    def model_size(self):
        return self.size

    def loaded_size(self):
        return self.loaded_bytes


class FakeLoadedModel:
    def __init__(self, patcher):
        self.model, self.device = patcher, patcher.load_device

    def model_unload(self):
        self.model.model.device = self.model.offload_device
        self.model.loaded_bytes = 0


class FakeModelManagement(types.ModuleType):
    """comfy.model_management: load_models_gpu puts patchers first in current_loaded_models (full load
    moves the whole module); free_memory evicts, newest last, everything on the device not kept (or,
    with `vram_bytes`, only until `memory_required` is free). `memory_requests` records each
    load_models_gpu call's (memory_required, minimum_memory_required)."""

    InterruptProcessingException = InterruptProcessingException

    def __init__(self, vram_bytes: int | None = None, novram: bool = False):
        super().__init__("comfy.model_management")
        self.interrupt = False
        self.checks = 0
        self.current_loaded_models = []
        self.load_calls = []
        self.memory_requests = []
        self.vram_bytes = vram_bytes
        self.novram = novram

    def get_free_memory(self, device=None):
        return self.vram_bytes - sum(loaded.model.loaded_size() for loaded in self.current_loaded_models)

    def get_torch_device(self):
        return torch.device("cpu")

    def unet_offload_device(self):
        return torch.device("cpu")

    def should_use_fp16(self, device=None):
        return False

    def should_use_bf16(self, device=None):
        return False

    def load_models_gpu(self, models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        self.load_calls.append(([m for m in models], force_full_load))
        self.memory_requests.append((memory_required, minimum_memory_required))
        new = [p for p in models if not any(loaded.model is p for loaded in self.current_loaded_models)]
        if self.vram_bytes is not None and new:
            keep = [loaded for loaded in self.current_loaded_models if any(loaded.model is p for p in models)]
            self.free_memory(sum(p.model_size() for p in new) + memory_required, new[0].load_device, keep)
        for patcher in new:
            patcher.model.device = patcher.load_device  # ModelPatcher.load records where the module went
            patcher.loaded_bytes = 0 if self.novram else patcher.model_size()
            self.current_loaded_models.insert(0, FakeLoadedModel(patcher))

    def free_memory(self, memory_required, device, keep_loaded=[]):
        for loaded in [m for m in reversed(self.current_loaded_models) if m.device == device and m not in keep_loaded]:
            if self.vram_bytes is not None and self.get_free_memory(device) >= memory_required:
                return
            loaded.model_unload()
            self.current_loaded_models.remove(loaded)

    def unload_all_models(self):
        self.free_memory(1e30, self.get_torch_device())

    def soft_empty_cache(self, force=False):
        pass

    def throw_exception_if_processing_interrupted(self):
        self.checks += 1
        if self.interrupt:
            self.interrupt = False
            raise InterruptProcessingException()


class FakeUtils(types.ModuleType):
    """comfy.utils whose ProgressBar records its state after every update (`updates`: current, total,
    clamped as ComfyUI's is) and every update_absolute call as made (`calls`: value, total, preview)."""

    def __init__(self):
        super().__init__("comfy.utils")
        self.updates, self.calls = [], []
        outer = self

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.current = total, 0

            def update_absolute(self, value, total=None, preview=None):
                outer.calls.append((value, total, preview))
                if total is not None:
                    self.total = total
                self.current = min(value, self.total)
                outer.updates.append((self.current, self.total))

        self.ProgressBar = ProgressBar


@pytest.fixture()
def comfy(monkeypatch, tmp_path):
    """ComfyUI's folder_paths, comfy.model_management, comfy.model_patcher and comfy.utils, faked in the runtime."""
    fake = types.SimpleNamespace(folder_paths=FakeFolderPaths(tmp_path), mm=FakeModelManagement(), utils=FakeUtils(),
                                 patcher=types.SimpleNamespace(ModelPatcher=FakeModelPatcher))
    monkeypatch.setattr(runtime, "folder_paths", fake.folder_paths)
    monkeypatch.setattr(runtime, "model_management", fake.mm)
    monkeypatch.setattr(runtime, "comfy_utils", fake.utils)
    monkeypatch.setattr(runtime, "model_patcher", fake.patcher)
    return fake
