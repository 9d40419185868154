"""V-Express Face Crop and V-Express Paste Back without ComfyUI: shapes, the crop plan on the wire,
pixels outside the mask, back-and-forth frame mapping, progress and cancel, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_like import NODES
from vexpress_core.framing import CropPlan
from vexpress_core.keypoints import KeypointTrack

runtime, uint8_to_image = NODES.runtime, NODES.types.uint8_to_image
VExpressFaceCrop, VExpressPasteBack = NODES.framing.VExpressFaceCrop, NODES.framing.VExpressPasteBack

CROP_INPUTS = dict(width=64, height=64, face_margin=0.3, fps=25.0, detector="retinaface", face_index=-1,
                   reference_frame=-1)


@pytest.fixture(scope="module")
def portrait(samples_dir) -> np.ndarray:
    """The sample portrait on a wider, odd-sized canvas (the face away from the left and right edges)."""
    with Image.open(samples_dir / "short_case_10" / "ref.jpg") as image:
        face = np.asarray(image.convert("RGB").resize((160, 160), Image.BICUBIC))
    return np.pad(face, ((0, 1), (60, 61), (0, 0)), mode="edge")  # 161 x 281


def test_photo_crop_and_paste_back_keep_the_photo_outside_the_mask(portrait):
    photo = uint8_to_image(portrait[None])
    crops, plan, kps, reference = VExpressFaceCrop.run(images=photo, **CROP_INPUTS)
    assert crops.shape == (1, 64, 64, 3) and reference.shape == (1, 64, 64, 3)
    assert isinstance(plan, CropPlan) and plan.frame_size == (281, 161) and len(plan) == 1
    assert isinstance(kps, KeypointTrack) and kps.frame_size == (64, 64) and len(kps) == 1
    generated = torch.zeros((5, 64, 64, 3))
    (frames,) = VExpressPasteBack.run(images=generated, crop_plan=plan, original=photo, paste_region="head",
                                      feather=0.08, color_match=False, fps=0.0)
    assert frames.shape == (5, 160, 280, 3)  # odd sizes lose the last row and column
    assert torch.equal(frames[:, :, :40], photo[:, :160, :40].expand(5, -1, -1, -1))  # far from the face
    assert (frames[:, 80, 140] < photo[0, 80, 140]).all()  # the (black) generated face is in the middle


def test_video_frames_map_back_and_forth_with_progress(portrait, monkeypatch):
    colours = [10, 120, 230]
    video = np.stack([portrait.copy() for _ in colours])
    for frame, colour in zip(video, colours):
        frame[:6, :6] = colour  # a corner marker outside the head
    images = uint8_to_image(video)
    calls = []
    monkeypatch.setattr(runtime, "check_interrupted", lambda: calls.append(1) or False)
    crops, plan, kps, _ = VExpressFaceCrop.run(images=images, **CROP_INPUTS)
    assert len(plan) == 3 and plan.fps == 25.0 and len(kps) == 3 and kps.fps == 25.0
    (frames,) = VExpressPasteBack.run(images=torch.cat([crops, crops, crops[:1]]), crop_plan=plan, original=images,
                                      paste_region="head", feather=0.08, color_match=True, fps=0.0)
    markers = [round(float(frames[i, 2, 2, 0]) * 255) for i in range(7)]
    assert markers == [10, 120, 230, 120, 10, 120, 230]
    assert len(calls) >= 3 * 2 + 7  # detection, cropping and pasting report per frame (and honour Cancel)


def test_cancel_stops_paste_back(portrait, monkeypatch):
    photo = uint8_to_image(portrait[None])
    _, plan, _, _ = VExpressFaceCrop.run(images=photo, **CROP_INPUTS)

    class Interrupted(Exception):
        pass

    def interrupt():
        raise Interrupted

    monkeypatch.setattr(runtime, "check_interrupted", interrupt)
    with pytest.raises(Interrupted):
        VExpressPasteBack.run(images=torch.zeros((3, 64, 64, 3)), crop_plan=plan, original=photo, paste_region="head",
                              feather=0.08, color_match=True, fps=0.0)


def test_bad_input_gives_clear_errors(portrait):
    grey = torch.full((2, 48, 64, 3), 0.5)
    with pytest.raises(ValueError, match="no face found in any of the 2 frame"):
        VExpressFaceCrop.run(images=grey, **CROP_INPUTS)
    photo = uint8_to_image(portrait[None])
    with pytest.raises(ValueError, match="reference_frame 4 is out of range"):
        VExpressFaceCrop.run(images=photo, **(CROP_INPUTS | {"reference_frame": 4}))
    _, plan, _, _ = VExpressFaceCrop.run(images=photo, **CROP_INPUTS)
    with pytest.raises(ValueError, match="the crop plan is for 1 frame"):
        VExpressPasteBack.run(images=torch.zeros((1, 64, 64, 3)), crop_plan=plan, original=photo.expand(2, -1, -1, -1),
                              paste_region="head", feather=0.08, color_match=True, fps=0.0)
    with pytest.raises(ValueError, match="the crop plan is for 281x161 frames"):
        VExpressPasteBack.run(images=torch.zeros((1, 64, 64, 3)), crop_plan=plan, original=grey[:1],
                              paste_region="head", feather=0.08, color_match=True, fps=0.0)
