"""Streaming paste-back: full-resolution frames are made and handed on chunk by chunk, so memory
does not grow with the video's length."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..sampling import Cancelled
from .blend import DEFAULT_FEATHER, HEAD, PASTE_REGIONS, ColourMatch, paste_into
from .plan import CropPlan
from .resample import crop_frame, even_size

DEFAULT_CHUNK = 8
CHUNK_BYTES = 256 * 2**20  # fewer frames per chunk when frames are huge (8K: 2)


@dataclass(frozen=True)
class PasteSettings:
    """`region`: which part of the generated crop is pasted (a PASTE_REGIONS name);
    `feather`: width of the mask's soft edge as a fraction of the crop box's shorter side;
    `colour_match`: match the generated crop's colours to the original around the seam;
    `colour_memory`: how much of the previous frames' colour statistics each frame keeps."""

    feather: float = DEFAULT_FEATHER
    colour_match: bool = True
    colour_memory: float = 0.8
    chunk: int = DEFAULT_CHUNK
    region: str = HEAD

    def __post_init__(self) -> None:
        if self.region not in PASTE_REGIONS:
            raise ValueError(f"paste region must be one of {', '.join(PASTE_REGIONS.names())}, got {self.region!r}")
        if not 0.0 <= self.feather <= 0.5:
            raise ValueError(f"feather must be in [0, 0.5] (a fraction of the crop size), got {self.feather}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {self.chunk}")


def pingpong_indices(num_out: int, num_frames: int, frames_fps: float, out_fps: float) -> np.ndarray:
    """Which source frame each of `num_out` output frames shows: the source played at its own
    speed, back and forth when the output is longer (nearest frame)."""
    positions = np.arange(num_out) * (frames_fps / out_fps)
    if num_frames == 1:
        return np.zeros(num_out, np.int64)
    period = 2 * (num_frames - 1)
    folded = np.mod(positions, period)
    folded = np.where(folded > num_frames - 1, period - folded, folded)
    return np.clip(np.rint(folded), 0, num_frames - 1).astype(np.int64)


def _generated_frames(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for chunk in chunks:
        chunk = np.asarray(chunk)
        yield from (chunk if chunk.ndim == 4 else chunk[None])


def pasted_chunks(generated: Iterable[np.ndarray], originals: Iterable[np.ndarray], plan: CropPlan,
                  plan_indices: Sequence[int] | None = None, settings: PasteSettings = PasteSettings(),
                  cancel: Callable[[], bool] | None = None,
                  progress: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Full-resolution uint8 chunks [n, h, w, 3] (size cut to even by `even_size`), at most
    `settings.chunk` frames each (fewer when that would pass CHUNK_BYTES), for generated crops
    (chunks [n,H,W,3] or frames [H,W,3]) and the original frames they go into (one per output
    frame; the same array may repeat, as for a photo). Output frame i uses plan entry
    `plan_indices[i]` (default i). Stops with the shorter input."""
    width, height = even_size(*plan.frame_size)
    chunk = max(1, min(settings.chunk, CHUNK_BYTES // (width * height * 3)))
    colour = ColourMatch(settings.colour_memory) if settings.colour_match else None
    buffer, filled, shot = None, 0, None
    for index, (crop, original) in enumerate(zip(_generated_frames(generated), originals)):
        if cancel is not None and cancel():
            raise Cancelled(f"cancelled while pasting back frame {index + 1}")
        entry = index if plan_indices is None else int(plan_indices[index])
        if not 0 <= entry < len(plan):
            raise ValueError(f"output frame {index} asks for crop plan entry {entry}; the plan has {len(plan)}")
        if (original.shape[1], original.shape[0]) != plan.frame_size:
            raise ValueError(f"original frame {index} is {original.shape[1]}x{original.shape[0]}, the crop plan "
                             f"is for {plan.frame_size[0]}x{plan.frame_size[1]} frames")
        if colour is not None and plan.shots[entry] != shot:
            colour.reset()
        shot = plan.shots[entry]
        if buffer is None:
            buffer, filled = np.empty((chunk, height, width, 3), np.uint8), 0
        buffer[filled] = original[:height, :width]
        paste_into(buffer[filled], crop, plan, entry, settings.feather, colour, settings.region)
        filled += 1
        if progress is not None:
            progress(index + 1)
        if filled == chunk:
            yield buffer
            buffer = None
    if buffer is not None and filled:
        yield buffer[:filled]


def cropped_frames(frames: Iterable[np.ndarray], plan: CropPlan,
                   plan_indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """The crop (uint8 [H,W,3] at the plan's crop size) of each frame (frame i uses entry plan_indices[i])."""
    for index, frame in enumerate(frames):
        yield crop_frame(frame, plan, index if plan_indices is None else int(plan_indices[index]))


def video_frames_at(path: str | Path, indices: Sequence[int], block: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
    """RGB uint8 frames `indices[0], indices[1], ...` of a video, in that order, holding at most
    `block` decoded frames: each block of requests is served by decoding forward, restarting the
    decoder when a block needs an earlier frame (as when a video plays backwards)."""
    import av

    container, decoded, position = None, None, 0
    try:
        for start in range(0, len(indices), block):
            wanted = [int(i) for i in indices[start:start + block]]
            if container is None or min(wanted) < position:
                if container is not None:
                    container.close()
                container = av.open(str(path))
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                decoded, position = container.decode(stream), 0
            held = {}
            needed = set(wanted)
            while position <= max(wanted):
                frame = next(decoded, None)
                if frame is None:
                    raise ValueError(f"{path}: frame {max(wanted)} was asked for but the video has {position} frames")
                if position in needed:
                    held[position] = frame.to_ndarray(format="rgb24")
                position += 1
            for index in wanted:
                yield held[index]
            del held
    finally:
        if container is not None:
            container.close()
