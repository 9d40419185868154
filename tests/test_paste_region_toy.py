"""A toy dub with the trained toy model (issue 21): a toy video of a moving head speaking babble A is
re-voiced with babble B through the core path of `generate --dub` (frame_video, the reference and
speech phases, the video's own track, full_frame_video) with the lower-face paste region. The eyes
keep the original's pixels, the mouth follows B, and the seam is no worse than pasting the head."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from vexpress_core.demo import TOY_MODEL_DIR, TOY_SIZE

from vexpress_core import pipeline
from vexpress_core.checkpoint import load_models
from vexpress_core.detectors import make_detector
from vexpress_core.framing import CropPlan, PasteSettings, paste_mask, pixel_box
from vexpress_core.framing.modes import frame_video, full_frame_chunks, full_frame_video
from vexpress_core.orchestration import reference_phase, speech_phase, using_models
from vexpress_core.pipeline import GenerationSettings
from vexpress_core.video import read_video_frames, write_mp4
from vexpress_training.toy.clips import Clip, render_clip
from vexpress_training.toy.metrics import mouth_opening_measure, pearson
from vexpress_training.toy.speech import SAMPLE_RATE, babble
from vexpress_training.toy.world import Identity, Pose, head_track, identity, pose_matrix

IDENTITY = POSE = 1001  # held out: the toy model's moving-head evaluation case
# (the pack's detector finds this face's eye points within 0.1 eye distances of the truth, and its
# eyelids end 0.32 eye distances below them: clear of the lower face, which starts at 0.4)
SPEECH_A, SPEECH_B = 1010, 1011  # held-out babble seeds
SECONDS, FPS = 3.0, 25.0
VIDEO_SIZE = 256  # the toy world drawn large: the crop is shrunk to the model's 64x64 and pasted back enlarged
FACE_MARGIN = 0.7  # the crop box then holds the whole frame, as the toy model was trained (prepare --crop center)
# Framed that wide, the default feather (0.08 of the crop) is half an eye distance: more than the
# room between the cartoon's big eyes and its mouth. Both regions are pasted with this one.
FEATHER = 0.04

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class ToyDub:
    spoken: Clip  # the video's truth: babble A
    truth: Clip  # the same identity, head track and blinks speaking babble B
    originals: np.ndarray  # the video's frames as decoded (the canvas), uint8 [N, size, size, 3]
    plan: CropPlan
    lower_face: np.ndarray  # the dub pasted with each region, uint8 [N, size, size, 3]
    head: np.ndarray


@pytest.fixture(scope="module")
def toy_dub(tmp_path_factory) -> ToyDub:
    wave_a, wave_b = babble(SPEECH_A, SECONDS), babble(SPEECH_B, SECONDS)
    spoken = render_clip(IDENTITY, wave_a, POSE, VIDEO_SIZE, FPS)
    truth = render_clip(IDENTITY, wave_b, POSE, VIDEO_SIZE, FPS)
    video = write_mp4(spoken.frames, tmp_path_factory.mktemp("toy-dub") / "spoken.mp4", FPS, audio=(wave_a, SAMPLE_RATE))
    framing = frame_video(video, make_detector("auto", TOY_MODEL_DIR), TOY_SIZE, TOY_SIZE, FACE_MARGIN,
                          seconds_needed=SECONDS)
    using = using_models(load_models(TOY_MODEL_DIR))
    reference = reference_phase(using, framing.framed_reference)
    speech = speech_phase(using, wave_b, framing.plan.fps)
    track = framing.driving_track(speech.num_frames, speech.fps)
    settings = GenerationSettings(width=TOY_SIZE, height=TOY_SIZE, fps=speech.fps)
    crops = []
    real_chunks = pipeline.video_chunks

    def kept(*args, **kwargs):  # the generated crops, to paste them once more with the head region
        for chunk in real_chunks(*args, **kwargs):
            crops.append(chunk)
            yield chunk

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "video_chunks", kept)
        lower_face = np.concatenate(list(full_frame_video(using, framing, reference, speech, track, settings,
                                                          PasteSettings(FEATHER, region="lower-face"))))
    head = np.concatenate(list(full_frame_chunks(iter(crops), framing, speech.num_frames, speech.fps,
                                                 PasteSettings(FEATHER, region="head"))))
    originals = np.stack(list(read_video_frames(video)))[:len(lower_face)]
    assert len(lower_face) == len(head) == len(truth.frames) == len(originals)
    return ToyDub(spoken, truth, originals, framing.plan, lower_face, head)


def eyes_region(person: Identity, pose: Pose, size: int) -> np.ndarray:
    """Where the frame shows the eyes, eyelids and brows (bool [size, size]): per eye, the box from
    the brow's top to the closed lid's bottom as the world draws them, one pixel wider all round."""
    cx, cy = person.centre
    eye_y, r = cy - person.eye_dy, person.eye_r
    matrix = pose_matrix(person, pose)
    region = np.zeros((size, size), np.uint8)
    for side in (-1, 1):
        ex = cx + side * person.eye_dx
        x0, x1 = ex - 1.15 * r, ex + 1.15 * r
        y0, y1 = eye_y - person.brow_lift - 0.5 * r, eye_y + 0.8 * r
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) @ matrix[:, :2].T + matrix[:, 2]
        cv2.fillPoly(region, [np.rint((corners * size - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return cv2.dilate(region, np.ones((3, 3), np.uint8)).astype(bool)


def seam_error(frames: np.ndarray, originals: np.ndarray, plan: CropPlan, region: str, feather: float) -> float:
    """The seam ring's colour error, averaged over frames: per frame, the absolute difference between
    the output's and the original's mean colour over the ring pixels, averaged over R, G and B."""
    errors = []
    for index, (frame, original) in enumerate(zip(frames, originals)):
        left, top, width, height = pixel_box(plan.boxes[index])
        ring = np.zeros(frame.shape[:2], bool)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, frame.shape[1]), min(top + height, frame.shape[0])
        ring[y0:y1, x0:x1] = paste_mask(plan, index, region, feather)[1][y0 - top:y1 - top, x0 - left:x1 - left]
        difference = frame[ring].astype(np.float64) - original[ring].astype(np.float64)
        errors.append(float(np.abs(difference.mean(axis=0)).mean()))
    return float(np.mean(errors))


def test_the_eyes_keep_the_original_pixels(toy_dub):
    person = identity(IDENTITY)
    poses = head_track(POSE, len(toy_dub.lower_face), FPS)
    for frame, original, pose in zip(toy_dub.lower_face, toy_dub.originals, poses):
        eyes = eyes_region(person, pose, VIDEO_SIZE)
        assert eyes.sum() > 0.01 * VIDEO_SIZE ** 2
        assert np.array_equal(frame[eyes], original[eyes])


def test_the_mouth_follows_the_new_speech(toy_dub):
    points = toy_dub.spoken.points  # the same head track in both clips
    dubbed = mouth_opening_measure(toy_dub.lower_face, points)
    truth = mouth_opening_measure(toy_dub.truth.frames, points)
    original = mouth_opening_measure(toy_dub.spoken.frames, points)
    lip_sync = pearson(dubbed, truth)
    print(f"lip-sync r against the truth spoken with B: {lip_sync:.3f} (the original video's: "
          f"{pearson(original, truth):.3f})")
    assert lip_sync >= 0.6


def test_the_seam_is_no_worse_than_pasting_the_head(toy_dub):
    lower = seam_error(toy_dub.lower_face, toy_dub.originals, toy_dub.plan, "lower-face", FEATHER)
    head = seam_error(toy_dub.head, toy_dub.originals, toy_dub.plan, "head", FEATHER)
    print(f"seam ring colour error (RGB levels): lower-face {lower:.3f}, head {head:.3f}")
    assert lower <= head
