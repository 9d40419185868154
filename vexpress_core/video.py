"""Video output for V-Express: the published 3x3x3 median deflicker (SPEC step 11), streamed, and
an H.264/AAC mp4 writer that never leaves a half-written file behind and writes the same bytes for
the same frames."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

if TYPE_CHECKING:  # PyAV is imported where it is used: 15 MiB of memory that generation does not need
    import av

MAX_FPS_DENOMINATOR = 1001  # keeps NTSC rates (30000/1001) exact
# x264's output depends on its thread count; a fixed count (not x264's default of 1.5 per core)
# gives the same bytes whatever the machine's core count or the process's CPU affinity.
X264_THREADS = 4


def to_uint8(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Frames in [0, 1] as uint8, truncating `x * 255` as the published script does."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().float().cpu().numpy()
    return (np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Median deflicker


def median_deflicker(frames: np.ndarray) -> np.ndarray:
    """The published post-filter: per channel, the median of each pixel's 3x3x3 neighbourhood in
    (time, height, width), edges mirrored without repeating the edge sample (torch `reflect`,
    scipy `mirror`). `frames` is [F, H, W, C], uint8 or float; same shape and dtype back.

    Filtering `to_uint8(frames)` gives exactly the published output (median, then x 255 and
    truncation: a median commutes with that monotone map) and is about 6x faster than float."""
    if len(frames) == 0:
        raise ValueError("median_deflicker needs at least one frame")
    deflicker = MedianDeflicker()
    return np.concatenate([deflicker.push(frames), deflicker.flush()])


class MedianDeflicker:
    """Streaming `median_deflicker`: `push` chunks [n, H, W, C] (or single frames [H, W, C]) and
    get back, in order, every frame whose next frame has arrived; `flush` returns the last one.
    Only two input frames are held between calls."""

    def __init__(self) -> None:
        self._behind: np.ndarray | None = None  # spatially padded frame before the next output
        self._pending: np.ndarray | None = None  # spatially padded frames not yet output

    def push(self, frames: np.ndarray) -> np.ndarray:
        """Deflickered frames that are final now: [m, H, W, C], m possibly 0."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4:
            raise ValueError(f"frames must be [n, H, W, C] or [H, W, C], got shape {frames.shape}")
        padded = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        pending = padded if self._pending is None else np.concatenate([self._pending, padded])
        ready = len(pending) - 1
        if ready < 1:
            self._pending = pending
            return frames[:0]
        # Mirrored in time: before the first frame comes the second.
        behind = pending[1:2] if self._behind is None else self._behind[None]
        output = _median_filtered(np.concatenate([behind, pending]), ready)
        self._behind, self._pending = pending[ready - 1], pending[ready:]
        return output

    def flush(self) -> np.ndarray:
        """The last frame, deflickered (after it, time mirrors back to the one before); resets."""
        if self._pending is None or len(self._pending) == 0:
            raise ValueError("no frames to flush")
        last = self._pending
        behind = last if self._behind is None else self._behind[None]
        output = _median_filtered(np.concatenate([behind, last, behind]), 1)
        self._behind = self._pending = None
        return output

    def stream(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Deflickered chunks for a stream of frame chunks (empty chunks are skipped)."""
        for chunk in chunks:
            output = self.push(chunk)
            if len(output):
                yield output
        if self._pending is not None and len(self._pending):
            yield self.flush()


def _median_filtered(padded: np.ndarray, count: int) -> np.ndarray:
    """Frames 1..count of a time- and space-padded stack [count + 2, H + 2, W + 2, C], each pixel
    replaced by the median of its 27 neighbours."""
    height, width = padded.shape[1] - 2, padded.shape[2] - 2
    return np.stack(
        [
            _elementwise_median(
                [padded[i + t, y : y + height, x : x + width] for t in range(3) for y in range(3) for x in range(3)]
            )
            for i in range(count)
        ]
    )


def _elementwise_median(values: list[np.ndarray]) -> np.ndarray:
    """Exact elementwise median of an odd number of same-shaped arrays by forgetful selection:
    keep n // 2 + 2 candidates, drop each element's smallest and largest, take in the next array.
    About 20x faster than sorting 27 values per pixel."""
    keep = len(values) // 2 + 2
    work = [value.copy() for value in values[:keep]]
    incoming = iter(values[keep:])
    while len(work) > 1:
        _move_extremes_to_ends(work)
        work = work[1:-1]
        following = next(incoming, None)
        if following is not None:
            work.append(following.copy())
    return work[0]


def _move_extremes_to_ends(work: list[np.ndarray]) -> None:
    """Compare-exchange in place so work[0] holds the elementwise minimum and work[-1] the maximum."""
    for i in range(1, len(work)):
        low = np.minimum(work[0], work[i])
        np.maximum(work[0], work[i], out=work[i])
        work[0] = low
    for i in range(1, len(work) - 1):
        high = np.maximum(work[-1], work[i])
        np.minimum(work[-1], work[i], out=work[i])
        work[-1] = high


# ---------------------------------------------------------------------------------------------
# mp4 writing


def check_output_path(path: str | Path) -> Path:
    """`path` as a Path once its directory exists (missing parents are created) and accepts a
    new file; raises OSError saying why otherwise. Call it before generating anything."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"output path {path} is a directory; give a file name such as {path / 'out.mp4'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise OSError(f"cannot write the video to {path}: {exc.strerror or exc}") from exc
    return path


def video_rate(fps: float | Fraction) -> Fraction:
    """`fps` as the exact rational frame rate written to the file (29.97 -> 2997/100,
    30000/1001 stays, 12.5 -> 25/2)."""
    if isinstance(fps, Fraction):
        rate = fps
    elif np.isfinite(float(fps)):
        rate = Fraction(float(fps))
    else:
        rate = Fraction(0)
    if not 0 < rate < 1000:
        raise ValueError(f"fps must be a number in (0, 1000), got {fps!r}")
    return rate.limit_denominator(MAX_FPS_DENOMINATOR)


def cpu_has_avx512() -> bool:
    """Whether this CPU (and OS) runs the AVX-512 instructions x264 would use (F, CD, BW, DQ, VL),
    as numpy's own CPU dispatch detected them."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return bool(__cpu_features__.get("AVX512_SKX"))


def x264_options(crf: int, preset: str) -> dict[str, str]:
    """libx264 options under which the same frames give the same bytes on the same machine."""
    options = {"crf": str(int(crf)), "preset": preset, "threads": str(X264_THREADS)}
    if cpu_has_avx512():
        # With its AVX-512 code, x264 (core 165) turned the same frames into a different file on
        # almost every run whenever the width was not a multiple of 256 pixels (B-frames with
        # macroblock-tree rate control, its defaults). Its AVX2 code repeats itself, and gives the
        # same bytes as the AVX-512 code at the widths where that one repeats.
        options["x264-params"] = "asm=AVX2"
    return options


class VideoWriter:
    """Streams uint8 RGB frames into an H.264 (libx264, yuv420p) mp4 at exactly `fps`, with an
    optional mono soundtrack muxed as AAC and cut to the video's duration.

    The file is written under a temporary name in the target directory and moved onto `path`
    only by a successful `close()`; `abort()` (or an exception inside `with`) deletes it and
    leaves `path` untouched. Width and height must be even (yuv420p); odd sizes raise.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | Fraction,
        audio: tuple[np.ndarray, int] | None = None,
        crf: int = 18,
        preset: str = "medium",
    ) -> None:
        self.path = check_output_path(path)
        self.rate = video_rate(fps)
        self._audio = _checked_audio(audio)
        self._options = x264_options(crf, preset)
        self._temp: Path | None = None
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._sound: av.AudioStream | None = None
        self._frames = 0
        self._samples_sent = 0
        self._finished = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._finished:
            self.close()

    def write(self, frames: np.ndarray) -> None:
        """Append one frame [H, W, 3] or a chunk [n, H, W, 3] of uint8 RGB."""
        self._check_not_finished()
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise TypeError(
                f"frames must be uint8 RGB [H, W, 3] or [n, H, W, 3], got {frames.dtype} {frames.shape} "
                "(convert [0, 1] floats with to_uint8)"
            )
        try:
            for frame in frames:
                self._write_frame(frame)
        except BaseException:
            self.abort()
            raise

    def close(self) -> Path:
        """Finish the file and move it onto `path`; returns `path`."""
        self._check_not_finished()
        if self._container is None:
            self._finished = True
            raise ValueError(f"no frames were written to {self.path}")
        try:
            self._mux(self._video.encode(None))
            if self._sound is not None:
                self._mux(self._sound.encode(None))
            self._container.close()
            os.replace(self._temp, self.path)
        except BaseException:
            self.abort()
            raise
        self._container = self._temp = None
        self._finished = True
        return self.path

    def abort(self) -> None:
        """Drop the partial file; `path` is left as it was."""
        import av

        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError:
                pass  # the file is being deleted; a failing trailer does not matter
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
        self._container = self._temp = None
        self._finished = True

    def _check_not_finished(self) -> None:
        if self._finished:
            raise ValueError(f"the writer for {self.path} is already closed or aborted")

    def _write_frame(self, frame: np.ndarray) -> None:
        import av

        if self._container is None:
            self._open(height=frame.shape[0], width=frame.shape[1])
        elif frame.shape[:2] != (self._video.height, self._video.width):
            raise ValueError(
                f"frame {self._frames} is {frame.shape[1]}x{frame.shape[0]}, "
                f"earlier frames were {self._video.width}x{self._video.height}"
            )
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        picture.pts = self._frames
        self._mux(self._video.encode(picture))
        self._frames += 1
        if self._sound is not None:
            self._send_audio_until(self._frames / self.rate)

    def _open(self, height: int, width: int) -> None:
        import av

        if height % 2 or width % 2:
            raise ValueError(
                f"H.264 yuv420p needs an even width and height, got {width}x{height}; crop or pad the frames"
            )
        self._temp = new_part_file(self.path)
        self._container = av.open(str(self._temp), mode="w", format="mp4")
        self._video = self._container.add_stream("libx264", rate=self.rate, options=self._options)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        if self._audio is not None:
            self._sound = self._container.add_stream("aac", rate=self._audio[1], layout="mono")

    def _send_audio_until(self, seconds: Fraction) -> None:
        """Encode the soundtrack up to `seconds`, so audio interleaves with video and ends with it."""
        import av

        wave, rate = self._audio
        stop = min(len(wave), int(seconds * rate))
        if stop <= self._samples_sent:
            return
        chunk = av.AudioFrame.from_ndarray(wave[None, self._samples_sent : stop], format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts, chunk.time_base = rate, self._samples_sent, Fraction(1, rate)
        self._samples_sent = stop
        self._mux(self._sound.encode(chunk))

    def _mux(self, packets: list[av.Packet]) -> None:
        self._container.mux(packets)


def new_part_file(path: Path) -> Path:
    """A new empty file beside `path` for writing it under a temporary name, created with the
    permissions of any new file (0666 less the umask; `tempfile.mkstemp` would give 0600)."""
    while True:
        candidate = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.part.mp4")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate


def _checked_audio(audio: tuple[np.ndarray, int] | None) -> tuple[np.ndarray, int] | None:
    """The soundtrack as (contiguous float32 mono, int rate), validated."""
    if audio is None:
        return None
    wave, rate = audio
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0 or int(rate) <= 0:
        raise ValueError(f"audio must be (mono waveform [T], sample_rate > 0), got shape {wave.shape} at {rate}")
    return wave, int(rate)


def write_mp4(
    frames: Iterable[np.ndarray],
    path: str | Path,
    fps: float | Fraction,
    audio: tuple[np.ndarray, int] | None = None,
    crf: int = 18,
) -> Path:
    """Write uint8 RGB frames (an iterable of [H, W, 3] frames or [n, H, W, 3] chunks) to an mp4;
    see `VideoWriter`. Returns the path written."""
    with VideoWriter(path, fps, audio=audio, crf=crf) as writer:
        for chunk in frames:
            writer.write(chunk)
    return writer.path


def probe_video(path: str | Path) -> dict:
    """`frames`, `fps` (float), `width`, `height` of the first video stream and the number of
    `audio_streams` of a video file."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        return {
            "frames": frames,
            "fps": float(stream.average_rate or stream.guessed_rate),
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "audio_streams": len(container.streams.audio),
        }


def read_video_frames(path: str | Path, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video, optionally resized to size = (width, height)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="rgb24")
            if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
                image = cv2.resize(image, tuple(size))
            yield image


def video_fps_and_length(path: str | Path) -> tuple[float, int | None]:
    """(frames per second, frame count or None when the container does not say) of a video."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise ValueError(f"{path}: the video stream has no frame rate")
        return float(rate), (stream.frames or None)
