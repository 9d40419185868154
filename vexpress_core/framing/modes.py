"""The two full-frame modes.

Photo animation: the photo is the canvas of every frame; only the paste region (by default the
head) comes from the generated video. Video dubbing: the video is both the driving input (its own
faces give the V-Kps track, in crop pixels) and the canvas; output frame i goes into the video frame
it shows, the video playing back and forth when the speech is longer and stopping with the speech
when shorter; by default only the lower face is pasted, so the video keeps its own eyes.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import pipeline
from ..audio import SAMPLE_RATE
from ..detectors import FaceDetector
from ..keypoints import KeypointTrack
from ..offload import DECODING_NETWORKS
from ..orchestration import FramedReference, PreparedReference, Using, denoising_phase, generation_settings
from ..pipeline import GenerationSettings, Speech
from ..sampling import Progress
from ..video import VideoWriter, read_video_frames, video_fps_and_length
from .plan import (
    DEFAULT_MARGIN,
    DEFAULT_SMOOTHING_SECONDS,
    CropPlan,
    FaceObservations,
    filled_gaps,
    kps_in_crop,
    observe_faces,
    photo_crop_plan,
    plan_from_observations,
)
from .blend import frame_mask
from .resample import crop_frame
from .stream import PasteSettings, pasted_chunks, pingpong_indices, video_frames_at


@dataclass(frozen=True, eq=False)
class Framing:
    """What a full-frame generation needs besides the speech: the crop plan, the reference crop
    (uint8 [H,W,3] at the generation size) and its (left eye, right eye, nose) [3,2] in crop pixels.
    Photo mode: `photo` is the canvas. Dubbing: `video` is the canvas and `track` its faces' keypoints
    in crop pixels, one entry per video frame, at the video's fps."""

    plan: CropPlan
    reference: np.ndarray
    reference_kps: np.ndarray
    photo: np.ndarray | None = None
    video: Path | None = None
    track: KeypointTrack | None = None

    def frame_indices(self, num_frames: int, fps: float) -> np.ndarray:
        """The plan entry (and canvas frame) of each of `num_frames` output frames at `fps`."""
        if self.video is None:
            return np.zeros(num_frames, np.int64)
        return pingpong_indices(num_frames, len(self.plan), self.plan.fps, fps)

    def canvas(self, indices: np.ndarray, block: int) -> Iterator[np.ndarray]:
        """The original frame of each output frame, decoded as needed (video) or repeated (photo)."""
        if self.video is None:
            return itertools.repeat(self.photo, len(indices))
        return video_frames_at(self.video, indices, block)

    def mask_preview(self, index: int, paste: PasteSettings) -> np.ndarray:
        """Canvas frame `index` as RGBA uint8 [h,w,4] whose alpha is its paste mask (255 = generated)."""
        (frame,) = self.canvas(np.array([index]), 1)
        alpha = np.rint(255 * frame_mask(self.plan, index, paste.region, paste.feather)).astype(np.uint8)
        return np.dstack([frame, alpha])

    @property
    def framed_reference(self) -> FramedReference:
        """The reference crop and keypoints as the orchestration's reference phase takes them."""
        return FramedReference(self.reference, self.reference_kps)

    def driving_track(self, num_frames: int, fps: float) -> KeypointTrack:
        """Dubbing: the video's own keypoints for each output frame (crop pixels)."""
        indices = self.frame_indices(num_frames, fps)
        return KeypointTrack(self.track.points[indices], self.track.frame_size, fps, self.track.valid[indices])


def crop_track(plan: CropPlan, seen: FaceObservations) -> KeypointTrack:
    """The faces' (left eye, right eye, nose) in crop pixels, one entry per frame (frames without a
    face interpolated from their neighbours and marked invalid), at the plan's fps."""
    points = np.stack([kps_in_crop(plan, i, seen.kps[i, :3]) for i in range(len(plan))])
    filled = filled_gaps(points.reshape(len(points), -1), seen.valid).reshape(points.shape)
    return KeypointTrack(filled, plan.crop_size, plan.fps, seen.valid)


def most_frontal_frame(seen: FaceObservations) -> int:
    """The frame whose face has its eyes most evenly far from the nose (the earliest among equals)."""
    kps = seen.kps
    left = np.linalg.norm(kps[:, 0] - kps[:, 2], axis=-1)
    right = np.linalg.norm(kps[:, 1] - kps[:, 2], axis=-1)
    imbalance = np.abs(np.log((left + 1e-6) / (right + 1e-6)))
    return int(np.argmin(np.where(seen.valid, imbalance, np.inf)))


def frame_photo(image: np.ndarray, detector: FaceDetector, width: int, height: int,
                margin: float = DEFAULT_MARGIN, face_index: int | None = None,
                where: str = "the reference photo") -> Framing:
    """Photo mode: a plan around the chosen face, the reference crop and its keypoints."""
    plan, kps = photo_crop_plan(image, detector, (width, height), margin, face_index, where)
    return Framing(plan, crop_frame(image, plan, 0), kps_in_crop(plan, 0, kps[:3]), photo=image)


def frame_video(path: str | Path, detector: FaceDetector, width: int, height: int, margin: float = DEFAULT_MARGIN,
                face_index: int | None = None, reference_frame: int | None = None,
                reference_photo: np.ndarray | None = None,
                progress: Callable[[int, int | None], None] | None = None,
                seconds_needed: float | None = None) -> Framing:
    """Dubbing mode: faces in the video's frames -> crop plan and keypoint track (crop pixels);
    the reference is the crop of `reference_frame` (default: the most frontal face), or of
    `reference_photo` when given. With `seconds_needed` (the speech's length) frames after that
    (and the smoothing's reach) are not looked at."""
    path = Path(path)
    fps, length = video_fps_and_length(path)
    frames = read_video_frames(path)
    if seconds_needed is not None:
        reach = int(np.ceil(seconds_needed * fps + 3 * DEFAULT_SMOOTHING_SECONDS * fps)) + 2
        reach = max(reach, (reference_frame or 0) + 1)
        length = reach if length is None else min(length, reach)
        frames = itertools.islice(frames, reach)
    seen = observe_faces(frames, detector, face_index, fps, progress, length, f"video {path}")
    plan = plan_from_observations(seen, (width, height), margin)
    track = crop_track(plan, seen)
    if reference_photo is not None:
        photo = frame_photo(reference_photo, detector, width, height, margin, None, "the reference photo")
        return Framing(plan, photo.reference, photo.reference_kps, video=path, track=track)
    if reference_frame is None:
        reference_frame = most_frontal_frame(seen)
    if not 0 <= reference_frame < len(plan):
        raise ValueError(f"reference frame {reference_frame} is out of range: video {path} has {len(plan)} frames")
    if not seen.valid[reference_frame]:
        raise ValueError(f"no face found in frame {reference_frame} of video {path}; choose another reference frame")
    (frame,) = video_frames_at(path, [reference_frame])
    return Framing(plan, crop_frame(frame, plan, reference_frame), track.points[reference_frame].copy(),
                   video=path, track=track)


def full_frame_chunks(crops: Iterator[np.ndarray], framing: Framing, num_frames: int, fps: float,
                      paste: PasteSettings = PasteSettings(), cancel: Callable[[], bool] | None = None,
                      progress: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Generated crops (uint8 chunks) pasted into their canvas frames: full-resolution uint8 chunks."""
    indices = framing.frame_indices(num_frames, fps)
    return pasted_chunks(crops, framing.canvas(indices, paste.chunk), framing.plan, indices, paste, cancel, progress)


def full_frame_video(using: Using, framing: Framing, reference: PreparedReference, speech: Speech,
                     track: KeypointTrack, settings: GenerationSettings, paste: PasteSettings = PasteSettings(),
                     callback: Callable[[Progress], None] | None = None,
                     cancel: Callable[[], bool] | None = None) -> Iterator[np.ndarray]:
    """Generate, then paste every crop back into its canvas frame: full-resolution uint8 chunks,
    made as they are taken."""
    settings = generation_settings(reference, speech, settings)
    final = denoising_phase(using, reference, speech, track, settings, callback, cancel)
    with using(DECODING_NETWORKS, lambda models: pipeline.decoding_memory(settings, models)) as models:
        crops = pipeline.video_chunks(models, final, settings, cancel)
        yield from full_frame_chunks(crops, framing, speech.num_frames, settings.fps, paste, cancel)


def full_frame_video_phase(using: Using, framing: Framing, reference: PreparedReference, speech: Speech,
                           track: KeypointTrack, settings: GenerationSettings, out: str | Path,
                           paste: PasteSettings = PasteSettings(), callback: Callable[[Progress], None] | None = None,
                           cancel: Callable[[], bool] | None = None) -> Path:
    """`full_frame_video` streamed into an mp4 with the speech (written atomically: nothing is left on failure)."""
    fps = generation_settings(reference, speech, settings).fps
    with VideoWriter(out, fps, audio=(speech.waveform, SAMPLE_RATE)) as writer:
        for chunk in full_frame_video(using, framing, reference, speech, track, settings, paste, callback, cancel):
            writer.write(chunk)
    return Path(out)
