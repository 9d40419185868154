from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from vexpress_core.audio import (
    SAMPLE_RATE,
    audio_windows,
    audio_windows_from_sequence,
    audio_windows_range,
    encode_audio,
    encoder_chunks,
    frame_count,
    hidden_length,
    load_audio,
    load_audio_encoder,
    normalised_input,
    padded_audio_sequence,
    resampled,
    synthetic_speech,
    validate_waveform,
    waveform_from_comfy,
)
from vexpress_core.demo import DEMO_SPEECH

# Measured on the tiny fixture wav2vec2 (one random layer, output std ~1) with long_aud.mp3 tiled to
# 70 s: chunk 30 s / overlap 5 s -> max |diff| 0.021, mean 0.0031; chunk 10 s / overlap 2 s ->
# max 0.058, mean 0.0090. Bounds are about 2.5x those. Without the clip-wide GroupNorm statistics
# the default setting was at max 0.37, mean 0.015.
CHUNKING_TOLERANCES = {(30.0, 5.0): (0.05, 0.008), (10.0, 2.0): (0.15, 0.025)}


@pytest.fixture(scope="module")
def preprocess(fixture_dir: Path) -> dict:
    return torch.load(fixture_dir / "preprocess_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny_encoder(fixture_dir: Path):
    return load_audio_encoder(fixture_dir)


@pytest.fixture(scope="module")
def long_speech(samples_dir: Path) -> np.ndarray:
    return load_audio(samples_dir / "short_case_AOC" / "long_aud.mp3")


def published_windows(hidden: torch.Tensor, video_length: int, num_pad: int) -> torch.Tensor:
    """The published `prepare_audio_embeddings` up to the projection, transcribed."""
    embeddings = torch.nn.functional.interpolate(hidden.permute(0, 2, 1), size=2 * video_length, mode="linear")
    embeddings = embeddings[0].T
    zeros = torch.zeros_like(embeddings)[: 2 * num_pad]
    embeddings = torch.cat([zeros, embeddings, zeros])
    return torch.stack([embeddings[2 * i : 2 * (i + 2 * num_pad + 1)] for i in range(video_length)])


# --- windows ---------------------------------------------------------------------------------


def test_audio_windows_match_published_fixture(preprocess):
    hidden, frames, pad = preprocess["wav2vec2_hidden"], preprocess["video_length"], preprocess["num_pad_audio_frames"]
    windows = audio_windows(hidden, frames, pad)
    expected = preprocess["audio_windows"]
    assert windows.shape == expected.shape
    assert (windows - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("num_vectors, video_length, num_pad", [(37, 2, 2), (37, 45, 2), (149, 200, 1), (10, 31, 3)])
def test_audio_windows_match_published_loop(num_vectors, video_length, num_pad):
    hidden = torch.randn(1, num_vectors, 768, generator=torch.Generator().manual_seed(num_vectors))
    windows = audio_windows(hidden, video_length, num_pad)
    assert windows.shape == (video_length, 2 * (2 * num_pad + 1), 768)
    assert torch.equal(windows, published_windows(hidden, video_length, num_pad))


def test_audio_windows_range_equals_full(preprocess):
    hidden, frames, pad = preprocess["wav2vec2_hidden"], preprocess["video_length"], preprocess["num_pad_audio_frames"]
    full = audio_windows(hidden, frames, pad)
    for start, stop in [(0, frames), (0, 1), (frames - 1, frames), (5, 29), (frames // 2, frames // 2)]:
        assert torch.equal(audio_windows_range(hidden, frames, start, stop, pad), full[start:stop])
    assert torch.equal(audio_windows_range(hidden[0], frames, 3, 9, pad), full[3:9])
    wrapped = [frames - 2, frames - 1, 0, 1]
    sequence = padded_audio_sequence(hidden, frames, pad)
    assert torch.equal(audio_windows_from_sequence(sequence, wrapped, pad), full[wrapped])
    with pytest.raises(ValueError, match="outside"):
        audio_windows_range(hidden, frames, 0, frames + 1, pad)
    with pytest.raises(ValueError, match="num_frames"):
        audio_windows(hidden, 0, pad)


def test_frame_count_follows_the_published_float_formula():
    assert frame_count(48000, 16000, 30) == 90
    assert frame_count(1000, 16000, 30) == 1
    assert frame_count(100, 16000, 30) == 0
    # 16.4 s * 30 is 491.99999... in floating point: the published script makes 491 frames.
    assert frame_count(262400, 16000, 30) == 491
    assert frame_count(74240, 16000, 12.5) == 57


# --- decoding --------------------------------------------------------------------------------


def test_load_audio_decodes_every_sample_to_16k_mono(samples_dir):
    paths = sorted(samples_dir.glob("*/aud.mp3")) + [samples_dir / "short_case_AOC" / "long_aud.mp3"]
    assert len(paths) >= 2
    for path in paths:
        wave = load_audio(path)
        assert wave.dtype == np.float32 and wave.ndim == 1
        expected = sf.info(str(path)).duration  # libsndfile's own mp3 decoder
        assert abs(wave.size / SAMPLE_RATE - expected) <= 0.01 * expected, path


def test_load_audio_resamples_to_the_requested_rate(samples_dir):
    path = samples_dir / "short_case_AOC" / "aud.mp3"
    duration = load_audio(path).size / SAMPLE_RATE
    assert load_audio(path, sample_rate=24000).size / 24000 == pytest.approx(duration, abs=1e-3)


def test_load_audio_reads_the_soundtrack_of_a_video(samples_dir):
    path = sorted(samples_dir.glob("*/gt.mp4"))[0]
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        expected = float(stream.duration * stream.time_base)
    wave = load_audio(path)
    assert abs(wave.size / SAMPLE_RATE - expected) <= 0.01 * expected


def test_load_audio_errors_name_the_file(tmp_path, samples_dir):
    with pytest.raises(FileNotFoundError, match="missing.mp3"):
        load_audio(tmp_path / "missing.mp3")

    empty_file = tmp_path / "empty.mp3"
    empty_file.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp3.*empty"):
        load_audio(empty_file)

    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 100)
    with pytest.raises(ValueError, match="notes.mp3"):
        load_audio(text)

    with pytest.raises(ValueError, match="no audio stream"):
        load_audio(samples_dir / "short_case_AOC" / "ref.jpg")

    no_samples = tmp_path / "no_samples.wav"
    sf.write(no_samples, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(ValueError, match="no_samples.wav.*empty"):
        load_audio(no_samples)

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    with pytest.raises(ValueError, match="silent.wav.*silent"):
        load_audio(silent)


def test_validate_waveform_rejects_non_finite_and_accepts_speech():
    with pytest.raises(ValueError, match="clip.*NaN"):
        validate_waveform(np.array([0.1, np.nan], np.float32), SAMPLE_RATE, "clip")
    validate_waveform(synthetic_speech(0.5), SAMPLE_RATE, "clip")


def test_waveform_from_comfy_takes_batch_0_and_averages_channels():
    speech = synthetic_speech(1.0, 44100)
    stereo = torch.from_numpy(np.stack([speech, 0.5 * speech]))
    batch = torch.stack([stereo, torch.zeros_like(stereo)])
    wave = waveform_from_comfy({"waveform": batch, "sample_rate": 44100})
    assert wave.dtype == np.float32
    np.testing.assert_allclose(wave, resampled(0.75 * speech, 44100), atol=1e-6)
    with pytest.raises(ValueError, match="silent"):
        waveform_from_comfy({"waveform": batch[1:], "sample_rate": 44100})
    with pytest.raises(ValueError, match="batch, channels, samples"):
        waveform_from_comfy({"waveform": stereo, "sample_rate": 44100})


def test_demo_speech_asset_is_the_synthetic_signal():
    assert DEMO_SPEECH.stat().st_size < 100_000
    info = sf.info(str(DEMO_SPEECH))
    assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
    wave = load_audio(DEMO_SPEECH)
    assert wave.size == 2 * SAMPLE_RATE
    np.testing.assert_allclose(wave, synthetic_speech(2.0, SAMPLE_RATE), atol=1 / 16384)


# --- wav2vec2 --------------------------------------------------------------------------------


def test_load_audio_encoder_from_model_dir_or_folder(fixture_dir, tiny_encoder):
    feature_extractor, encoder = tiny_encoder
    assert encoder.config.hidden_size == 768 and not encoder.training
    assert feature_extractor.do_normalize
    _, again = load_audio_encoder(fixture_dir / "wav2vec2-base-960h", dtype=torch.float64)
    assert again.dtype == torch.float64
    with pytest.raises(FileNotFoundError, match="wav2vec2"):
        load_audio_encoder(fixture_dir / "v-express")


def test_short_clip_is_encoded_in_one_published_call(tiny_encoder, long_speech):
    feature_extractor, encoder = tiny_encoder
    clip = long_speech[: 12 * SAMPLE_RATE + 123]
    calls = []
    handle = encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    try:
        hidden = encode_audio(clip, feature_extractor, encoder)
    finally:
        handle.remove()
    assert calls == [(1, clip.size)]
    with torch.inference_mode():
        inputs = feature_extractor(clip, return_tensors="pt", sampling_rate=SAMPLE_RATE).input_values
        expected = encoder(inputs).last_hidden_state
    assert hidden.dtype == torch.float32
    assert torch.equal(hidden, expected)


@pytest.mark.parametrize("num_samples", [400, 16000 * 31 + 7, 16000 * 70, 16000 * 70 + 319, 16000 * 95 + 321])
@pytest.mark.parametrize("chunk_seconds, overlap_seconds", [(30.0, 5.0), (10.0, 2.0), (7.3, 0.0)])
def test_encoder_chunks_tile_the_vector_grid(tiny_encoder, num_samples, chunk_seconds, overlap_seconds):
    config = tiny_encoder[1].config
    total = hidden_length(num_samples, config)
    chunks = encoder_chunks(num_samples, config, chunk_seconds, overlap_seconds)
    covered = 0
    for chunk in chunks:
        assert chunk.sample_start % 320 == 0 and chunk.sample_stop <= num_samples
        window_vectors = hidden_length(chunk.sample_stop - chunk.sample_start, config)
        first = chunk.sample_start // 320
        assert first + window_vectors <= total and chunk.keep_stop <= window_vectors
        assert first + chunk.keep_start == covered
        covered = first + chunk.keep_stop
    assert covered == total
    assert (len(chunks) == 1) == (num_samples <= chunk_seconds * SAMPLE_RATE)
    with pytest.raises(ValueError, match="too short"):
        encoder_chunks(399, config)


def test_long_clip_chunked_encoding_matches_single_pass(tiny_encoder, long_speech):
    feature_extractor, encoder = tiny_encoder
    clip = np.tile(long_speech, 3)[: 70 * SAMPLE_RATE]
    single = encode_audio(clip, feature_extractor, encoder, chunk_seconds=1e9)
    assert single.shape == (1, hidden_length(clip.size, encoder.config), 768)
    for (chunk_seconds, overlap_seconds), (max_tolerance, mean_tolerance) in CHUNKING_TOLERANCES.items():
        chunked = encode_audio(clip, feature_extractor, encoder, chunk_seconds, overlap_seconds)
        assert chunked.shape == single.shape
        difference = (chunked - single).abs()
        assert difference.max().item() <= max_tolerance, (chunk_seconds, difference.max().item())
        assert difference.mean().item() <= mean_tolerance, (chunk_seconds, difference.mean().item())
    assert not encoder.feature_extractor.conv_layers[0].layer_norm._forward_hooks


def test_normalised_input_is_zero_mean_unit_variance_over_the_clip(tiny_encoder, long_speech):
    values = normalised_input(long_speech, tiny_encoder[0])
    assert values.shape == (long_speech.size,)
    assert abs(values.mean().item()) < 1e-4 and values.std().item() == pytest.approx(1.0, abs=1e-3)
