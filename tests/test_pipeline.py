"""The core pipeline end to end on tiny random models: mp4 output per retarget mode and driving
input, the window schedule, blending, window batching, cancel/progress, streaming (structural),
determinism and bad-input errors.

Kept fast: one tiny model directory per session, 64x64 (or 80x64) frames, 1-2 steps, windows of
8 frames, half-second clips cut from the shared samples, torch on one thread (on a busy 2-core
machine the default thread pool is an order of magnitude slower for these small tensors).
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vexpress_core import keypoints as kp
from vexpress_core import pipeline
from vexpress_core.audio import load_audio
from vexpress_core.checkpoint import load_models
from vexpress_core.frame_cache import DEFAULT_CHUNK as FRAME_CHUNK
from vexpress_core.detectors import extract_track_from_video, make_detector, reference_keypoints
from vexpress_core.keypoints import KeypointTrack, load_any_track, load_kps_pth, output_track
from vexpress_core.pipeline import (
    GenerationSettings,
    Speech,
    audio_token_source,
    decoded_chunks,
    denoise,
    encode_speech,
    generate,
    kps_feature_source,
    prepare_reference,
    write_video,
)
from vexpress_core.sampling import (
    Cancelled,
    blend_weights,
    blended_prediction,
    context_windows,
)
from vexpress_core.video import VideoWriter, probe_video

SAMPLE = "short_case_10"
RATE = 16000
SIZE = 64
FAST = dict(width=SIZE, height=SIZE, steps=1, context_frames=8, context_overlap=2, decode_chunk=8)


# ---------------------------------------------------------------------------------------------
# Fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    return load_models(tiny_model_dir)


@pytest.fixture(scope="module")
def detector():
    return make_detector("retinaface")


@pytest.fixture(scope="module")
def sample(samples_dir) -> Path:
    return samples_dir / SAMPLE


@pytest.fixture(scope="module")
def ref_image(sample) -> np.ndarray:
    with Image.open(sample / "ref.jpg") as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def waveform(sample) -> np.ndarray:
    return load_audio(sample / "aud.mp3")


def clip(waveform: np.ndarray, seconds: float, start: float = 0.5) -> np.ndarray:
    first = int(start * RATE)
    return waveform[first:first + int(round(seconds * RATE))].copy()


@pytest.fixture(scope="module")
def reference(models, ref_image):
    return prepare_reference(models, ref_image, SIZE, SIZE)


@pytest.fixture(scope="module")
def reference_kps(reference, detector) -> np.ndarray:
    return reference_keypoints(reference.image, detector)


@pytest.fixture(scope="module")
def published_track(sample) -> KeypointTrack:
    return load_kps_pth(sample / "kps.pth")


@pytest.fixture(scope="module")
def driving_track(sample, detector) -> KeypointTrack:
    return extract_track_from_video(sample / "gt.mp4", detector, size=(128, 128))


def fixed_track(reference_kps, num_frames, width=SIZE, height=SIZE, fps=30.0) -> KeypointTrack:
    return output_track(reference_kps, None, width, height, num_frames, "fix_face", fps=fps)


class BatchSpy:
    """Records the frame/batch count of every call of a module (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module, count):
        self.sizes: list[int] = []
        self._count = count
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.sizes.append(int(self._count(args)))

    def remove(self) -> None:
        self._handle.remove()


def unet_frames(args) -> int:  # sample [B, C, F, h, w]
    return args[0].shape[0] * args[0].shape[2]


def unet_batch(args) -> int:
    return args[0].shape[0]


@pytest.fixture
def unet_spy(models):
    spy = BatchSpy(models.denoising_unet, unet_batch)
    yield spy
    spy.remove()


def assert_video(path: Path, num_frames: int, fps: float, width: int, height: int) -> None:
    info = probe_video(path)
    assert info["frames"] == num_frames, info
    assert info["fps"] == fps, info
    assert (info["width"], info["height"]) == (width, height), info
    assert info["audio_streams"] == 1, info


# ---------------------------------------------------------------------------------------------
# mp4 output per retarget mode and driving input


def assert_retarget_mode(mode: str, points: np.ndarray, reference_kps: np.ndarray, driving: KeypointTrack) -> None:
    """What each published mode draws (SPEC step 8), on a driving track that moves and is longer
    than the video (so it is cut, not interpolated)."""
    offsets = points - reference_kps[None]  # [N, 3, 2]
    moves = np.abs(points - points[:1]).max() > 0.5
    if mode == "fix_face":
        assert np.array_equal(points, np.repeat(reference_kps[None], len(points), axis=0))
    elif mode == "offset_retarget":  # the reference face, translated per frame: one offset for all three points
        assert moves and np.allclose(offsets, offsets[:, :1], atol=1e-4)
    elif mode == "naive_retarget":  # the driving face scaled to the reference, its first nose on the reference nose
        assert moves and np.allclose(points[0, 2], reference_kps[2], atol=1e-3)
        assert not np.allclose(offsets, offsets[:, :1], atol=1e-2)  # not a mere translation of the reference
    elif mode == "no_retarget":  # the driving track as is, scaled to the output frame
        scale = np.array([SIZE / driving.frame_size[0], SIZE / driving.frame_size[1]], np.float32)
        assert moves and np.allclose(points, driving.points[: len(points)] * scale, atol=1e-4)
    elif mode == "speech_motion":  # our addition: the reference face moved by the speech, within its bounds
        eye_distance = np.linalg.norm(points[:, 1] - points[:, 0], axis=-1)
        reference_eyes = np.linalg.norm(reference_kps[1] - reference_kps[0])
        assert np.abs(offsets[:, 2]).max() <= 0.08 * SIZE
        assert np.all(np.abs(eye_distance / reference_eyes - 1) <= 0.05)
    else:
        raise AssertionError(f"no expectation written for retarget mode {mode!r}")


@pytest.mark.parametrize("mode", kp.RETARGET_MODES.names())
def test_each_retarget_mode_with_a_published_track_writes_the_video(
    mode, models, reference, reference_kps, published_track, waveform, tmp_path
):
    settings = GenerationSettings(**FAST)
    audio = clip(waveform, 0.5)
    speech = encode_speech(models, audio, settings.fps)
    expected = int(len(audio) / RATE * settings.fps)
    assert speech.num_frames == expected == 15
    context = kp.RetargetContext(audio, settings.fps, (SIZE, SIZE))
    track = output_track(reference_kps, published_track, SIZE, SIZE, speech.num_frames, mode, fps=settings.fps,
                         context=context)
    assert len(track) == expected and track.frame_size == (SIZE, SIZE)
    assert len(published_track) > expected
    assert_retarget_mode(mode, track.points, reference_kps, published_track)
    out = write_video(models, reference, speech, track, settings, tmp_path / f"{mode}.mp4")
    assert out == tmp_path / f"{mode}.mp4"
    assert_video(out, expected, 30.0, SIZE, SIZE)
    assert [p.name for p in tmp_path.iterdir()] == [f"{mode}.mp4"]  # no temporary leftovers


def test_driving_video_at_25_fps_non_square_writes_the_video(
    models, sample, ref_image, detector, driving_track, waveform, tmp_path
):
    width, height, fps = 80, 64, 25.0
    assert driving_track.frame_size == (128, 128)
    assert driving_track.fps == pytest.approx(probe_video(sample / "gt.mp4")["fps"])
    settings = GenerationSettings(**dict(FAST, width=width, height=height, fps=fps))
    reference = prepare_reference(models, ref_image, width, height)
    assert reference.image.shape == (height, width, 3)
    kps = reference_keypoints(reference.image, detector)
    audio = clip(waveform, 0.62)
    speech = encode_speech(models, audio, fps)
    expected = int(len(audio) / RATE * fps)
    assert speech.num_frames == expected == 15
    track = output_track(kps, driving_track, width, height, speech.num_frames, "naive_retarget", fps=fps)
    out = write_video(models, reference, speech, track, settings, tmp_path / "driven.mp4")
    assert_video(out, expected, fps, width, height)


def test_generate_returns_frames_fps_and_audio_cut_to_the_video(models, reference, reference_kps, waveform):
    settings = GenerationSettings(**dict(FAST, fps=24.0, deflicker=False))
    speech = encode_speech(models, clip(waveform, 0.4), settings.fps)
    result = generate(models, reference, speech, fixed_track(reference_kps, speech.num_frames, fps=24.0), settings)
    assert result.frames.shape == (speech.num_frames, SIZE, SIZE, 3) and result.frames.dtype == np.uint8
    assert result.fps == 24.0
    assert len(result.waveform) == round(speech.num_frames / 24.0 * RATE)
    assert tuple(result.latents.shape) == (1, 4, speech.num_frames, SIZE // 8, SIZE // 8)


# ---------------------------------------------------------------------------------------------
# Window schedule


SCHEDULES = [(24, 4), (8, 2), (16, 0), (32, 31), (32, 8), (12, 6), (5, 4), (1, 0), (7, 3)]


@pytest.mark.parametrize("size,overlap", SCHEDULES)
def test_context_windows_cover_every_length(size, overlap):
    stride = size - overlap
    for n in range(1, 201):
        windows = context_windows(n, size, overlap)
        assert windows[0][0] == 0 and windows[-1][-1] == n - 1, (n, windows)
        covered = set()
        for window in windows:
            assert len(window) == min(size, n), (n, window)
            assert window == list(range(window[0], window[0] + len(window))), (n, window)
            covered.update(window)
        assert covered == set(range(n)), n
        for before, after in zip(windows, windows[1:]):
            assert after[0] > before[0], (n, windows)
            assert before[-1] - after[0] + 1 >= overlap, (n, before, after)
        # No wasted windows: the fewest windows of this size and overlap that reach the end.
        assert len(windows) == (1 if n <= size else math.ceil((n - size) / stride) + 1), n
        if n >= size and (n - size) % stride == 0:
            published = [list(range(s, s + size)) for s in range(0, n - overlap, stride)]
            assert windows == published, n


@pytest.mark.parametrize("size,overlap", [(33, 4), (40, 0), (0, 0), (8, 8), (8, 9), (8, -1)])
def test_invalid_context_raises(size, overlap):
    with pytest.raises(ValueError, match="context_"):
        context_windows(100, size, overlap)
    with pytest.raises(ValueError, match="context_"):
        GenerationSettings(context_frames=size, context_overlap=overlap)


def test_context_of_32_frames_is_allowed():
    assert context_windows(40, 32, 0) == [list(range(32)), list(range(8, 40))]


# ---------------------------------------------------------------------------------------------
# Blending


@pytest.mark.parametrize("length", [1, 2, 5, 8, 24, 32])
def test_blend_weights(length):
    mean = blend_weights("mean", length)
    assert torch.equal(mean, torch.ones(length))
    ramp = blend_weights("ramp", length)
    assert ramp.shape == (length,) and (ramp > 0).all()
    assert torch.equal(ramp, ramp.flip(0))  # symmetric
    half = ramp[: (length + 1) // 2]
    assert (half[1:] >= half[:-1]).all()  # rises towards the centre
    assert ramp.max() == pytest.approx(1.0)
    if length > 2:
        assert ramp[0] < ramp[length // 2]


def test_unknown_blend_raises():
    with pytest.raises(ValueError, match="blend"):
        blend_weights("median", 8)


def test_unknown_blend_is_rejected_by_the_settings():
    with pytest.raises(ValueError, match="blend"):
        GenerationSettings(blend="median")


class WindowIndexDenoiser:
    """A fake denoiser whose prediction for window k is the constant k (and records its batches)."""

    def __init__(self, windows):
        self.index = {tuple(w): k for k, w in enumerate(windows)}
        self.batches = []

    def __call__(self, latents, timestep, windows):
        self.batches.append(len(windows))
        shape = latents.shape
        return torch.stack([torch.full((shape[1], len(w), *shape[3:]), float(self.index[tuple(w)])) for w in windows])


@pytest.mark.parametrize("blend", ["mean", "ramp"])
@pytest.mark.parametrize("num_frames", [6, 20, 23])
def test_blended_prediction_is_the_weighted_mean_of_covering_windows(blend, num_frames):
    windows = context_windows(num_frames, 8, 3)
    latents = torch.zeros(1, 2, num_frames, 2, 2)
    expected = torch.zeros(num_frames)
    total = torch.zeros(num_frames)
    for k, window in enumerate(windows):
        weights = blend_weights(blend, len(window))
        expected[window] += k * weights
        total[window] += weights
    expected /= total
    results = []
    for batch in (1, 2, len(windows)):
        fake = WindowIndexDenoiser(windows)
        done = []
        result = blended_prediction(fake, latents, 0, windows, batch, blend, done.append)
        assert done == list(range(1, len(windows) + 1))
        assert max(fake.batches) == min(batch, len(windows))
        assert torch.allclose(result[0, :, :, 0, 0], expected.expand(2, -1), atol=1e-6)
        results.append(result)
    assert all(torch.equal(results[0], other) for other in results[1:])


# ---------------------------------------------------------------------------------------------
# Window batching, progress, cancel (tiny models)


WINDOWED = dict(FAST, steps=2)


@pytest.fixture(scope="module")
def windowed_speech(models, waveform) -> Speech:
    speech = encode_speech(models, clip(waveform, 0.7), 30.0)
    assert speech.num_frames == 21
    assert len(context_windows(21, 8, 2)) == 4
    return speech


@pytest.fixture(scope="module")
def batched_runs(tiny_model_dir, ref_image, reference_kps, waveform):
    """denoise with window_batch 1 and 3: final latents, UNet batch sizes and progress per run.

    In float64: at 64x64 the tiny random UNet's innermost blocks are 1x1 pixel (2 values per
    GroupNorm group) and it is ill-conditioned - a 1e-6 relative change of the latents can move a
    CFG prediction by up to ~0.1 (at 128x128 by ~3e-6) - so fp32 rounding differences between
    batch sizes (~1e-7) grow to ~1e-1 over two steps. In float64 window batching is exact."""
    models = load_models(tiny_model_dir, dtype=torch.float64)
    reference = prepare_reference(models, ref_image, SIZE, SIZE)
    speech = encode_speech(models, clip(waveform, 0.7), 30.0)
    assert speech.num_frames == 21
    track = fixed_track(reference_kps, speech.num_frames)
    runs = {}
    for window_batch in (1, 3):
        spy = BatchSpy(models.denoising_unet, unet_batch)
        progress = []
        try:
            final = denoise(models, reference, speech, track,
                            GenerationSettings(**WINDOWED, window_batch=window_batch), callback=progress.append)
        finally:
            spy.remove()
        runs[window_batch] = (final, spy.sizes, progress)
    return runs


def test_window_batching_gives_the_same_latents(batched_runs):
    one, three = batched_runs[1][0], batched_runs[3][0]
    assert one.shape == three.shape == (1, 4, 21, SIZE // 8, SIZE // 8)
    assert (one - three).abs().max().item() <= 1e-4


def test_window_batching_changes_the_unet_batch(batched_runs):
    # CFG doubles the batch: 4 windows x 2 steps.
    assert batched_runs[1][1] == [2] * 8
    assert batched_runs[3][1] == [6, 2] * 2


def test_progress_reports_every_window_of_every_step_in_order(batched_runs):
    for window_batch in (1, 3):
        progress = batched_runs[window_batch][2]
        assert [(p.step, p.window) for p in progress] == [(s, w) for s in range(2) for w in range(1, 5)]
        assert {(p.num_steps, p.num_windows) for p in progress} == {(2, 4)}


@pytest.mark.parametrize("window_batch,k", [(1, 3), (2, 1), (1, 5)])
def test_cancel_stops_within_one_batch(models, reference, reference_kps, windowed_speech, unet_spy, window_batch, k):
    progress = []
    track = fixed_track(reference_kps, windowed_speech.num_frames)
    with pytest.raises(Cancelled):
        denoise(models, reference, windowed_speech, track, GenerationSettings(**WINDOWED, window_batch=window_batch),
                callback=progress.append, cancel=lambda: len(progress) >= k)
    order = [(s, w) for s in range(2) for w in range(1, 5)]
    assert [(p.step, p.window) for p in progress] == order[:k]
    batches_needed = len({(s, (w - 1) // window_batch) for s, w in order[:k]})
    assert len(unet_spy.sizes) <= batches_needed + 1
    assert len(unet_spy.sizes) == batches_needed  # the check runs after every window


def test_cancel_before_any_work_leaves_no_file(models, reference, reference_kps, windowed_speech, unet_spy,
                                              tmp_path):
    track = fixed_track(reference_kps, windowed_speech.num_frames)
    with pytest.raises(Cancelled):
        denoise(models, reference, windowed_speech, track, GenerationSettings(**WINDOWED), cancel=lambda: True)
    assert unet_spy.sizes == []
    calls = []
    with pytest.raises(Cancelled):
        write_video(models, reference, windowed_speech, track, GenerationSettings(**WINDOWED), tmp_path / "out.mp4",
                    cancel=lambda: len(calls) >= 2, callback=calls.append)
    assert len(unet_spy.sizes) == 2
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Streaming: no network sees more than one batch of windows (or one decode chunk)


def test_per_frame_work_is_bounded_by_the_window_budget(models, reference, reference_kps, waveform, tmp_path,
                                                        monkeypatch):
    window_batch, context, chunk = 2, 8, 4
    settings = GenerationSettings(**dict(FAST, window_batch=window_batch, decode_chunk=chunk))
    speech = encode_speech(models, clip(waveform, 2.1, start=0.2), settings.fps)
    num_frames = speech.num_frames
    assert num_frames == 63 and len(context_windows(num_frames, context, 2)) == 11
    track = fixed_track(reference_kps, num_frames)

    drawn, written = [], []
    real_draw, real_write = pipeline.draw_track, VideoWriter.write

    def draw(track, width, height, start=0, stop=None):
        images = real_draw(track, width, height, start, stop)
        drawn.append(len(images))
        return images

    def write(self, frames):
        written.append(1 if np.asarray(frames).ndim == 3 else len(frames))
        return real_write(self, frames)

    monkeypatch.setattr(pipeline, "draw_track", draw)
    monkeypatch.setattr(VideoWriter, "write", write)
    spies = {
        "unet": BatchSpy(models.denoising_unet, unet_frames),
        "guider": BatchSpy(models.v_kps_guider, lambda a: a[0].shape[0] * a[0].shape[2]),  # [B,3,F,H,W]
        "audio_projection": BatchSpy(models.audio_projection, lambda a: a[0].shape[0]),  # [N,10,768]
        "vae_decoder": BatchSpy(models.vae.decoder, lambda a: a[0].shape[0]),  # [n,4,h,w]
        "reference_net": BatchSpy(models.reference_net, lambda a: a[0].shape[0]),
        "audio_encoder": BatchSpy(models.audio_encoder, lambda a: a[0].shape[0]),
    }
    try:
        out = write_video(models, reference, speech, track, settings, tmp_path / "long.mp4")
    finally:
        for spy in spies.values():
            spy.remove()
    sizes = {name: spy.sizes for name, spy in spies.items()}

    window_budget = window_batch * context
    assert max(sizes["unet"]) == 2 * window_budget  # CFG: conditional + unconditional
    assert len(sizes["unet"]) == math.ceil(11 / window_batch)
    # Per-frame conditioning is computed once per frame per generation, one cache chunk at a time;
    # the still track's identical drawings run the guider once per chunk.
    assert sum(sizes["audio_projection"]) == sum(drawn) == num_frames
    assert max(sizes["audio_projection"]) == max(drawn) == FRAME_CHUNK
    assert sizes["guider"] == [1] * math.ceil(num_frames / FRAME_CHUNK)
    assert max(sizes["vae_decoder"]) == chunk and sum(sizes["vae_decoder"]) == num_frames
    assert written and max(written) <= chunk and sum(written) == num_frames
    for name in ("unet", "guider", "audio_projection", "vae_decoder"):
        assert max(sizes[name]) < num_frames, name
    # Reference features and the speech encoding are computed once per generation, not per window.
    assert sizes["reference_net"] == [] and sizes["audio_encoder"] == []
    assert_video(out, num_frames, 30.0, SIZE, SIZE)


def test_per_window_conditions_equal_the_whole_video_computation(models, reference_kps, waveform):
    from vexpress_core.audio import audio_windows
    from vexpress_core.keypoints import draw_track

    speech = encode_speech(models, clip(waveform, 0.5), 30.0)
    num_frames = speech.num_frames
    track = fixed_track(reference_kps, num_frames)
    with torch.no_grad():
        all_tokens = models.audio_projection(audio_windows(speech.hidden, num_frames, 2))
        drawings = torch.from_numpy(draw_track(track, SIZE, SIZE)).float() / 255.0
        all_kps = models.v_kps_guider(drawings.permute(3, 0, 1, 2)[None])
        tokens, kps = audio_token_source(models, speech, 2), kps_feature_source(models, track, SIZE, SIZE)
        for start, stop in [(0, 8), (6, 14), (7, 15)]:
            assert torch.allclose(tokens(start, stop), all_tokens[start:stop], atol=1e-5)
            assert torch.allclose(kps(start, stop), all_kps[:, :, start:stop], atol=1e-5)


def test_decoded_chunks_do_not_depend_on_the_chunk_size(models):
    latents = torch.randn(1, 4, 7, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(3))
    pieces = list(decoded_chunks(models, latents, chunk=3))
    assert [len(p) for p in pieces] == [3, 3, 1]
    whole = torch.cat(list(decoded_chunks(models, latents, chunk=100)))
    assert whole.shape == (7, 3, SIZE, SIZE) and whole.min() >= 0 and whole.max() <= 1
    assert torch.allclose(torch.cat(pieces), whole, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_denoise_is_deterministic_for_a_seed(models, reference, reference_kps, waveform, eta):
    speech = encode_speech(models, clip(waveform, 0.3), 30.0)
    track = fixed_track(reference_kps, speech.num_frames)

    def run(seed):
        return denoise(models, reference, speech, track, GenerationSettings(**dict(WINDOWED, seed=seed, eta=eta)))

    first, again, other = run(42), run(42), run(43)
    assert torch.equal(first, again)
    assert (first - other).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("field,value,words", [
    ("width", 60, "width"), ("height", 100, "height"), ("width", 0, "width"),
    ("context_frames", 33, "context_frames"), ("context_overlap", 24, "context_overlap"),
    ("steps", 0, "steps"), ("fps", 0, "fps"), ("scheduler", "plms", "scheduler"),
])
def test_bad_settings_raise_naming_the_setting(field, value, words):
    with pytest.raises(ValueError, match=words):
        GenerationSettings(**{field: value})


def test_silent_and_empty_audio_raise_before_encoding(models, monkeypatch):
    def no_encoding(*args, **kwargs):
        raise AssertionError("the encoder ran on bad audio")

    monkeypatch.setattr(pipeline, "encode_audio", no_encoding)
    with pytest.raises(ValueError, match="speech.wav.*silent"):
        encode_speech(models, np.zeros(RATE, np.float32), 30.0, name="speech.wav")
    with pytest.raises(ValueError, match="speech.wav.*empty"):
        encode_speech(models, np.zeros(0, np.float32), 30.0, name="speech.wav")
    with pytest.raises(ValueError, match="speech.wav.*shorter than one frame"):
        encode_speech(models, np.full(100, 0.5, np.float32), 30.0, name="speech.wav")


def test_bad_audio_files_raise_naming_the_file(tmp_path):
    import soundfile

    silent, empty, text, missing = (tmp_path / n for n in ("silent.wav", "empty.mp3", "text.mp3", "missing.wav"))
    soundfile.write(silent, np.zeros(RATE // 2, np.float32), RATE)
    empty.write_bytes(b"")
    text.write_text("not audio at all\n" * 20)
    for path, error, words in [(silent, ValueError, "silent"), (empty, ValueError, "empty"),
                               (text, ValueError, ""), (missing, FileNotFoundError, "")]:
        with pytest.raises(error) as raised:
            load_audio(path)
        assert str(path) in str(raised.value) and words in str(raised.value)


def test_reference_without_a_face_raises(detector):
    grey = np.full((SIZE, SIZE, 3), 128, np.uint8)
    with pytest.raises(ValueError, match="no face"):
        reference_keypoints(grey, detector)
    grey = np.full((512, 512, 3), 128, np.uint8)
    with pytest.raises(ValueError, match="no face"):
        reference_keypoints(grey, detector)


def _zip_without_pickle(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/other.txt", "x")


MALFORMED_TRACKS = {
    "garbage.pth": lambda p: p.write_bytes(b"this is not a zip archive"),
    "empty.pth": lambda p: p.write_bytes(b""),
    "empty_list.pth": lambda p: torch.save([], p),
    "tensors.pth": lambda p: torch.save([torch.zeros(3, 2)], p),  # needs torch's unpickler: refused
    "wrong_shape.pth": lambda p: torch.save([np.zeros((5, 2), np.float32)], p),
    "no_pickle.pth": _zip_without_pickle,
    "corrupt.npz": lambda p: p.write_bytes(b"PK\x03\x04 truncated zip"),
    "text.npz": lambda p: p.write_text("hello"),
    "missing_keys.npz": lambda p: np.savez(p, points=np.zeros((4, 3, 2), np.float32)),
    "nan.npz": lambda p: np.savez(p, version=1, points=np.full((4, 3, 2), np.nan, np.float32),
                                  frame_size=np.array([512, 512]), fps=30.0, valid=np.ones(4, bool)),
    "empty.json": lambda p: p.write_text('{"points": [], "frame_size": [512, 512], "fps": 30, "valid": []}'),
    "not_json.json": lambda p: p.write_text("{{{"),
    "track.txt": lambda p: p.write_text("1 2 3"),
    "missing.pth": lambda p: None,
    "missing.npz": lambda p: None,
}


@pytest.mark.parametrize("name", MALFORMED_TRACKS)
def test_malformed_track_file_raises_naming_the_file(tmp_path, name):
    path = tmp_path / name
    MALFORMED_TRACKS[name](path)
    with pytest.raises(ValueError) as raised:
        load_any_track(path)
    assert str(path) in str(raised.value)


def test_track_of_the_wrong_length_or_size_is_rejected_before_the_unet(models, reference, reference_kps, waveform,
                                                                      unet_spy):
    speech = encode_speech(models, clip(waveform, 0.3), 30.0)
    settings = GenerationSettings(**FAST)
    with pytest.raises(ValueError, match="frames"):
        denoise(models, reference, speech, fixed_track(reference_kps, speech.num_frames + 1), settings)
    with pytest.raises(ValueError, match="pixels"):
        denoise(models, reference, speech, fixed_track(reference_kps, speech.num_frames, width=128, height=128),
                settings)
    with pytest.raises(ValueError, match="initial latents"):
        denoise(models, reference, speech, fixed_track(reference_kps, speech.num_frames), settings,
                latents=torch.zeros(1, 4, speech.num_frames, 4, 4))
    assert unet_spy.sizes == []


def test_missing_model_files_raise_naming_what_is_missing(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="does not exist"):
        load_models(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as raised:
        load_models(empty)
    message = str(raised.value)
    assert str(empty) in message
    for name in ("reference_net", "denoising_unet", "v_kps_guider", "audio_projection", "config.json"):
        assert name in message, name
    # A complete directory but for one file.
    partial = tmp_path / "partial"
    for entry in tiny_model_dir.iterdir():
        if entry.name != "v-express":
            (partial / entry.name).parent.mkdir(parents=True, exist_ok=True)
            (partial / entry.name).symlink_to(entry)
    (partial / "v-express").mkdir()
    for weights in (tiny_model_dir / "v-express").iterdir():
        if not weights.name.startswith("audio_projection"):
            (partial / "v-express" / weights.name).symlink_to(weights)
    with pytest.raises(ValueError, match="audio_projection") as raised:
        load_models(partial)
    assert "denoising_unet" not in str(raised.value)


def test_unwritable_output_fails_before_denoising(models, reference, reference_kps, waveform, tmp_path, unet_spy):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    speech = encode_speech(models, clip(waveform, 0.3), 30.0)
    track = fixed_track(reference_kps, speech.num_frames)
    target = blocker / "out.mp4"
    with pytest.raises(OSError) as raised:
        write_video(models, reference, speech, track, GenerationSettings(**FAST), target)
    assert str(target) in str(raised.value)
    with pytest.raises(OSError, match="directory"):
        write_video(models, reference, speech, track, GenerationSettings(**FAST), tmp_path)
    assert unet_spy.sizes == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
