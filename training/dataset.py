"""Training samples from prepared clips, and the sampler that makes their order resumable.

A sample is a window of `num_frames` frames (every `frame_stride`-th) of one clip, a reference
frame of the same clip at least `reference_margin` frames from the window, their V-Kps images,
mouth-box weights at latent resolution and the per-frame audio windows exactly as inference
builds them. All randomness of a sample comes from (seed, epoch, clip index, draw), so a sample can
be drawn again identically after a restart. A clip holds many windows: when there are fewer clips
than one global batch, an epoch draws several windows from each clip (`draw` tells them apart).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vexpress_core.audio import audio_windows_from_sequence
from vexpress_core.keypoints import draw_kps_image

from .clipdata import AUDIO, CLIPS, ClipLabels, ClipMeta, DataError, read_frames, read_labels, read_manifest
from .config import TrainConfig

logger = logging.getLogger(__name__)

# Insightface landmark order: left eye, right eye, nose, mouth left, mouth right (left = image left).
# A horizontal flip swaps the two eyes and the two mouth corners.
FLIPPED_LANDMARK_ORDER = [1, 0, 2, 4, 3]
VKPS_POINTS = 3


@dataclass(frozen=True)
class WindowSpec:
    num_frames: int
    frame_stride: int
    reference_margin: int

    @property
    def span(self) -> int:
        """Frames from the first to the last frame of a window, inclusive."""
        return (self.num_frames - 1) * self.frame_stride + 1

    def fits(self, clip_length: int) -> bool:
        """Whether some window of the clip leaves room for a reference frame."""
        return clip_length >= self.span + self.reference_margin


def window_and_reference(clip_length: int, spec: WindowSpec, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Frame indices of a random window, and a reference frame >= reference_margin frames away from it."""
    starts = np.arange(clip_length - spec.span + 1)
    room_left = starts - spec.reference_margin >= 0
    room_right = starts + spec.span - 1 + spec.reference_margin <= clip_length - 1
    start = int(rng.choice(starts[room_left | room_right]))
    last = start + spec.span - 1
    candidates = np.concatenate([np.arange(0, start - spec.reference_margin + 1),
                                 np.arange(last + spec.reference_margin, clip_length)])
    return start + spec.frame_stride * np.arange(spec.num_frames), int(rng.choice(candidates))


def flipped_points(points: np.ndarray, width: int) -> np.ndarray:
    """Landmarks [..., 5, 2] (pixel centres) of the horizontally flipped frame, in insightface order."""
    mirrored = points.copy()
    mirrored[..., 0] = width - 1 - mirrored[..., 0]
    return mirrored[..., FLIPPED_LANDMARK_ORDER, :]


def flipped_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes [..., 4] (pixel edges) of the horizontally flipped frame."""
    return np.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], axis=-1)


def box_masks(boxes: np.ndarray, size: int, factor: int) -> np.ndarray:
    """Fraction of each latent cell covered by each box: [N, size/factor, size/factor] from boxes [N, 4]
    (pixel edges; a pixel is inside when its centre is)."""
    centres = np.arange(size) + 0.5
    inside_x = (centres >= boxes[:, None, 0]) & (centres <= boxes[:, None, 2])
    inside_y = (centres >= boxes[:, None, 1]) & (centres <= boxes[:, None, 3])
    pixels = (inside_y[:, :, None] & inside_x[:, None, :]).astype(np.float32)
    cells = size // factor
    return pixels.reshape(len(boxes), cells, factor, cells, factor).mean(axis=(2, 4))


def resized_frames(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1] == size:
        return frames
    interpolation = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(frame, (size, size), interpolation=interpolation) for frame in frames])


def frame_audio_windows(audio: np.ndarray, frames: np.ndarray, pad: int) -> torch.Tensor:
    """Per-frame audio windows [F, 2 (2 pad + 1), D] of a clip's two-rows-per-frame audio [2N, D], equal to
    inference's windows of those frames, reading only the rows they cover."""
    first, last = int(frames.min()), int(frames.max())
    low, high = 2 * first - 2 * pad, 2 * last + 2 * pad + 2
    rows = torch.from_numpy(np.array(audio[max(low, 0) : min(high, len(audio))], dtype=np.float32))
    sequence = torch.nn.functional.pad(rows, (0, 0, max(0, -low), max(0, high - len(audio))))
    return audio_windows_from_sequence(sequence, torch.from_numpy(frames - first), pad)


def to_signed_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [3, N, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


class TalkingFaceClips(Dataset):
    """Samples of prepared clips; index with (clip index, epoch, draw) from `EpochSampler`."""

    def __init__(self, data_dir: str | Path, config: TrainConfig, latent_factor: int):
        self.data_dir = Path(data_dir)
        self.data_resolution, clips = read_manifest(self.data_dir)
        if config.resolution % latent_factor:
            raise DataError(f"resolution {config.resolution} is not a multiple of the VAE's downsampling factor {latent_factor}")
        self.resolution = config.resolution
        self.latent_factor = latent_factor
        self.spec = WindowSpec(config.num_frames, config.frame_stride, config.reference_margin)
        self.flip_rate = config.flip_rate
        self.audio_pad = config.audio_pad
        self.seed = config.seed
        self.clips = [clip for clip in clips if self.spec.fits(clip.num_frames)]
        too_short = [clip.id for clip in clips if not self.spec.fits(clip.num_frames)]
        if too_short:
            logger.warning("%d clips are shorter than %d frames (window %d + reference margin %d) and are not used: %s",
                           len(too_short), self.spec.span + self.spec.reference_margin, self.spec.span,
                           self.spec.reference_margin, ", ".join(too_short))
        if not self.clips:
            raise DataError(f"no clip in {self.data_dir} has the {self.spec.span + self.spec.reference_margin} frames "
                            f"a sample needs (num_frames, frame_stride, reference_margin); lower them or add longer clips")

    def __len__(self) -> int:
        return len(self.clips)

    def clip_dir(self, clip: ClipMeta) -> Path:
        return self.data_dir / CLIPS / clip.id

    def __getitem__(self, key: tuple[int, int] | tuple[int, int, int]) -> dict[str, torch.Tensor]:
        index, epoch, *draw = key
        clip = self.clips[index]
        clip_dir = self.clip_dir(clip)
        # The first draw of a clip in an epoch keeps the (seed, epoch, clip) stream of earlier versions.
        rng = np.random.default_rng([self.seed, epoch, index, *[d for d in draw if d]])
        frame_ids, reference_id = window_and_reference(clip.num_frames, self.spec, rng)
        flip = rng.random() < self.flip_rate
        labels = read_labels(clip_dir)
        if len(labels.landmarks) != clip.num_frames:
            raise DataError(f"{clip_dir}: labels hold {len(labels.landmarks)} frames, the manifest says {clip.num_frames}")
        images = resized_frames(read_frames(clip_dir, labels.frame_offsets, np.append(frame_ids, reference_id)), self.resolution)
        landmarks, mouths = self.scaled_labels(labels, frame_ids)
        if flip:
            images = np.ascontiguousarray(images[:, :, ::-1])
            landmarks = flipped_points(landmarks, self.resolution)
            mouths = flipped_boxes(mouths, self.resolution)
        kps = np.stack([draw_kps_image(self.resolution, self.resolution, points[:VKPS_POINTS]) for points in landmarks])
        audio = np.load(clip_dir / AUDIO, mmap_mode="r")
        return {
            "frames": to_signed_unit(images[:-1]),
            "reference": to_signed_unit(images[-1:])[:, 0],
            "kps_images": torch.from_numpy(kps).permute(3, 0, 1, 2).float() / 255.0,
            "audio": frame_audio_windows(audio, frame_ids, self.audio_pad),
            "lip_masks": torch.from_numpy(box_masks(mouths, self.resolution, self.latent_factor))[None],
            "frame_ids": torch.from_numpy(frame_ids),
            "reference_id": torch.tensor(reference_id),
        }

    def scaled_labels(self, labels: ClipLabels, frame_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks and mouth boxes of the window's frames in pixels of the training resolution."""
        scale = self.resolution / self.data_resolution
        landmarks = (labels.landmarks[frame_ids] + 0.5) * scale - 0.5
        return landmarks, labels.mouth_boxes[frame_ids] * scale


class EpochSampler(Sampler):
    """Shuffled (clip index, epoch, draw) keys for one process: every epoch fresh permutations from
    (seed, epoch), cut to whole global batches and dealt out batch by batch to the processes.
    With fewer clips than one global batch, permutations are appended until the batch is full, so
    every clip gives several windows (draw 0, 1, ...) and any non-empty dataset trains.
    `set_epoch(epoch, skip_batches)` starts an epoch part-way, which is how a run resumes."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.skip_batches = 0
        if num_samples < 1:
            raise DataError("no usable clips to draw samples from")
        global_batch = batch_size * num_replicas
        if num_samples < global_batch:
            logger.warning("only %d usable clip(s) for a global batch of %d (%d per process x %d processes): every "
                           "epoch draws several windows from each clip; with this little data the model over-fits it",
                           num_samples, global_batch, batch_size, num_replicas)

    def batches_per_epoch(self) -> int:
        """Batches each process draws per epoch: the clips once each, at least one global batch."""
        global_batch = self.batch_size * self.num_replicas
        return max(self.num_samples, global_batch) // global_batch

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        needed = self.batches_per_epoch() * self.batch_size * self.num_replicas
        order = []
        while len(order) < needed:
            draw = len(order) // self.num_samples
            order += [(index, draw) for index in torch.randperm(self.num_samples, generator=generator).tolist()]
        for batch in range(self.skip_batches, self.batches_per_epoch()):
            first = (batch * self.num_replicas + self.rank) * self.batch_size
            for index, draw in order[first : first + self.batch_size]:
                yield index, self.epoch, draw

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.skip_batches) * self.batch_size
