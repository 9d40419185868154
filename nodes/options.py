"""Options nodes: the sampler's window settings and memory/speed settings (the core's WindowSettings and
MemorySettings), each optional on the sampler (unconnected = the published defaults)."""
from __future__ import annotations

from vexpress_core.sampling import MAX_CONTEXT_FRAMES, check_context
from vexpress_core.settings import MemorySettings, WindowSettings

from . import choices
from .schema import Boolean, Combo, Int, Node, Output, validation
from .types import MEMORY_OPTIONS, WINDOW_OPTIONS

WINDOWS, MEMORY = WindowSettings(), MemorySettings()
AUTO = 0  # the integer inputs' stand-in for MemorySettings' "auto"


class VExpressWindowOptions(Node):
    DISPLAY_NAME = "V-Express Window Options"
    DESCRIPTION = (
        "Window settings for the Sampler: the video is denoised in overlapping windows of frames (the motion "
        "modules see at most 32 frames at once) and the overlaps are merged. Unconnected, the Sampler uses "
        "24 frames, overlap 4, mean (the published settings)."
    )
    INPUTS = (
        Int("context_frames", WINDOWS.context_frames, 1, MAX_CONTEXT_FRAMES, f"Frames per window (at most {MAX_CONTEXT_FRAMES}, the motion modules' limit). Recommended 16-24; fewer saves memory."),
        Int("context_overlap", WINDOWS.context_overlap, 0, MAX_CONTEXT_FRAMES - 1, "Frames shared by neighbouring windows; must be below context_frames. Recommended 4-8."),
        Combo("blend", choices.blend_names, "How overlapping windows are merged: mean (published) or ramp (smoother seams).", default=WINDOWS.blend),
    )
    OUTPUTS = (Output(WINDOW_OPTIONS, "window_options", "Connect to the Sampler's window_options."),)

    @classmethod
    def validate_inputs(cls, context_frames, context_overlap):
        if context_frames is None or context_overlap is None:  # linked: checked when the node runs
            return True
        return validation(check_context, context_frames, context_overlap)

    @classmethod
    def execute(cls, context_frames, context_overlap, blend):
        return (WindowSettings(context_frames, context_overlap, blend),)


class VExpressMemoryOptions(Node):
    DISPLAY_NAME = "V-Express Memory / Speed Options"
    DESCRIPTION = (
        "Memory and speed settings for the Sampler; none of them changes the video. Unconnected, the Sampler "
        "picks windows per UNet call and frames per VAE call automatically (auto), untiled and uncompiled. Where idle "
        "networks wait is chosen on Load V-Express Models (keep_idle_on)."
    )
    INPUTS = (
        Int("window_batch", AUTO, 0, 16, "Windows per UNet call. 0 = auto (as many as fit in free GPU memory; 1 on CPU). 1 uses the least memory; 2-4 can be faster on large GPUs."),
        Int("decode_chunk", AUTO, 0, 64, "Frames per VAE decode call. 0 = auto (as many as fit in free GPU memory at this size, at most 8; 1 on CPU, as published). Lower saves memory."),
        Boolean("vae_tiling", MEMORY.vae_tiling, "Decode in spatial tiles: for large sizes on small GPUs (slower)."),
        Boolean("compile", MEMORY.compile, "torch.compile the UNet (slow first run, then faster on GPUs; falls back to eager on failure)."),
    )
    OUTPUTS = (Output(MEMORY_OPTIONS, "memory_options", "Connect to the Sampler's memory_options."),)

    @classmethod
    def execute(cls, window_batch, decode_chunk, vae_tiling, compile):
        return (MemorySettings(window_batch=window_batch or "auto", decode_chunk=decode_chunk or "auto",
                               vae_tiling=vae_tiling, compile=compile),)
