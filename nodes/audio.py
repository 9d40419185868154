"""Speech: ComfyUI AUDIO -> wav2vec2 encoding with the frame count it implies."""
from __future__ import annotations

from vexpress_core.audio import waveform_from_comfy
from vexpress_core.offload import SPEECH_NETWORKS
from vexpress_core.pipeline import encode_speech

from .types import AUDIO, CATEGORY, COMFY_AUDIO, MODELS, ModelHandle, SpeechInput, cut_audio


class VExpressAudioEncode:
    DESCRIPTION = (
        "Encodes speech for V-Express: the AUDIO is mixed to mono, resampled to 16 kHz, normalised and run through "
        "wav2vec2. The video gets int(duration x fps) frames. Clips over 30 s are encoded in overlapping chunks."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (AUDIO, "INT", COMFY_AUDIO)
    RETURN_NAMES = ("speech", "frame_count", "audio")
    OUTPUT_TOOLTIPS = (
        "Encoded speech with its frame count and fps, for V-Kps Retarget and the Sampler.",
        "Number of video frames: int(duration x fps).",
        "The input audio (first batch item) cut to frame_count / fps seconds.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "models": (MODELS, {"tooltip": "From Load V-Express Models (its wav2vec2 encoder is used)."}),
                "audio": ("AUDIO", {"tooltip": "Speech, any sample rate and channel count (Load Audio, or the audio of Get Video Components). Recommended 2-60 s of clear speech."}),
                "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 60.0, "step": 1.0, "tooltip": "Frames per second of the video. Recommended 25-30 (the model was trained at 30)."}),
            }
        }

    def encode(self, models: ModelHandle, audio, fps):
        waveform = waveform_from_comfy(audio)
        with models.using(SPEECH_NETWORKS) as networks:
            speech = encode_speech(networks, waveform, fps)
        return (SpeechInput(speech, audio), speech.num_frames, cut_audio(audio, speech.num_frames / fps))
