"""Helpers shared by the command line's commands (cli.py, framing/commands.py): the device, the
settings from the parsed options, the progress bar and reading the reference photo."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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
