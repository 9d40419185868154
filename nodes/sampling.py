"""The V-Express sampler: reference + speech + keypoint track -> video frames."""
from __future__ import annotations

import dataclasses

from vexpress_core.orchestration import PreparedReference, frames_phase
from vexpress_core.presets import DEFAULT_PRESET, PRESETS, preset_settings
from vexpress_core.preview import with_previews
from vexpress_core.settings import GenerationSettings, MemorySettings, SamplingSettings, SpeedSettings, WindowSettings

from . import choices, runtime
from .management import ModelHandle
from .schema import Boolean, Combo, Float, Int, Link, Node, Output
from .types import (
    AUDIO,
    COMFY_AUDIO,
    IMAGE,
    KPS,
    MEMORY_OPTIONS,
    MODELS,
    REFERENCE,
    SPEED_OPTIONS,
    WINDOW_OPTIONS,
    SpeechInput,
    cut_audio,
    uint8_to_image,
)


PUBLISHED = SamplingSettings()


def generation_settings(reference: PreparedReference, speech: SpeechInput, steps, cfg, reference_weight, audio_weight,
                        scheduler, seed, deflicker, window: WindowSettings | None = None,
                        memory: MemorySettings | None = None, low_vram: bool = False, preset: str = DEFAULT_PRESET,
                        speed: SpeedSettings | None = None) -> GenerationSettings:
    """The core's settings for the sampler's inputs (size from the reference, fps from the speech); validates them.
    `low_vram` keeps the latents in host memory, as the networks are when idle. The preset decides
    the scheduler, steps and speed options, except those chosen on the node (`chosen_options`)."""
    memory = memory or MemorySettings()
    sampling = SamplingSettings(width=reference.width, height=reference.height, fps=speech.fps,
                                guidance_scale=cfg, reference_weight=reference_weight, audio_weight=audio_weight,
                                seed=seed, deflicker=deflicker)
    base = GenerationSettings(sampling, window or WindowSettings(),
                              dataclasses.replace(memory, latents_on_host=memory.latents_on_host or low_vram))
    return preset_settings(preset, base, **chosen_options(steps, scheduler, speed))


def chosen_options(steps: int, scheduler: str, speed: SpeedSettings | None) -> dict:
    """The preset's settings the user chose on the node: the steps and scheduler widgets when moved
    off their defaults (the published 25, ddim), and every value of a connected Speed / Quality Options node."""
    chosen = {name: value for name, value in (("steps", steps), ("scheduler", scheduler)) if value != getattr(PUBLISHED, name)}
    return chosen | (dataclasses.asdict(speed) if speed is not None else {})


class VExpressSampler(Node):
    DISPLAY_NAME = "V-Express Sampler"
    DESCRIPTION = (
        "Generates the talking-head video: DDIM (or DPM++/Euler) sampling with classifier-free guidance over "
        "overlapping windows of frames, then VAE decoding and an optional 3x3x3 median deflicker. The progress bar "
        "advances per (step, window); Cancel stops it within one window. Connect images, audio and fps to Create "
        "Video. Window and memory/speed settings come from the optional options nodes. The preset trades quality "
        "for speed (quality = published, fast, draft)."
    )
    INPUTS = (
        Link("models", MODELS, "From Load V-Express Models."),
        Link("reference", REFERENCE, "From Load Reference; sets the output width and height."),
        Link("speech", AUDIO, "From Audio Encode; sets the frame count and fps."),
        Link("kps", KPS, "From V-Kps Retarget: one keypoint set per output frame."),
        Int("steps", 25, 1, 200, "Denoising steps. Recommended 20-30 (published 25); time grows linearly. Left at 25, the preset chooses."),
        Float("cfg", 3.5, 1.0, 10.0, "Classifier-free guidance scale. Recommended 2.5-4.0 (published 3.5); 1.0 disables guidance and halves the work.", step=0.1),
        Float("reference_weight", 0.95, 0.0, 2.0, "Strength of the reference attention (identity). Recommended 0.9-1.0.", step=0.01),
        Float("audio_weight", 3.0, 0.0, 5.0, "Strength of the audio attention (lip motion). Recommended 1.0-3.0; higher moves the mouth more.", step=0.05),
        Combo("scheduler", choices.scheduler_names, "ddim (published, eta 0); dpmpp (DPM-Solver++ 2M) and unipc (UniPC) reach ddim-25 quality at fewer steps (10-15; unipc is best below 10); euler is an alternative at 15-25. Left at ddim, the preset chooses.", default="ddim"),
        Int("seed", 42, 0, 0xFFFFFFFFFFFFFFFF, "Initial noise seed (CPU generator, so seeds match the published code).", control_after_generate=True),
        Boolean("deflicker", True, "Apply the published 3x3x3 median filter over time and space. Recommended on."),
        Link("window_options", WINDOW_OPTIONS, "Optional, from V-Express Window Options. Unconnected: 24 frames per window, overlap 4, mean blend (published).", optional=True),
        Link("memory_options", MEMORY_OPTIONS, "Optional, from V-Express Memory / Speed Options. Unconnected: windows per UNet call and frames per VAE decode by free GPU memory (1 each on CPU), no tiling, no compile.", optional=True),
        Boolean("previews", True, "Show the current window's frames on the node while sampling (a cheap latent-to-RGB projection, no VAE; at most 2 per second, size from ComfyUI's --preview-size). Off = no pictures; the video is the same either way.", optional=True),
        Link("speed_options", SPEED_OPTIONS, "Optional, from V-Express Speed / Quality Options: guidance interval and deep-feature cache, replacing the preset's.", optional=True),
        Combo("preset", choices.preset_names, "; ".join(f"{name} = {PRESETS[name].summary}" for name in PRESETS.names())
              + ". The preset sets scheduler, steps and the speed options; steps or scheduler moved off their defaults "
                "(25, ddim) and a connected Speed / Quality Options node win. Trade-offs: docs/speed-presets.md.",
              default=DEFAULT_PRESET, optional=True),
    )
    OUTPUTS = (
        Output(IMAGE, "images", "The video frames [F,H,W,3] in 0..1."),
        Output(COMFY_AUDIO, "audio", "The speech cut to the video's length."),
        Output("FLOAT", "fps", "The video's frame rate."),
    )

    @classmethod
    def execute(cls, models: ModelHandle, reference: PreparedReference, speech: SpeechInput, kps, steps, cfg,
                reference_weight, audio_weight, scheduler, seed, deflicker, window_options=None, memory_options=None,
                previews=True, speed_options=None, preset=DEFAULT_PRESET):
        settings = generation_settings(reference, speech, steps, cfg, reference_weight, audio_weight, scheduler, seed,
                                       deflicker, window_options, memory_options, models.low_vram, preset, speed_options)
        bar = runtime.Progress(settings.steps)

        def on_window(progress, picture=None) -> None:
            bar.set(progress.step * progress.num_windows + progress.window, progress.num_steps * progress.num_windows, picture)

        callback = with_previews(on_window, max_side=runtime.preview_size()) if previews else on_window

        result = frames_phase(models.using, reference, speech.speech, kps, settings, callback=callback,
                              cancel=runtime.check_interrupted)
        frames = uint8_to_image(result.frames)
        return (frames, cut_audio(speech.audio, len(frames) / result.fps), float(result.fps))
