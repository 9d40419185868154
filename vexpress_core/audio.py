"""Speech for V-Express: decoding to 16 kHz mono, wav2vec2 encoding and the per-frame audio
windows the audio projection consumes (SPEC steps 5 and 6)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from .model_files import CheckpointError

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4
WAV2VEC2_FOLDER = "wav2vec2-base-960h"


# ---------------------------------------------------------------------------------------------
# Decoding


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file FFmpeg reads (mp3, wav, flac, m4a, a video's
    soundtrack) to a float32 mono waveform at `sample_rate`."""
    import av  # here, not at the top: PyAV costs 15 MiB of memory that generation does not need

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"audio file {path} is empty (0 bytes)")
    try:
        channels, source_rate = _decoded_channels(path)
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot decode audio from {path}: {exc}") from exc
    mono = channels.mean(axis=0, dtype=np.float32)
    validate_waveform(mono, source_rate, str(path))
    return resampled(mono, source_rate, sample_rate)


def _decoded_channels(path: Path) -> tuple[np.ndarray, int]:
    """All samples of the file's first audio stream as float32 [channels, samples], and its rate."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        # Decoders hand out s16, s32, flt, planar or packed; converting every frame to planar
        # float (keeping layout and rate) gives one [channels, n] array per frame.
        to_planar_float = av.AudioResampler(format="fltp")
        pieces = []
        for frame in container.decode(stream):
            pieces.extend(to_planar_float.resample(frame))
        pieces.extend(to_planar_float.resample(None))
    if not pieces:
        raise ValueError(f"{path} holds no audio samples (the audio is empty)")
    return np.concatenate([piece.to_ndarray() for piece in pieces], axis=1), pieces[0].sample_rate


def validate_waveform(wave: np.ndarray, sample_rate: int, name: str) -> None:
    """Raise ValueError naming `name` when the waveform is empty, not finite or silent."""
    if sample_rate <= 0:
        raise ValueError(f"{name}: sample rate must be positive, got {sample_rate}")
    if wave.size == 0:
        raise ValueError(f"{name}: the audio is empty")
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"{name}: the audio contains NaN or infinite samples")
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        raise ValueError(
            f"{name}: the audio is silent (peak amplitude {peak:.2e} over "
            f"{wave.size / sample_rate:.2f} s); give a clip with speech in it"
        )


def resampled(wave: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`wave` (mono) resampled with soxr's high-quality filter, as float32."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if source_rate == target_rate:
        return wave
    return soxr.resample(wave, source_rate, target_rate).astype(np.float32, copy=False)


def waveform_from_comfy(audio: Mapping) -> np.ndarray:
    """ComfyUI's AUDIO value (`{"waveform": [B, C, T], "sample_rate": int}`) as a 16 kHz mono
    float32 waveform: batch item 0, channels averaged."""
    waveform, rate = audio["waveform"], int(audio["sample_rate"])
    if waveform.ndim != 3:
        raise ValueError(f"AUDIO waveform must be [batch, channels, samples], got {tuple(waveform.shape)}")
    mono = waveform[0].detach().float().mean(dim=0).cpu().numpy()
    validate_waveform(mono, rate, "AUDIO input")
    return resampled(mono, rate)


def frame_count(num_samples: int, sample_rate: int, fps: float) -> int:
    """Number of video frames for a clip, exactly as the published script: int(duration * fps)."""
    duration = num_samples / sample_rate
    return int(duration * fps)


# ---------------------------------------------------------------------------------------------
# wav2vec2


def load_audio_encoder(
    path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[Wav2Vec2FeatureExtractor, Wav2Vec2Model]:
    """The feature extractor and the Wav2Vec2Model (eval mode) from `path`: a model directory in
    the published layout (holding `wav2vec2-base-960h/`) or that folder itself. Local files only."""
    path = Path(path)
    folder = path / WAV2VEC2_FOLDER if (path / WAV2VEC2_FOLDER).is_dir() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no wav2vec2 model at {folder}: expected {WAV2VEC2_FOLDER}/config.json "
            "(download facebook/wav2vec2-base-960h into the model directory)"
        )
    try:
        feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
        encoder, loading = Wav2Vec2Model.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{folder}: cannot be loaded as wav2vec2 ({error})") from error
    # transformers only warns about weights the file lacks and fills them with random values.
    wrong = sorted(loading["missing_keys"]) + sorted(str(item) for item in loading["mismatched_keys"])
    if wrong:
        raise CheckpointError(f"{folder}: the weights do not match its config.json; missing or wrongly shaped: "
                              f"{', '.join(wrong[:8])}{' ...' if len(wrong) > 8 else ''} ({len(wrong)} in all)")
    return feature_extractor, encoder.to(device=device, dtype=dtype).eval()


def hidden_length(num_samples: int, config: Wav2Vec2Config) -> int:
    """Number of wav2vec2 vectors for `num_samples` input samples (valid convolutions)."""
    length = num_samples
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        length = (length - kernel) // stride + 1
    return length


def _hop_and_field(config: Wav2Vec2Config) -> tuple[int, int]:
    """Samples between consecutive vectors (320) and samples seen by one vector (400)."""
    hop = math.prod(config.conv_stride)
    field = 1
    for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
        field = (field - 1) * stride + kernel
    return hop, field


@dataclass(frozen=True)
class EncoderChunk:
    """One encoder call: input samples [sample_start, sample_stop) and the rows of its output
    that are kept, [keep_start, keep_stop), which are global vectors [first, first + kept)."""

    sample_start: int
    sample_stop: int
    keep_start: int
    keep_stop: int


def encoder_chunks(
    num_samples: int,
    config: Wav2Vec2Config,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 5.0,
    sample_rate: int = SAMPLE_RATE,
) -> list[EncoderChunk]:
    """How `encode_audio` splits a clip: one chunk for clips up to `chunk_seconds`, otherwise
    equal cores with `overlap_seconds` of context on each side."""
    if chunk_seconds <= 0 or overlap_seconds < 0:
        raise ValueError(f"need chunk_seconds > 0 and overlap_seconds >= 0, got {chunk_seconds}, {overlap_seconds}")
    total = hidden_length(num_samples, config)
    if total < 1:
        raise ValueError(f"audio too short for wav2vec2: {num_samples} samples ({num_samples / sample_rate:.3f} s)")
    num_chunks = math.ceil(num_samples / (chunk_seconds * sample_rate))
    if num_chunks <= 1:
        return [EncoderChunk(0, num_samples, 0, total)]
    # Borders are placed on the vector grid: global vector k reads samples
    # [k * hop, k * hop + field). A window of vectors [w0, w1) therefore starts at sample
    # w0 * hop (a multiple of hop, so its j-th output is exactly global vector w0 + j) and needs
    # samples up to (w1 - 1) * hop + field; the last window takes the clip's tail as the single
    # pass does. Each core [k0, k1) is widened by `context` vectors on both sides (clipped to the
    # clip); only the core's rows are kept, so the cores tile [0, total) exactly once. What
    # differs from one pass is what the context cannot supply: self-attention sees the window,
    # not the whole clip (the first conv layer's GroupNorm gets clip-wide statistics, see
    # `encode_audio`).
    hop, field = _hop_and_field(config)
    context = math.ceil(overlap_seconds * sample_rate / hop)
    core = math.ceil(total / num_chunks)
    chunks = []
    for k0 in range(0, total, core):
        k1 = min(total, k0 + core)
        w0, w1 = max(0, k0 - context), min(total, k1 + context)
        stop = num_samples if w1 == total else (w1 - 1) * hop + field
        chunks.append(EncoderChunk(w0 * hop, stop, k0 - w0, k1 - w0))
    return chunks


def normalised_input(waveform_16k: np.ndarray, feature_extractor: Wav2Vec2FeatureExtractor) -> torch.Tensor:
    """The encoder input [T]: the feature extractor's zero-mean unit-variance normalisation over
    the whole clip, as the published pipeline calls it."""
    values = feature_extractor(waveform_16k, return_tensors="pt", sampling_rate=SAMPLE_RATE).input_values
    return values[0]


def encode_audio(
    waveform_16k: np.ndarray,
    feature_extractor: Wav2Vec2FeatureExtractor,
    encoder: Wav2Vec2Model,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 5.0,
) -> torch.Tensor:
    """wav2vec2 `last_hidden_state` of a 16 kHz clip as float32 [1, N, 768] on the CPU.

    Clips up to `chunk_seconds` go through in one call (the published computation). Longer ones
    are encoded in overlapping chunks (see `encoder_chunks`) so memory stays bounded; the default
    5 s of context is the Hugging Face ASR pipeline's stride for 30 s chunks. The first conv
    layer's GroupNorm normalises each channel over the whole input, so for chunks it is given
    the statistics of the whole clip (computed block by block) instead of the chunk's own.
    """
    values = normalised_input(waveform_16k, feature_extractor)
    chunks = encoder_chunks(values.numel(), encoder.config, chunk_seconds, overlap_seconds)
    # Filled in place, chunk by chunk: gathering the chunks and concatenating them would hold the
    # whole clip's vectors twice (1.1 GB for an hour of speech).
    encoded = torch.empty(1, hidden_length(values.numel(), encoder.config), encoder.config.hidden_size)
    row = 0
    with torch.inference_mode(), _clip_wide_first_norm(encoder, values, enabled=len(chunks) > 1):
        for chunk in chunks:
            window = values[chunk.sample_start : chunk.sample_stop]
            hidden = encoder(window[None].to(encoder.device, encoder.dtype)).last_hidden_state
            kept = hidden[0, chunk.keep_start : chunk.keep_stop]
            encoded[0, row : row + len(kept)] = kept
            row += len(kept)
            del hidden, kept
    return encoded


@contextmanager
def _clip_wide_first_norm(encoder: Wav2Vec2Model, values: torch.Tensor, enabled: bool) -> Iterator[None]:
    """While active, the first conv layer's GroupNorm (one group per channel, wav2vec2-base's
    `feat_extract_norm="group"`) normalises with the statistics of the whole clip `values`."""
    if not enabled or encoder.config.feat_extract_norm != "group":
        yield
        return
    mean, var = _first_conv_statistics(encoder, values)

    def normalised_with_clip_statistics(norm: torch.nn.GroupNorm, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        # At least in float32, as GroupNorm itself computes: wav2vec2-base's first conv outputs have
        # variances past fp16's largest value (65,504), which would make every chunk's features wrong.
        x = inputs[0]
        dtype = torch.promote_types(x.dtype, torch.float32)
        scale = torch.rsqrt(var.to(x.device, dtype) + norm.eps) * norm.weight.to(dtype)
        normed = (x.to(dtype) - mean.to(x.device, dtype)[:, None]) * scale[:, None] + norm.bias.to(dtype)[:, None]
        return normed.to(x.dtype)

    handle = encoder.feature_extractor.conv_layers[0].layer_norm.register_forward_hook(normalised_with_clip_statistics)
    try:
        yield
    finally:
        handle.remove()


def _first_conv_statistics(
    encoder: Wav2Vec2Model, values: torch.Tensor, block_seconds: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of the first conv layer's output over the whole clip,
    accumulated over blocks of whole output steps (in float64)."""
    conv = encoder.feature_extractor.conv_layers[0].conv
    kernel, stride = encoder.config.conv_kernel[0], encoder.config.conv_stride[0]
    steps = (values.numel() - kernel) // stride + 1
    block = max(1, int(block_seconds * SAMPLE_RATE) // stride)
    total = torch.zeros(conv.out_channels, dtype=torch.float64)
    squares = torch.zeros(conv.out_channels, dtype=torch.float64)
    for first in range(0, steps, block):
        last = min(steps, first + block)
        samples = values[first * stride : (last - 1) * stride + kernel]
        output = conv(samples[None, None].to(encoder.device, encoder.dtype))[0].float()
        var, mean = (statistic.double().cpu() for statistic in torch.var_mean(output, dim=1, correction=0))
        total += (last - first) * mean
        squares += (last - first) * (var + mean**2)
    mean = total / steps
    return mean.float(), (squares / steps - mean**2).float()


# ---------------------------------------------------------------------------------------------
# Per-frame windows


def padded_audio_sequence(hidden: torch.Tensor, num_frames: int, num_pad: int = 2) -> torch.Tensor:
    """wav2vec2 vectors [1, N, D] or [N, D] linearly interpolated (align_corners False, float32)
    to 2 * num_frames rows, with 2 * num_pad zero rows added at each end: [2F + 4 pad, D].

    The published code casts back to the encoder's dtype here; casting the windows to the
    projection's dtype later gives the same values.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if hidden.ndim == 2:
        hidden = hidden[None]
    interpolated = F.interpolate(
        hidden.float().permute(0, 2, 1), size=2 * num_frames, mode="linear", align_corners=False
    )[0].T
    zeros = interpolated.new_zeros(2 * num_pad, interpolated.shape[1])
    return torch.cat([zeros, interpolated, zeros])


def audio_windows_from_sequence(
    sequence: torch.Tensor, frames: Sequence[int] | torch.Tensor, num_pad: int = 2
) -> torch.Tensor:
    """Windows [len(frames), 2 (2 pad + 1), D] of a `padded_audio_sequence`: frame i takes rows
    [2i, 2i + 2 (2 pad + 1)). Any frame indices (a context window, wrapped or not)."""
    frames = torch.as_tensor(frames, dtype=torch.long, device=sequence.device)
    offsets = torch.arange(2 * (2 * num_pad + 1), device=sequence.device)
    return sequence[2 * frames[:, None] + offsets]


def audio_windows_range(
    hidden: torch.Tensor, num_frames: int, start: int, stop: int, num_pad: int = 2
) -> torch.Tensor:
    """Windows of frames [start, stop) only: rows identical to `audio_windows(...)[start:stop]`."""
    if not 0 <= start <= stop <= num_frames:
        raise ValueError(f"frame range [{start}, {stop}) is outside [0, {num_frames})")
    sequence = padded_audio_sequence(hidden, num_frames, num_pad)
    return audio_windows_from_sequence(sequence, torch.arange(start, stop), num_pad)


def audio_windows(hidden: torch.Tensor, num_frames: int, num_pad: int = 2) -> torch.Tensor:
    """Per-frame audio windows [F, 2 (2 pad + 1), D] as the published `prepare_audio_embeddings`
    builds them before the audio projection."""
    return audio_windows_range(hidden, num_frames, 0, num_frames, num_pad)


# ---------------------------------------------------------------------------------------------
# Demo signal

_VOWEL_FORMANTS = (  # (F1, F2, F3) in Hz of /a/, /i/, /u/, /e/, /o/
    (730.0, 1090.0, 2440.0),
    (270.0, 2290.0, 3010.0),
    (300.0, 870.0, 2240.0),
    (530.0, 1840.0, 2480.0),
    (570.0, 840.0, 2410.0),
)
_FORMANT_BANDWIDTHS = (80.0, 90.0, 120.0)
_SYLLABLES_PER_SECOND = 4.0


def synthetic_speech(seconds: float = 2.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A licence-clean speech-like float32 signal (peak 0.5), the source of `assets/speech.wav`:
    a glottal harmonic series with a wandering pitch, shaped by the formants of a vowel per
    syllable, under a syllable envelope, with a short noise burst at every syllable onset."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    pitch = 120.0 + 15.0 * np.sin(2 * np.pi * 0.7 * t) - 10.0 * t / max(seconds, 1e-9)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate

    syllable = np.floor(t * _SYLLABLES_PER_SECOND).astype(int)
    position = t * _SYLLABLES_PER_SECOND - syllable  # 0..1 inside a syllable
    formants = np.array(_VOWEL_FORMANTS)[syllable % len(_VOWEL_FORMANTS)]  # [T, 3]

    voiced = np.zeros_like(t)
    for harmonic in range(1, int(4000.0 / pitch.min()) + 1):
        frequency = harmonic * pitch
        gain = sum(
            1.0 / np.sqrt((1 - (frequency / f) ** 2) ** 2 + (frequency * b / f**2) ** 2)
            for f, b in zip(formants.T, _FORMANT_BANDWIDTHS)
        )
        voiced += gain * np.sin(harmonic * phase) / harmonic
    # A vowel nucleus in the middle 70 % of each syllable, silence between syllables.
    envelope = np.clip(np.sin(np.pi * (position - 0.15) / 0.7), 0.0, None) * (position > 0.15) * (position < 0.85)
    noise = np.random.default_rng(0).standard_normal(t.size)
    fricative = np.diff(noise, prepend=0.0) * np.exp(-((position - 0.1) / 0.04) ** 2)

    signal = voiced / np.abs(voiced).max() * envelope + 0.15 * fricative
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)
