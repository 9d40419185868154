import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from scipy import ndimage

from vexpress_core.audio import synthetic_speech
from vexpress_core.video import (
    MedianDeflicker,
    VideoWriter,
    check_output_path,
    median_deflicker,
    probe_video,
    to_uint8,
    video_rate,
    write_mp4,
)

HEIGHT, WIDTH = 48, 64


def gradient_frames(count: int, height: int = HEIGHT, width: int = WIDTH) -> list[np.ndarray]:
    y, x = np.mgrid[0:height, 0:width]
    return [
        np.stack([(x * 4 + i) % 256, (y * 5) % 256, np.full_like(x, 40 * i % 256)], -1).astype(np.uint8)
        for i in range(count)
    ]


def published_median_filter(video: torch.Tensor) -> torch.Tensor:
    """pipelines/utils.py `median_filter_3d(video [3, F, H, W], kernel_size=3)`, transcribed."""
    _, length, height, width = video.shape
    padded = torch.nn.functional.pad(video, (1, 1, 1, 1, 1, 1), mode="reflect")
    frames = []
    for i in range(length):
        segment = padded[:, i : i + 3].unfold(2, 3, 1).unfold(3, 3, 1)
        frames.append(segment.permute(0, 2, 3, 1, 4, 5).reshape(3, height, width, -1).median(dim=-1)[0])
    return torch.stack(frames, dim=1)


def directory_listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# --- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fps, audio_rate", [(30, 16000), (25, 24000), (12.5, 16000), (29.97, 16000)])
def test_write_mp4_exact_frames_fps_size_and_audio(tmp_path, fps, audio_rate):
    frames = gradient_frames(15)
    chunks = [np.stack(frames[:6]), *frames[6:]]  # a chunk, then single frames
    path = write_mp4(iter(chunks), tmp_path / "out.mp4", fps, audio=(synthetic_speech(3.0, audio_rate), audio_rate))
    assert path == tmp_path / "out.mp4"
    assert probe_video(path) == {"frames": 15, "fps": fps, "width": WIDTH, "height": HEIGHT, "audio_streams": 1}
    with av.open(str(path)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert sound.codec_context.name == "aac" and video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        # The 3 s soundtrack is cut to the video's 15 frames (up to one AAC frame of slack).
        audio_seconds = float(sound.duration * sound.time_base)
        assert 15 / fps - 0.01 <= audio_seconds <= 15 / fps + 1024 / audio_rate
    assert directory_listing(tmp_path) == ["out.mp4"]


def test_write_mp4_keeps_rgb_order_and_no_audio(tmp_path):
    red = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    red[..., 0] = 255
    path = write_mp4([red, red], tmp_path / "red.mp4", 30)
    assert probe_video(path)["audio_streams"] == 0
    with av.open(str(path)) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(decoded - red).max() <= 8


def test_video_rate_is_exact():
    assert video_rate(12.5).denominator == 2 and video_rate(30) == 30
    assert video_rate(29.97) == video_rate(2997 / 100) and video_rate(30000 / 1001).denominator == 1001
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fps"):
            video_rate(bad)


def test_failure_mid_write_leaves_no_file_and_keeps_the_old_target(tmp_path):
    target = tmp_path / "out.mp4"

    def failing_frames():
        yield from gradient_frames(3)
        raise RuntimeError("generation interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_mp4(failing_frames(), target, 25, audio=(synthetic_speech(1.0), 16000))
    assert directory_listing(tmp_path) == []

    target.write_bytes(b"previous video")
    with pytest.raises(RuntimeError, match="interrupted"):
        write_mp4(failing_frames(), target, 25)
    assert directory_listing(tmp_path) == ["out.mp4"] and target.read_bytes() == b"previous video"


@pytest.mark.parametrize(
    "frames, error, message",
    [
        ([np.zeros((HEIGHT, WIDTH + 1, 3), np.uint8)], ValueError, "even width and height"),
        (
            [np.zeros((HEIGHT, WIDTH, 3), np.uint8), np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8)],
            ValueError,
            "earlier frames",
        ),
        ([np.zeros((HEIGHT, WIDTH, 3), np.float32)], TypeError, "uint8"),
        ([], ValueError, "no frames"),
    ],
)
def test_bad_frames_raise_and_leave_nothing(tmp_path, frames, error, message):
    with pytest.raises(error, match=message):
        write_mp4(frames, tmp_path / "out.mp4", 30)
    assert directory_listing(tmp_path) == []


def test_unwritable_output_fails_before_any_frame_is_requested(tmp_path):
    requested = []

    def frames():
        requested.append(True)
        yield from gradient_frames(2)

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot write the video"):
        write_mp4(frames(), blocker / "out.mp4", 30)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_output_path(tmp_path)
    if os.geteuid() != 0:  # root writes into read-only directories anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OSError, match="cannot write the video"):
            write_mp4(frames(), locked / "out.mp4", 30)
    assert not requested
    assert check_output_path(tmp_path / "new" / "dir" / "out.mp4").parent.is_dir()


def test_video_writer_context_writes_chunks_and_refuses_reuse(tmp_path):
    with VideoWriter(tmp_path / "out.mp4", 25) as writer:
        writer.write(np.stack(gradient_frames(4)))
        writer.write(gradient_frames(1)[0])
    assert probe_video(tmp_path / "out.mp4")["frames"] == 5
    with pytest.raises(ValueError, match="already closed"):
        writer.write(gradient_frames(1)[0])

    aborted = VideoWriter(tmp_path / "aborted.mp4", 25)
    with pytest.raises(ValueError, match="even"):
        aborted.write(np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="already closed"):
        aborted.write(gradient_frames(1)[0])
    assert directory_listing(tmp_path) == ["out.mp4"]


# --- deflicker -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_median_deflicker_equals_scipy_mirror_median(dtype):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 10, 12, 3)).astype(dtype)
    result = median_deflicker(frames)
    assert result.dtype == frames.dtype
    np.testing.assert_array_equal(result, ndimage.median_filter(frames, size=(3, 3, 3, 1), mode="mirror"))


def test_median_deflicker_equals_published_filter():
    video = torch.rand(3, 6, 9, 11, generator=torch.Generator().manual_seed(0))
    expected = published_median_filter(video).permute(1, 2, 3, 0).numpy()
    np.testing.assert_array_equal(median_deflicker(video.permute(1, 2, 3, 0).numpy()), expected)


@pytest.mark.parametrize("length", [1, 2, 3, 8])
def test_streaming_deflicker_equals_batch(length):
    frames = np.random.default_rng(length).integers(0, 256, (length, 6, 8, 3)).astype(np.uint8)
    expected = ndimage.median_filter(frames, size=(3, 3, 3, 1), mode="mirror")
    np.testing.assert_array_equal(median_deflicker(frames), expected)
    for chunk in (1, 2, 3):
        deflicker = MedianDeflicker()
        pieces = [frames[i : i + chunk] for i in range(0, length, chunk)]
        streamed = list(deflicker.stream(pieces))
        np.testing.assert_array_equal(np.concatenate(streamed), expected)
        assert sum(len(piece) for piece in streamed) == length
    single_frames = np.concatenate(list(MedianDeflicker().stream(iter(frames))))
    np.testing.assert_array_equal(single_frames, expected)


def test_deflicker_after_uint8_conversion_equals_published_order():
    video = np.random.default_rng(1).random((5, 8, 10, 3), dtype=np.float32)
    np.testing.assert_array_equal(median_deflicker(to_uint8(video)), to_uint8(median_deflicker(video)))


def test_to_uint8_truncates_like_the_published_script():
    values = np.array([0.0, 0.5, 0.999, 1.0, 1.5, -0.2], np.float32)
    np.testing.assert_array_equal(to_uint8(values), [0, 127, 254, 255, 255, 0])
    np.testing.assert_array_equal(to_uint8(torch.from_numpy(values)), to_uint8(values))
