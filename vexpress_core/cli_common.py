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
    from .settings import GenerationSettings, SamplingSettings

    return GenerationSettings(
        width=args.width, height=args.height, fps=SamplingSettings.fps if args.fps is None else args.fps, steps=args.steps,
        guidance_scale=args.guidance,
        reference_weight=args.reference_weight, audio_weight=args.audio_weight, context_frames=args.context_frames,
        context_overlap=args.context_overlap, blend=args.blend, scheduler=args.scheduler, seed=args.seed,
        window_batch=args.window_batch, deflicker=args.deflicker, latents_on_host=args.low_vram, compile=args.compile,
        vae_tiling=args.vae_tiling,
    )


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
