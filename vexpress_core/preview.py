"""Live previews while sampling: the current window's frames, decoded cheaply from latents.

No VAE: a linear map from the four SD1.5 latent channels to RGB (the factors ComfyUI's SD1.5
latent format uses for its Latent2RGB previews), one preview pixel per latent pixel, the window's
frames tiled into one picture. Rate-limited, so a fast sampler does not spend its time on pictures.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .sampling import Progress

# Rows: latent channels 0-3; columns: R, G, B. Applied to scaled latents (x 0.18215), giving about -1..1.
SD15_LATENT_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
MAX_PREVIEW_SIDE = 512
PREVIEWS_PER_SECOND = 2.0


def latents_to_rgb(latents: torch.Tensor) -> np.ndarray:
    """Scaled SD1.5 latents [4, F, h, w] -> uint8 frames [F, h, w, 3]."""
    if latents.ndim != 4 or latents.shape[0] != len(SD15_LATENT_RGB_FACTORS):
        raise ValueError(f"preview latents must be [4, frames, h, w], got {tuple(latents.shape)}")
    factors = torch.tensor(SD15_LATENT_RGB_FACTORS, dtype=torch.float32)
    rgb = torch.einsum("cfhw,cr->fhwr", latents.detach().float().cpu(), factors)
    return ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()


def contact_sheet(frames: np.ndarray, max_side: int = MAX_PREVIEW_SIDE) -> Image.Image:
    """Frames [F, h, w, 3] tiled row by row into a near-square RGB picture no larger than max_side."""
    count, height, width = frames.shape[:3]
    columns = max(1, math.ceil(math.sqrt(count * height / width)))
    rows = math.ceil(count / columns)
    sheet = np.zeros((rows * height, columns * width, 3), np.uint8)
    for index, frame in enumerate(frames):
        row, column = divmod(index, columns)
        sheet[row * height:(row + 1) * height, column * width:(column + 1) * width] = frame
    picture = Image.fromarray(sheet)
    scale = max_side / max(picture.size)
    if scale < 1:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.BILINEAR)
    return picture


def window_preview(progress: Progress, max_side: int = MAX_PREVIEW_SIDE) -> Image.Image | None:
    """The picture of the window `progress` reports, or None when it carries no latents."""
    if progress.denoised is None:
        return None
    return contact_sheet(latents_to_rgb(progress.denoised()), max_side)


def with_previews(show: Callable[[Progress, Image.Image | None], None], per_second: float = PREVIEWS_PER_SECOND,
                  max_side: int = MAX_PREVIEW_SIDE, clock: Callable[[], float] = time.monotonic) -> Callable[[Progress], None]:
    """A sampler callback calling `show(progress, picture)` for every Progress: with the window's picture at
    most `per_second` times a second (and always for the last window of the last step), else with None."""
    interval = 1.0 / per_second if per_second > 0 else math.inf
    last = [-math.inf]

    def update(progress: Progress) -> None:
        now = clock()
        final = progress.step + 1 == progress.num_steps and progress.window == progress.num_windows
        picture = window_preview(progress, max_side) if now - last[0] >= interval or final else None
        if picture is not None:
            last[0] = now
        show(progress, picture)

    return update
