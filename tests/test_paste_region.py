"""Paste regions (issue 21): `head` (the ellipse of issue 9, unchanged) and `lower-face` (below the eyes,
built from each frame's keypoints) in the core, `generate --paste-region/--save-paste-mask`, and the
Paste Back node's `paste_region` input."""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import soundfile
import torch

from comfyui_like import NODES
from vexpress_core import cli
from vexpress_core.audio import load_audio
from vexpress_core.framing import (
    PASTE_REGIONS,
    CropPlan,
    FaceObservations,
    PasteSettings,
    frame_mask,
    paste_mask,
    pasted_chunks,
    pixel_box,
    plan_from_observations,
    resized,
    resolved_paste_region,
)
from vexpress_core.framing import stream
from vexpress_core.framing.blend import (
    LOWER_FACE_BOTTOM,
    LOWER_FACE_HALF_WIDTH,
    LOWER_FACE_TOP,
    PasteRegion,
    head_outline,
)
from vexpress_core.framing.commands import check_framing_args
from vexpress_core.video import read_video_frames, write_mp4

from test_framing import textured_frame

FRAME = (640, 480)
EYES = 60.0  # eye distance in pixels
CROP = (256, 256)
RATE = 16000


def face_points(centre, roll=0.0) -> np.ndarray:
    """Five insightface points [5,2] of a photographed face (eyes, nose, mouth corners) whose eye
    midpoint is `centre`, turned by `roll` degrees."""
    canonical = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.6], [-0.4, 1.1], [0.4, 1.1]]) * EYES
    angle = np.deg2rad(roll)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (canonical @ rotation.T + centre).astype(np.float32)


def face_box(centre) -> np.ndarray:
    """The detector's box around such a face: 2.2 eye distances wide, from 1.1 above the eyes to 1.8 below."""
    x, y = centre
    return np.array([x - 1.1 * EYES, y - 1.1 * EYES, x + 1.1 * EYES, y + 1.8 * EYES])


def plan_for(points: list[np.ndarray], boxes: list[np.ndarray], fps: float = 25.0) -> CropPlan:
    seen = FaceObservations(np.stack(boxes), np.stack(points), np.ones(len(points), bool), FRAME, fps)
    return plan_from_observations(seen, CROP, smoothing_seconds=0)


def moving_head(frames: int = 6) -> CropPlan:
    centres = [(250 + 30 * i, 200 + 12 * i) for i in range(frames)]
    rolls = np.linspace(-12, 12, frames)
    return plan_for([face_points(c, r) for c, r in zip(centres, rolls)], [face_box(c) for c in centres])


def face_coordinates(plan: CropPlan, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(across, down) [h,w] in eye distances of every frame pixel from frame `index`'s nose (across
    the eye line) and eye line (down)."""
    left, right, nose = plan.kps[index]
    eye_distance = np.linalg.norm(right - left)
    across = (right - left) / eye_distance
    down = np.array([-across[1], across[0]])
    ys, xs = np.mgrid[0:FRAME[1], 0:FRAME[0]]
    pixels = np.stack([xs, ys], -1)
    return (pixels - nose) @ across / eye_distance, (pixels - (left + right) / 2) @ down / eye_distance


def placed_crop(crop: np.ndarray, plan: CropPlan, index: int) -> np.ndarray:
    """The generated crop resized back into its box on an empty frame (what the inner part must show)."""
    left, top, width, height = pixel_box(plan.boxes[index])
    placed = np.zeros((FRAME[1], FRAME[0], 3), np.uint8)
    update = resized(crop, width, height)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, FRAME[0]), min(top + height, FRAME[1])
    placed[y0:y1, x0:x1] = update[y0 - top:y1 - top, x0 - left:x1 - left]
    return placed


# --- the lower-face region in the core --------------------------------------------------------


def test_outside_the_lower_face_mask_the_original_stays_inside_its_inner_part_the_generated_crop():
    plan = moving_head()
    rng = np.random.default_rng(4)
    generated = rng.integers(0, 256, (len(plan), CROP[1], CROP[0], 3), dtype=np.uint8)
    originals = [np.roll(textured_frame(*FRAME, seed=5), 7 * i, axis=1) for i in range(len(plan))]
    settings = PasteSettings(feather=0.08, colour_match=False, region="lower-face")
    out = np.concatenate(list(pasted_chunks([generated], originals, plan, settings=settings)))
    for index in range(len(plan)):
        mask = frame_mask(plan, index, "lower-face", 0.08)
        outside, inner = mask == 0, mask == 1
        assert inner.sum() > EYES ** 2 and (0 < mask[~outside & ~inner]).all()
        assert np.array_equal(out[index][outside], originals[index][outside])
        assert np.array_equal(out[index][inner], placed_crop(generated[index], plan, index)[inner])
        across, down = face_coordinates(plan, index)
        pasted = ~outside
        assert down[pasted].min() >= LOWER_FACE_TOP - 0.02  # nothing above the line under the eyes
        assert down[pasted].max() <= LOWER_FACE_BOTTOM + 0.02
        assert np.abs(across[pasted]).max() <= LOWER_FACE_HALF_WIDTH + 0.02
        for eye in (-0.5, 0.5):
            assert (mask[np.hypot(across - eye, down) < 0.3] == 0).all()  # the eyes keep their pixels
        assert (mask[(np.abs(across) < 0.5) & (np.abs(down - 1.1) < 0.3)] == 1).all()  # the mouth is generated


def test_the_lower_face_mask_follows_each_frames_keypoints_not_the_box():
    """Four frames with the same face box: the keypoints move right, move down and turn."""
    centre = np.array([320.0, 220.0])
    points = [face_points(centre), face_points(centre + [12, 0]), face_points(centre + [0, 9]), face_points(centre, 15)]
    plan = plan_for(points, [face_box(centre)] * 4)
    assert np.ptp(plan.boxes, axis=0).max() == 0 and np.ptp(plan.face_boxes, axis=0).max() == 0
    heads = [frame_mask(plan, index, "head") for index in range(4)]
    assert all(np.array_equal(heads[0], head) for head in heads[1:])  # the head ellipse follows the box
    masks = [frame_mask(plan, index, "lower-face") for index in range(4)]

    def centroid(mask):
        ys, xs = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
        return np.array([(xs * mask).sum(), (ys * mask).sum()]) / mask.sum()

    assert np.allclose(centroid(masks[1]) - centroid(masks[0]), [12, 0], atol=0.5)
    assert np.allclose(centroid(masks[2]) - centroid(masks[0]), [0, 9], atol=0.5)
    turn = cv2.getRotationMatrix2D(tuple(centre), -15, 1.0)  # cv2 turns counter-clockwise for positive angles
    turned = cv2.warpAffine(masks[0], turn, FRAME, flags=cv2.INTER_LINEAR)

    def overlap(a, b):
        return ((a > 0.5) & (b > 0.5)).sum() / ((a > 0.5) | (b > 0.5)).sum()

    assert overlap(masks[3], turned) > 0.95 and overlap(masks[3], masks[0]) < 0.9


def test_the_crop_plan_file_keeps_the_keypoints(tmp_path):
    plan = moving_head(3)
    path = plan.save(tmp_path / "plan.json")
    restored = CropPlan.load(path)
    assert restored.kps.shape == (3, 3, 2) and np.allclose(restored.kps, plan.kps, atol=1e-3)
    assert np.allclose(plan.kps[1], face_points((280, 212), 0)[:3], atol=1e-4)
    (tmp_path / "old.json").write_text(path.read_text().replace('"version": 2', '"version": 1'))  # no keypoints
    with pytest.raises(ValueError, match="not a crop plan file"):
        CropPlan.load(tmp_path / "old.json")


def test_frames_without_a_face_take_keypoints_from_their_neighbours():
    points = [face_points((300, 200)), np.zeros((5, 2), np.float32), face_points((340, 200))]
    seen = FaceObservations(np.stack([face_box((300, 200)), np.zeros(4), face_box((340, 200))]), np.stack(points),
                            np.array([True, False, True]), FRAME, 25.0)
    plan = plan_from_observations(seen, CROP)
    assert np.allclose(plan.kps[1], face_points((320, 200))[:3], atol=1e-4)


def test_an_unknown_region_is_one_clear_error():
    with pytest.raises(ValueError, match="paste region must be one of head, lower-face, got 'mouth'"):
        PasteSettings(region="mouth")


# --- head: today's ellipse, unchanged ----------------------------------------------------------


def head_mask_before_issue_21(width, height, face_box, feather):
    """blend.head_mask as it was before paste regions (commit fc1bed9), kept here as the oracle."""
    feather = int(round(max(feather, 0.0) * min(width, height)))
    feather = min(feather, min(width, height) // 4)
    x0, y0, x1, y1 = (int(round(v)) for v in face_box)
    face_width, face_height = max(x1 - x0, 1), max(y1 - y0, 1)
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2 - 0.08 * face_height
    centre_x, centre_y = min(max(centre_x, 1.0), width - 1.0), min(max(centre_y, 1.0), height - 1.0)
    room = feather / 2 + 1
    axis_x = max(min(1.3 * face_width / 2, centre_x - room, width - centre_x - room), 1.0)
    axis_y = max(min(1.3 * face_height / 2, centre_y - room, height - centre_y - room), 1.0)
    inside = np.zeros((height, width), np.uint8)
    cv2.ellipse(inside, (round(centre_x * 16), round(centre_y * 16)), (round(axis_x * 16), round(axis_y * 16)),
                0, 0, 360, 1, -1, cv2.LINE_8, 4)
    signed = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5) - cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    ramp = np.clip(0.5 - signed / max(feather, 1), 0.0, 1.0)
    return (ramp * ramp * (3 - 2 * ramp)).astype(np.float32), np.abs(signed) <= max(feather, 1)


@pytest.mark.parametrize("feather", [0.0, 0.03, 0.08, 0.2, 0.5])
def test_the_head_region_is_bit_identical_to_before(feather):
    centres = [(60, 50), (320, 240), (600, 450), (330, 250)]
    sizes = [(80, 100), (150, 190), (260, 300), (500, 620)]  # the last box is larger than the frame
    points = [face_points(c) for c in centres]
    boxes = [np.array([x - w / 2, y - h / 2, x + w / 2, y + h / 2]) for (x, y), (w, h) in zip(centres, sizes)]
    plan = plan_for(points, boxes)
    rng = np.random.default_rng(6)
    generated = rng.integers(0, 256, (len(plan), CROP[1], CROP[0], 3), dtype=np.uint8)
    original = textured_frame(*FRAME, seed=7)
    out = np.concatenate(list(pasted_chunks([generated], [original] * len(plan), plan,
                                            settings=PasteSettings(feather=feather, colour_match=False))))
    for index in range(len(plan)):
        left, top, width, height = pixel_box(plan.boxes[index])
        mask, ring = paste_mask(plan, index, "head", feather)
        old_mask, old_ring = head_mask_before_issue_21(width, height, plan.face_boxes[index] - [left, top] * 2, feather)
        assert np.array_equal(mask, old_mask) and np.array_equal(ring, old_ring)
        full = np.zeros(original.shape[:2], np.float32)
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + width, FRAME[0]), min(top + height, FRAME[1])
        full[y0:y1, x0:x1] = old_mask[y0 - top:y1 - top, x0 - left:x1 - left]
        before = original.astype(np.float32)
        blended = before + full[..., None] * (placed_crop(generated[index], plan, index).astype(np.float32) - before)
        assert np.array_equal(out[index], np.rint(blended).astype(np.uint8))


# --- command line -----------------------------------------------------------------------------


def parsed(*extra) -> argparse.Namespace:
    return cli.parser().parse_args(["generate", "--models", "m", "--audio", "speech.wav", "--out", "o.mp4", *extra])


def test_paste_region_flag_defaults_to_lower_face_for_dubbing_and_head_for_photos(capsys):
    dub, photo = parsed("--dub", "v.mp4"), parsed("--reference", "p.jpg", "--paste-back")
    assert dub.paste_region == photo.paste_region == "auto"
    assert resolved_paste_region(dub.paste_region, dubbing=True) == "lower-face"
    assert resolved_paste_region(photo.paste_region, dubbing=False) == "head"
    chosen = parsed("--dub", "v.mp4", "--paste-region", "head", "--save-paste-mask", "3")
    assert (chosen.paste_region, chosen.save_paste_mask) == ("head", 3)
    assert resolved_paste_region(chosen.paste_region, dubbing=True) == "head"
    with pytest.raises(SystemExit):
        parsed("--dub", "v.mp4", "--paste-region", "mouth")
    assert "invalid choice: 'mouth'" in capsys.readouterr().err
    for extra in (["--paste-region", "lower-face"], ["--save-paste-mask", "0"]):
        with pytest.raises(ValueError, match="for pasting back: add --paste-back or --dub VIDEO"):
            check_framing_args(parsed("--reference", "p.jpg", *extra))


def test_a_registered_region_is_offered_by_the_cli_and_the_node():
    PASTE_REGIONS.register("whole-crop", PasteRegion(head_outline))
    try:
        assert parsed("--dub", "v.mp4", "--paste-region", "whole-crop").paste_region == "whole-crop"
        spec = next(s for s in NODES.framing.VExpressPasteBack.INPUTS if s.name == "paste_region")
        assert "whole-crop" in spec.choices()
    finally:
        PASTE_REGIONS.unregister("whole-crop")


@pytest.fixture(scope="module")
def dub_inputs(tmp_path_factory, samples_dir):
    """A 5-frame 320x320 clip of a sample video and half a second of speech."""
    folder = tmp_path_factory.mktemp("paste-region")
    frames = [cv2.resize(frame, (320, 320), interpolation=cv2.INTER_AREA)
              for _, frame in zip(range(5), read_video_frames(samples_dir / "short_case_tys" / "gt.mp4"))]
    write_mp4(np.stack(frames), folder / "clip.mp4", 10)
    soundfile.write(folder / "speech.wav", load_audio(samples_dir / "short_case_10" / "aud.mp3")[RATE // 2:RATE],
                    RATE, subtype="FLOAT")
    return folder / "clip.mp4", folder / "speech.wav"


def dub(models, video, speech, out, *extra) -> int:
    return cli.main(["generate", "--models", str(models), "--dub", str(video), "--audio", str(speech), "--width", "64",
                     "--height", "64", "--steps", "1", "--context-frames", "8", "--context-overlap", "2", "--device",
                     "cpu", "--detector", "retinaface", *extra, "--out", str(out)])


@pytest.mark.usefixtures("one_torch_thread")
def test_dub_pastes_the_lower_face_by_default_and_saves_the_mask_of_a_frame(tiny_model_dir, dub_inputs, tmp_path,
                                                                           monkeypatch):
    regions, plans = [], []
    real = stream.paste_into

    def spy(canvas, generated, plan, index, feather, colour, region):
        regions.append(region)
        plans.append(plan)
        return real(canvas, generated, plan, index, feather, colour, region)

    monkeypatch.setattr(stream, "paste_into", spy)
    video, speech = dub_inputs
    out = tmp_path / "dub.mp4"
    assert dub(tiny_model_dir, video, speech, out, "--save-paste-mask", "2") == 0
    assert regions and set(regions) == {"lower-face"}
    saved = cv2.imread(str(tmp_path / "dub.paste_mask_2.png"), cv2.IMREAD_UNCHANGED)
    assert saved.shape == (320, 320, 4)
    alpha = np.rint(255 * frame_mask(plans[0], 2, "lower-face", 0.08)).astype(np.uint8)
    assert np.array_equal(saved[..., 3], alpha) and 0 < (alpha == 255).mean() < 0.5
    (frame,) = [frame for index, frame in enumerate(read_video_frames(video)) if index == 2]
    assert np.array_equal(cv2.cvtColor(saved[..., :3], cv2.COLOR_BGR2RGB), frame)


def test_a_mask_frame_outside_the_plan_is_one_clear_error_and_no_file(dub_inputs, tmp_path, capsys):
    video, speech = dub_inputs
    out = tmp_path / "never.mp4"
    assert dub(tmp_path / "no-models", video, speech, out, "--save-paste-mask", "5") == 2
    assert f"--save-paste-mask 5 is out of range: video {video} has frames 0 to 4" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- the Paste Back node ----------------------------------------------------------------------


def test_paste_back_node_offers_the_region_and_auto_picks_by_the_originals():
    VExpressPasteBack = NODES.framing.VExpressPasteBack
    spec = next(s for s in VExpressPasteBack.INPUTS if s.name == "paste_region")
    assert spec.type == "COMBO" and spec.choices() == ["auto", "head", "lower-face"] and spec.default == "auto"
    assert "lower-face" in spec.tooltip and "auto" in spec.tooltip
    plan = moving_head(3)
    to_image = NODES.types.uint8_to_image
    originals = np.stack([np.roll(textured_frame(*FRAME, seed=8), 5 * i, axis=0) for i in range(3)])
    generated = np.random.default_rng(9).integers(0, 256, (3, CROP[1], CROP[0], 3), dtype=np.uint8)

    def paste(region, frames):
        return VExpressPasteBack.run(images=to_image(generated), crop_plan=frames[1], original=to_image(frames[0]),
                                     paste_region=region, feather=0.08, color_match=True, fps=0.0)[0]

    video = (originals, plan)
    lower = paste("lower-face", video)
    assert torch.equal(paste("auto", video), lower) and not torch.equal(paste("head", video), lower)
    for index in range(3):
        outside = frame_mask(plan, index, "lower-face") == 0
        assert torch.equal(lower[index][outside], to_image(originals[index])[outside])
    photo = (originals[:1], moving_head(1))
    assert torch.equal(paste("auto", photo), paste("head", photo))
