"""Helpers shared by the command line's commands (cli.py, framing/commands.py): the device, the
settings from the parsed options, the checks run before any work, the progress bar and reading the
reference photo."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


MAX_MOTION_SCALE = 2.0
MAX_SMOOTH = 3.0


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def checked_device(name: str | None) -> str:
    """`name` (default: cuda when available) once torch can compute on it here."""
    name = name or default_device()
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a device name torch knows (cpu, cuda, cuda:1, ...)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device torch can use; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu")
    return name


def check_weight_storage(name: str, device: str) -> None:
    """--weight-storage usable with this torch build on `device` (fp8 needs float8 support)."""
    from .weight_storage import WEIGHT_STORAGES, check_float8

    if WEIGHT_STORAGES[name].dtype is not None:
        check_float8(device)


def check_track_options(args: argparse.Namespace) -> None:
    """The keypoint-track options' ranges (generate, preview-kps)."""
    if args.face_index is not None and args.face_index < 0:
        raise ValueError(f"--face-index counts faces from the left from 0, got {args.face_index}")
    if args.kps_fps is not None and not 0 < args.kps_fps < 1000:
        raise ValueError(f"--kps-fps must be a frame rate in (0, 1000), got {args.kps_fps}")
    if args.smooth is not None and not 0 <= args.smooth <= MAX_SMOOTH:
        raise ValueError(f"--smooth must be between 0 (off) and {MAX_SMOOTH:g}, got {args.smooth}")
    if not 0 <= args.motion_scale <= MAX_MOTION_SCALE:
        raise ValueError(f"--motion-scale must be between 0 (still head) and {MAX_MOTION_SCALE:g}, got {args.motion_scale}")


def settings_from(args: argparse.Namespace):
    """The settings of the parsed options: the preset's, with the options given explicitly over them."""
    from .presets import preset_settings
    from .settings import GenerationSettings, SamplingSettings

    base = GenerationSettings(
        width=args.width, height=args.height, fps=SamplingSettings.fps if args.fps is None else args.fps,
        guidance_scale=args.guidance,
        reference_weight=args.reference_weight, audio_weight=args.audio_weight, context_frames=args.context_frames,
        context_overlap=args.context_overlap, blend=args.blend, seed=args.seed,
        window_batch=args.window_batch, deflicker=args.deflicker, latents_on_host=args.low_vram, compile=args.compile,
        vae_tiling=args.vae_tiling,
    )
    return preset_settings(args.preset, base, **explicit_preset_options(args))


def explicit_preset_options(args: argparse.Namespace) -> dict:
    """The settings a preset decides that were given on the command line."""
    given = {"steps": args.steps, "scheduler": args.scheduler, "cache_interval": args.cache_interval,
             "cache_threshold": args.cache_threshold}
    if args.guidance_interval is not None:
        given["guidance_start"], given["guidance_end"] = args.guidance_interval
    return {name: value for name, value in given.items() if value is not None}


def progress_bar(settings, num_frames: int):
    from .sampling import context_windows

    windows = len(context_windows(num_frames, settings.context_frames, settings.context_overlap))
    bar = tqdm(total=settings.steps * windows, desc="denoising", unit="window")

    def update(progress) -> None:
        bar.set_postfix_str(f"step {progress.step + 1}/{progress.num_steps}")
        bar.update(1)

    return bar, update


def read_image(path: str | Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"reference image {path} cannot be read as an image ({error})") from error
