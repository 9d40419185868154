"""Options nodes: the sampler's window settings, memory/speed settings and speed/quality trade-offs
(the core's WindowSettings, MemorySettings and SpeedSettings), each optional on the sampler
(unconnected = the published defaults, or for the trade-offs the sampler's preset)."""
from __future__ import annotations

from vexpress_core.sampling import MAX_CONTEXT_FRAMES, check_context
from vexpress_core.settings import MemorySettings, SpeedSettings, WindowSettings

from . import choices
from .schema import Boolean, Combo, Float, Int, Node, Output, validation
from .types import MEMORY_OPTIONS, SPEED_OPTIONS, WINDOW_OPTIONS

WINDOWS, MEMORY, SPEED = WindowSettings(), MemorySettings(), SpeedSettings()
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


class VExpressSpeedOptions(Node):
    DISPLAY_NAME = "V-Express Speed / Quality Options"
    DESCRIPTION = (
        "Speed against quality for the Sampler, beyond its preset: guidance on part of the steps only and a cache "
        "that reuses the UNet's deep features across steps. Both change the video a little for a large saving "
        "(docs/speed-presets.md has the measurements). Connected, these values replace the Sampler preset's; "
        "unconnected, the preset decides (quality: guidance on every step, no cache, as published)."
    )
    INPUTS = (
        Float("guidance_start", SPEED.guidance_start, 0.0, 1.0, "Classifier-free guidance starts at this fraction of the steps (0 = the first step). Recommended 0: the first steps set the pose and mouth.", step=0.05),
        Float("guidance_end", SPEED.guidance_end, 0.05, 1.0, "Guidance stops at this fraction of the steps (1 = every step, published). Steps without guidance run the conditional half alone: half the UNet work. 0.4-0.6 keeps most of the lip motion.", step=0.05),
        Int("cache_interval", SPEED.cache_interval, 1, 10, "Deep-feature cache: a full UNet pass at most every N steps; in between only the outermost blocks run on the kept deep features. 1 = off (published); 2 = about a third less work; 3+ for drafts. Costs memory: one kept feature map per window."),
        Float("cache_threshold", SPEED.cache_threshold, 0.0, 1.0, "With cache_interval > 1: also refresh early when the outer features changed by more than this relative amount (0 = by interval only; 0.05-0.2 = adaptive, safer on fast motion).", step=0.01),
    )
    OUTPUTS = (Output(SPEED_OPTIONS, "speed_options", "Connect to the Sampler's speed_options."),)

    @classmethod
    def execute(cls, guidance_start, guidance_end, cache_interval, cache_threshold):
        return (SpeedSettings(guidance_start, guidance_end, cache_interval, cache_threshold),)
