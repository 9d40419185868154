"""Model folders for the loader's dropdown, fetched from the Hugging Face Hub when a known one is missing.

The dropdown lists the folders present under every `models/v-express` root plus the known models
(`vexpress_core.download.KNOWN_MODELS`) even before they exist; picking an absent known model
downloads exactly the files V-Express needs into the first root on first run, with ComfyUI's progress
bar counting bytes and Cancel stopping the transfer (it resumes on the next run).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from vexpress_core.checkpoint import CheckpointError
from vexpress_core.demo import TOY_MODEL_DIR
from vexpress_core.download import KNOWN_MODELS, ensure_model

from . import runtime

log = logging.getLogger(__name__)
PUBLISHED_LAYOUT = "model_ckpts"
STORAGE_CHOICES = ("as published (fp32 .bin, 9.0 GB)", "fp16 safetensors (4.5 GB)")
LOG_SECONDS = 5.0
# The bundled toy model: every workflow can be tried without the 9.7 GB download (at 64x64).
TOY_CHOICE = "V-Express toy (bundled, 64x64)"


def model_folders() -> list[str]:
    """Subfolders of every registered `models/v-express` folder (each a copy of model_ckpts)."""
    names = set()
    for root in runtime.model_roots():
        if os.path.isdir(root):
            names.update(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    return sorted(names)


def model_choices() -> list[str]:
    """What the loader offers: the folders present, the known models not downloaded yet, the bundled toy."""
    present = model_folders()
    return present + [name for name in KNOWN_MODELS if name not in present] + [TOY_CHOICE]


def existing_folder(name: str) -> Path | None:
    """The model directory of a present folder (or of the bundled toy); a full clone of the Hugging
    Face repo (`<name>/model_ckpts/...`) works as well as a copy of `model_ckpts` itself."""
    if name == TOY_CHOICE:
        return TOY_MODEL_DIR
    for root in runtime.model_roots():
        candidate = Path(root) / name
        if candidate.is_dir():
            nested = candidate / PUBLISHED_LAYOUT
            return nested if (nested / "v-express").is_dir() else candidate
    return None


def model_folder_path(name: str) -> Path:
    """The model directory of a present folder, or an error saying where it was expected."""
    found = existing_folder(name)
    if found is None:
        roots = ", ".join(runtime.model_roots()) or "ComfyUI/models/v-express"
        raise CheckpointError(f"V-Express model folder {name!r} not found in {roots}; copy tk93/V-Express's model_ckpts there as {name}/")
    return found


def will_download(name: str) -> bool:
    return existing_folder(name) is None and name in KNOWN_MODELS


def model_folder(name: str, fp16: bool = False) -> Path:
    """The model directory for a dropdown entry, downloading a known model on first use."""
    roots = runtime.model_roots()
    if not will_download(name) or not roots:
        return model_folder_path(name)
    bar = runtime.Progress(1)
    last_log = [0.0]

    def progress(done: int, total: int) -> None:
        bar.set(done, total)
        if time.monotonic() - last_log[0] >= LOG_SECONDS:
            last_log[0] = time.monotonic()
            log.info("V-Express: fetching %s: %.2f / %.2f GB", name, done / 1e9, total / 1e9)

    def cancelled() -> bool:
        runtime.check_interrupted()  # raises ComfyUI's interrupt exception: the download stops with it
        return False

    return ensure_model(roots[0], name, fp16=fp16, progress=progress, cancelled=cancelled)
