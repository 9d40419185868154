"""The V-Express sampler: reference + speech + keypoint track -> video frames."""
from __future__ import annotations

from vexpress_core.offload import DECODING_NETWORKS, DENOISING_NETWORKS
from vexpress_core.pipeline import GenerationSettings, generate
from vexpress_core.sampling import BLEND_WEIGHTS, MAX_CONTEXT_FRAMES, SCHEDULERS

from . import runtime
from .types import (
    AUDIO,
    CATEGORY,
    COMFY_AUDIO,
    IMAGE,
    KPS,
    MODELS,
    REFERENCE,
    ModelHandle,
    ReferenceInput,
    SpeechInput,
    cut_audio,
    uint8_to_image,
)

SAMPLER_NETWORKS = DENOISING_NETWORKS + DECODING_NETWORKS


class VExpressSampler:
    DESCRIPTION = (
        "Generates the talking-head video: DDIM (or DPM++/Euler) sampling with classifier-free guidance over "
        "overlapping windows of frames, then VAE decoding and an optional 3x3x3 median deflicker. The progress bar "
        "advances per (step, window); Cancel stops it within one window. Connect images, audio and fps to Create Video."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (IMAGE, COMFY_AUDIO, "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    OUTPUT_TOOLTIPS = (
        "The video frames [F,H,W,3] in 0..1.",
        "The speech cut to the video's length.",
        "The video's frame rate.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "models": (MODELS, {"tooltip": "From Load V-Express Models."}),
                "reference": (REFERENCE, {"tooltip": "From Load Reference; sets the output width and height."}),
                "speech": (AUDIO, {"tooltip": "From Audio Encode; sets the frame count and fps."}),
                "kps": (KPS, {"tooltip": "From V-Kps Retarget: one keypoint set per output frame."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200, "tooltip": "Denoising steps. Recommended 20-30 (published 25); time grows linearly."}),
                "cfg": ("FLOAT", {"default": 3.5, "min": 1.0, "max": 10.0, "step": 0.1, "tooltip": "Classifier-free guidance scale. Recommended 2.5-4.0 (published 3.5); 1.0 disables guidance and halves the work."}),
                "reference_weight": ("FLOAT", {"default": 0.95, "min": 0.0, "max": 2.0, "step": 0.01, "tooltip": "Strength of the reference attention (identity). Recommended 0.9-1.0."}),
                "audio_weight": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": "Strength of the audio attention (lip motion). Recommended 1.0-3.0; higher moves the mouth more."}),
                "context_frames": ("INT", {"default": 24, "min": 1, "max": MAX_CONTEXT_FRAMES, "tooltip": f"Frames per window (at most {MAX_CONTEXT_FRAMES}, the motion modules' limit). Recommended 16-24; fewer saves memory."}),
                "context_overlap": ("INT", {"default": 4, "min": 0, "max": MAX_CONTEXT_FRAMES - 1, "tooltip": "Frames shared by neighbouring windows; must be below context_frames. Recommended 4-8."}),
                "blend": (sorted(BLEND_WEIGHTS), {"default": "mean", "tooltip": "How overlapping windows are merged: mean (published) or ramp (smoother seams)."}),
                "scheduler": (sorted(SCHEDULERS), {"default": "ddim", "tooltip": "ddim (published, eta 0); dpmpp and euler are alternatives at 15-25 steps."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip": "Initial noise seed (CPU generator, so seeds match the published code)."}),
                "deflicker": ("BOOLEAN", {"default": True, "tooltip": "Apply the published 3x3x3 median filter over time and space. Recommended on."}),
            },
            "optional": {
                "window_batch": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": "Windows per UNet call. 1 uses the least memory; 2-4 can be faster on large GPUs."}),
                "decode_chunk": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "Frames per VAE decode call. Recommended 4-16; lower saves memory."}),
            },
        }

    @staticmethod
    def settings(reference: ReferenceInput, speech: SpeechInput, steps, cfg, reference_weight, audio_weight,
                 context_frames, context_overlap, blend, scheduler, seed, deflicker, window_batch=1,
                 decode_chunk=8, low_vram=False) -> GenerationSettings:
        """The core's settings for these inputs (size from the reference, fps from the speech); validates them.
        `low_vram` keeps the latents in host memory, as the networks are when idle."""
        return GenerationSettings(
            width=reference.width, height=reference.height, fps=speech.fps, steps=steps, guidance_scale=cfg,
            reference_weight=reference_weight, audio_weight=audio_weight, context_frames=context_frames,
            context_overlap=context_overlap, blend=blend, scheduler=scheduler, seed=seed, deflicker=deflicker,
            window_batch=window_batch, decode_chunk=decode_chunk, latents_on_host=low_vram,
        )

    def sample(self, models: ModelHandle, reference: ReferenceInput, speech: SpeechInput, kps, steps, cfg,
               reference_weight, audio_weight, context_frames, context_overlap, blend, scheduler, seed, deflicker,
               window_batch=1, decode_chunk=8):
        settings = self.settings(reference, speech, steps, cfg, reference_weight, audio_weight, context_frames,
                                 context_overlap, blend, scheduler, seed, deflicker, window_batch, decode_chunk,
                                 low_vram=models.low_vram)
        bar = runtime.Progress(steps)

        def on_window(progress) -> None:
            bar.set(progress.step * progress.num_windows + progress.window, progress.num_steps * progress.num_windows)

        with models.using(SAMPLER_NETWORKS) as networks:
            result = generate(networks, reference.reference, speech.speech, kps, settings,
                              callback=on_window, cancel=runtime.check_interrupted)
        frames = uint8_to_image(result.frames)
        return (frames, cut_audio(speech.audio, len(frames) / result.fps), float(result.fps))
