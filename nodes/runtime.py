"""Everything the nodes take from ComfyUI, imported only when ComfyUI is there.

Without ComfyUI (tests, scripts) the pack still imports: devices fall back to CUDA-if-available,
networks are placed by the core's `placed`, progress is a no-op, and nothing can interrupt a run.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

try:  # ComfyUI's modules exist only inside a running ComfyUI.
    import folder_paths
except ImportError:
    folder_paths = None

try:
    import comfy.model_management as model_management
except ImportError:
    model_management = None

try:
    import comfy.utils as comfy_utils
except ImportError:
    comfy_utils = None

try:
    import comfy.model_patcher as model_patcher
except ImportError:
    model_patcher = None

MODEL_FOLDER_NAME = "v-express"
MODEL_ROOT_ENV = "VEXPRESS_MODELS_ROOT"


def register_model_folder() -> None:
    """Registers `ComfyUI/models/v-express/` (extra_model_paths.yaml may add more under `v-express`)."""
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER_NAME)
    folder_paths.add_model_folder_path(MODEL_FOLDER_NAME, default, is_default=True)


def model_roots() -> list[str]:
    """The folders whose subfolders are V-Express model directories."""
    if folder_paths is not None:
        try:
            return folder_paths.get_folder_paths(MODEL_FOLDER_NAME)
        except KeyError:
            return []
    root = os.environ.get(MODEL_ROOT_ENV)
    return [root] if root else []


def input_directory() -> str | None:
    return folder_paths.get_input_directory() if folder_paths is not None else None


def annotated_filepath(name: str) -> str:
    """A file picked in a node's combo: ComfyUI's `input/` (with `[input]`-style annotations)."""
    if folder_paths is not None:
        return folder_paths.get_annotated_filepath(name)
    return name


def torch_device() -> torch.device:
    """The device ComfyUI computes on (`--cpu` gives the CPU)."""
    if model_management is not None:
        return model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def auto_dtype(device: torch.device) -> torch.dtype:
    """fp16 where ComfyUI would use it, else bf16 where supported, else fp32 (always fp32 on a CPU)."""
    if device.type == "cpu":
        return torch.float32
    if model_management is not None:
        if model_management.should_use_fp16(device):
            return torch.float16
        if model_management.should_use_bf16(device):
            return torch.bfloat16
        return torch.float32
    return torch.float16


def offload_device() -> torch.device:
    """Where ComfyUI keeps idle diffusion models (the CPU unless --highvram / --gpu-only)."""
    if model_management is not None:
        return model_management.unet_offload_device()
    return torch.device("cpu")


def empty_cache() -> None:
    if model_management is not None:
        model_management.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def preview_size() -> int:
    """ComfyUI's --preview-size (the longest side of sampler previews), 512 without ComfyUI."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return 512
    return args.preview_size


def check_interrupted() -> bool:
    """Raises ComfyUI's InterruptProcessingException when the user pressed Cancel (/interrupt)."""
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()
    return False


class Progress:
    """`comfy.utils.ProgressBar` when ComfyUI runs the node; otherwise it only counts."""

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        self.current = 0
        self._bar = comfy_utils.ProgressBar(self.total) if comfy_utils is not None else None

    def set(self, value: int, total: int | None = None, preview=None) -> None:
        """`preview`: a PIL image shown on the node (ComfyUI's ("JPEG", image, max size) preview payload)."""
        if total is not None:
            self.total = max(int(total), 1)
        self.current = min(int(value), self.total)
        if self._bar is not None:
            payload = None if preview is None else ("JPEG", preview, preview_size())
            self._bar.update_absolute(self.current, self.total, payload)


def frame_progress(total: int) -> Callable[[int, int | None], None]:
    """A `progress(done, total)` callback for per-frame work that also honours Cancel."""
    bar = Progress(total)

    def progress(done: int, new_total: int | None = None) -> None:
        bar.set(done, new_total)
        check_interrupted()

    return progress


def _stop_if_interrupted(module, inputs) -> None:
    check_interrupted()  # a forward pre-hook must return None to leave the inputs alone


@contextmanager
def interruptible(*modules: torch.nn.Module) -> Iterator[None]:
    """Cancel (/interrupt) is honoured inside these networks' forward passes: before every block of
    their layer lists (wav2vec2's conv and transformer layers, the UNets' down/up blocks)."""
    blocks = [block for module in modules for child in module.modules() if isinstance(child, torch.nn.ModuleList)
              for block in child]
    handles = [block.register_forward_pre_hook(_stop_if_interrupted) for block in blocks]
    try:
        check_interrupted()
        yield
    finally:
        for handle in handles:
            handle.remove()
    check_interrupted()
