"""The pack's ComfyUI types: names, the small dataclasses that travel on the wires, conversions.
VEXPRESS_REFERENCE carries the core's orchestration.PreparedReference; the options types carry the
core's WindowSettings / MemorySettings / SpeedSettings.

Custom type names carry the `VEXPRESS_` prefix. Values are never changed after they leave a node:
a node that needs a different value builds a new one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from vexpress_core.pipeline import Speech

PREFIX = "VExpress"

MODELS = "VEXPRESS_MODELS"
REFERENCE = "VEXPRESS_REFERENCE"
AUDIO = "VEXPRESS_AUDIO"
KPS = "VEXPRESS_KPS"
CROP_PLAN = "VEXPRESS_CROP_PLAN"
WINDOW_OPTIONS = "VEXPRESS_WINDOW_OPTIONS"
MEMORY_OPTIONS = "VEXPRESS_MEMORY_OPTIONS"
SPEED_OPTIONS = "VEXPRESS_SPEED_OPTIONS"

IMAGE = "IMAGE"
COMFY_AUDIO = "AUDIO"


@dataclass(frozen=True, eq=False)
class SpeechInput:
    """VEXPRESS_AUDIO: wav2vec2-encoded speech (its frame count and fps) plus the AUDIO it came from,
    so the video can carry the original sound rather than the 16 kHz mono copy."""

    speech: Speech
    audio: Mapping

    @property
    def num_frames(self) -> int:
        return int(self.speech.num_frames)

    @property
    def fps(self) -> float:
        return float(self.speech.fps)


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """One ComfyUI IMAGE frame (float [H,W,C] in 0..1) as RGB uint8 [H,W,3] (alpha dropped)."""
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an IMAGE frame [H,W,3], got shape {list(image.shape)}")
    pixels = image.detach().float().cpu().clamp(0, 1)
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(-1, -1, 3)
    return (pixels[..., :3] * 255).round().to(torch.uint8).numpy()


def uint8_to_image(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F,H,W,3] -> ComfyUI IMAGE float32 [F,H,W,3] in 0..1 on the CPU."""
    return torch.from_numpy(np.asarray(frames).astype(np.float32)).div_(255.0)


def cut_audio(audio: Mapping, seconds: float) -> dict:
    """A new AUDIO holding the first batch item of `audio` cut to `seconds` (the input is untouched)."""
    waveform, rate = audio["waveform"], int(audio["sample_rate"])
    samples = max(1, int(round(seconds * rate)))
    return {"waveform": waveform[:1, :, :samples].clone(), "sample_rate": rate}
