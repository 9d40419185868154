"""Speech: ComfyUI AUDIO -> wav2vec2 encoding with the frame count it implies."""
from __future__ import annotations

from vexpress_core.audio import waveform_from_comfy
from vexpress_core.orchestration import speech_phase

from . import runtime
from .management import ModelHandle
from .schema import Float, Link, Node, Output
from .types import AUDIO, COMFY_AUDIO, MODELS, SpeechInput, cut_audio


class VExpressAudioEncode(Node):
    DISPLAY_NAME = "V-Express Audio Encode"
    DESCRIPTION = (
        "Encodes speech for V-Express: the AUDIO is mixed to mono, resampled to 16 kHz, normalised and run through "
        "wav2vec2. The video gets int(duration x fps) frames. Clips over 30 s are encoded in overlapping chunks."
    )
    INPUTS = (
        Link("models", MODELS, "From Load V-Express Models (its wav2vec2 encoder is used)."),
        Link("audio", COMFY_AUDIO, "Speech, any sample rate and channel count (Load Audio, or the audio of Get Video Components). Recommended 2-60 s of clear speech."),
        Float("fps", 30.0, 1.0, 60.0, "Frames per second of the video. Recommended 25-30 (the model was trained at 30).", step=1.0),
    )
    OUTPUTS = (
        Output(AUDIO, "speech", "Encoded speech with its frame count and fps, for V-Kps Retarget and the Sampler."),
        Output("INT", "frame_count", "Number of video frames: int(duration x fps)."),
        Output(COMFY_AUDIO, "audio", "The input audio (first batch item) cut to frame_count / fps seconds."),
    )

    @classmethod
    def execute(cls, models: ModelHandle, audio, fps):
        waveform = waveform_from_comfy(audio)
        with runtime.interruptible(models.models.audio_encoder):
            speech = speech_phase(models.using, waveform, fps, name="AUDIO input")
        return (SpeechInput(speech, audio), speech.num_frames, cut_audio(audio, speech.num_frames / fps))
