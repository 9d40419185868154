"""Options nodes: the sampler's window settings and memory/speed settings, each optional on the sampler
(unconnected = the published defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from vexpress_core.pipeline import GenerationSettings
from vexpress_core.sampling import MAX_CONTEXT_FRAMES

from . import choices
from .schema import Boolean, Combo, Int, Node, Output
from .types import MEMORY_OPTIONS, WINDOW_OPTIONS

_DEFAULTS = GenerationSettings()


@dataclass(frozen=True)
class WindowOptions:
    """VEXPRESS_WINDOW_OPTIONS: how the frames are split into overlapping windows and merged."""

    context_frames: int = _DEFAULTS.context_frames
    context_overlap: int = _DEFAULTS.context_overlap
    blend: str = _DEFAULTS.blend


@dataclass(frozen=True)
class MemoryOptions:
    """VEXPRESS_MEMORY_OPTIONS: memory/speed trade-offs that do not change the result."""

    window_batch: int = _DEFAULTS.window_batch
    decode_chunk: int = _DEFAULTS.decode_chunk
    vae_tiling: bool = _DEFAULTS.vae_tiling
    compile: bool = _DEFAULTS.compile


class VExpressWindowOptions(Node):
    DISPLAY_NAME = "V-Express Window Options"
    DESCRIPTION = (
        "Window settings for the Sampler: the video is denoised in overlapping windows of frames (the motion "
        "modules see at most 32 frames at once) and the overlaps are merged. Unconnected, the Sampler uses "
        "24 frames, overlap 4, mean (the published settings)."
    )
    INPUTS = (
        Int("context_frames", WindowOptions.context_frames, 1, MAX_CONTEXT_FRAMES, f"Frames per window (at most {MAX_CONTEXT_FRAMES}, the motion modules' limit). Recommended 16-24; fewer saves memory."),
        Int("context_overlap", WindowOptions.context_overlap, 0, MAX_CONTEXT_FRAMES - 1, "Frames shared by neighbouring windows; must be below context_frames. Recommended 4-8."),
        Combo("blend", choices.blend_names, "How overlapping windows are merged: mean (published) or ramp (smoother seams).", default=WindowOptions.blend),
    )
    OUTPUTS = (Output(WINDOW_OPTIONS, "window_options", "Connect to the Sampler's window_options."),)

    @classmethod
    def execute(cls, context_frames, context_overlap, blend):
        if context_overlap >= context_frames:
            raise ValueError(f"Window Options: context_overlap ({context_overlap}) must be below context_frames ({context_frames})")
        return (WindowOptions(context_frames, context_overlap, blend),)


class VExpressMemoryOptions(Node):
    DISPLAY_NAME = "V-Express Memory / Speed Options"
    DESCRIPTION = (
        "Memory and speed settings for the Sampler; none of them changes the video. Unconnected, the Sampler "
        "denoises one window per UNet call and decodes 8 frames per VAE call, untiled and uncompiled. Where idle "
        "networks wait is chosen on Load V-Express Models (keep_idle_on)."
    )
    INPUTS = (
        Int("window_batch", MemoryOptions.window_batch, 1, 16, "Windows per UNet call. 1 uses the least memory; 2-4 can be faster on large GPUs."),
        Int("decode_chunk", MemoryOptions.decode_chunk, 1, 64, "Frames per VAE decode call. Recommended 4-16; lower saves memory."),
        Boolean("vae_tiling", MemoryOptions.vae_tiling, "Decode in spatial tiles: for large sizes on small GPUs (slower)."),
        Boolean("compile", MemoryOptions.compile, "torch.compile the UNet (slow first run, then faster on GPUs; falls back to eager on failure)."),
    )
    OUTPUTS = (Output(MEMORY_OPTIONS, "memory_options", "Connect to the Sampler's memory_options."),)

    @classmethod
    def execute(cls, window_batch, decode_chunk, vae_tiling, compile):
        return (MemoryOptions(window_batch, decode_chunk, vae_tiling, compile),)
