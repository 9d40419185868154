"""A toy dub with the bundled toy model (issue 21, training/toy/dub.py): a toy video of a moving head
speaking babble A re-voiced with babble B by the steps of `generate --dub`, pasted with the lower-face
region. The eyes keep the original's pixels, the mouth follows B, and the seam is no worse than
pasting the head."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vexpress_core.framing import CropPlan, paste_mask, pixel_box
from vexpress_training.toy.dub import FEATHER, FPS, IDENTITY, POSE, VIDEO_SIZE, ToyDub, toy_dub as make_toy_dub
from vexpress_training.toy.metrics import mouth_opening_measure, pearson
from vexpress_training.toy.world import Identity, Pose, head_track, identity, pose_matrix

# (the pack's detector finds identity 1001's eye points within 0.1 eye distances of the truth, and its
# eyelids end 0.32 eye distances below them: clear of the lower face, which starts at 0.4)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy_dub(tmp_path_factory) -> ToyDub:
    dub = make_toy_dub(tmp_path_factory.mktemp("toy-dub"))
    assert len(dub.pasted["lower-face"]) == len(dub.pasted["head"]) == len(dub.truth.frames) == len(dub.originals)
    return dub


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
    poses = head_track(POSE, len(toy_dub.pasted["lower-face"]), FPS)
    for frame, original, pose in zip(toy_dub.pasted["lower-face"], toy_dub.originals, poses):
        eyes = eyes_region(person, pose, VIDEO_SIZE)
        assert eyes.sum() > 0.01 * VIDEO_SIZE ** 2
        assert np.array_equal(frame[eyes], original[eyes])


def test_the_mouth_follows_the_new_speech(toy_dub):
    points = toy_dub.spoken.points  # the same head track in both clips
    dubbed = mouth_opening_measure(toy_dub.pasted["lower-face"], points)
    truth = mouth_opening_measure(toy_dub.truth.frames, points)
    original = mouth_opening_measure(toy_dub.spoken.frames, points)
    lip_sync = pearson(dubbed, truth)
    print(f"lip-sync r against the truth spoken with B: {lip_sync:.3f} (the original video's: "
          f"{pearson(original, truth):.3f})")
    assert lip_sync >= 0.6


def test_the_seam_is_no_worse_than_pasting_the_head(toy_dub):
    lower = seam_error(toy_dub.pasted["lower-face"], toy_dub.originals, toy_dub.plan, "lower-face", FEATHER)
    head = seam_error(toy_dub.pasted["head"], toy_dub.originals, toy_dub.plan, "head", FEATHER)
    print(f"seam ring colour error (RGB levels): lower-face {lower:.3f}, head {head:.3f}")
    assert lower <= head
