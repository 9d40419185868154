"""Crop plans, crops, paste-back and streaming of vexpress_core.framing (issue 9), on synthetic frames."""
from __future__ import annotations

import tracemalloc
import weakref

import cv2
import numpy as np
import pytest

from vexpress_core.framing import (
    ColourMatch,
    CropPlan,
    FaceObservations,
    PasteSettings,
    crop_frame,
    even_size,
    kps_in_crop,
    observe_faces,
    paste_into,
    paste_mask,
    pasted_chunks,
    photo_crop_plan,
    pingpong_indices,
    pixel_box,
    plan_from_observations,
    resized,
    video_frames_at,
)
from vexpress_core.detectors import Face
from vexpress_core.video import write_mp4
from fake_detectors import FakeDetector

CROP = (512, 512)


def face_at(x, y, size=100.0, score=0.99):
    kps = np.array([[x - 20, y], [x + 20, y], [x, y + 20], [x - 15, y + 40], [x + 15, y + 40]], np.float32)
    return Face((x - size / 2, y - size / 2, x + size / 2, y + size / 2), kps, score)


def textured_frame(width, height, seed=0):
    """A smooth colourful picture with fine noise, no pixel darker than 40."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    picture = np.stack([120 + 60 * np.sin(xs / 37), 110 + 50 * np.cos(ys / 23), 100 + 40 * np.sin((xs + ys) / 51)], -1)
    return np.clip(picture + rng.normal(0, 8, picture.shape), 40, 255).astype(np.uint8)


def observations(centres, sizes, frame_size, valid=None, fps=30.0):
    centres, sizes = np.asarray(centres, float), np.asarray(sizes, float)
    half = np.stack([sizes / 2, sizes / 2 * 1.3], -1)
    boxes = np.concatenate([centres - half, centres + half], -1)
    valid = np.ones(len(boxes), bool) if valid is None else np.asarray(valid)
    boxes[~valid] = 0
    return FaceObservations(boxes, np.zeros((len(boxes), 5, 2), np.float32), valid, frame_size, fps)


def one_box_plan(frame_size, centre, face=120.0, margin=0.3, crop=CROP):
    return plan_from_observations(observations([centre], [face], frame_size), crop, margin)


def second_difference_std(values):
    return float(np.std(values[2:] - 2 * values[1:-1] + values[:-2]))


# --- plans -----------------------------------------------------------------------------------


def test_jitter_drops_at_least_4x_and_the_plan_follows_the_move():
    frames, fps, size = 300, 30.0, (1280, 720)
    t = np.arange(frames) / fps
    truth = np.stack([640 + 150 * np.sin(2 * np.pi * t / 5), 360 + 40 * np.sin(2 * np.pi * t / 7)], -1)
    rng = np.random.default_rng(1)
    jittered = truth + rng.uniform(-3, 3, truth.shape)
    sizes = 200 + rng.uniform(-2, 2, frames)
    valid = rng.random(frames) > 0.1
    valid[0] = True
    plan = plan_from_observations(observations(jittered, sizes, size, valid, fps), CROP)
    centres = (plan.boxes[:, :2] + plan.boxes[:, 2:]) / 2
    raw_jitter = [second_difference_std(jittered[valid, k]) for k in range(2)]
    plan_jitter = [second_difference_std(centres[:, k]) for k in range(2)]
    ratios = [raw / smooth for raw, smooth in zip(raw_jitter, plan_jitter)]
    follow_error = np.abs(centres - truth).max(axis=0) / np.array(size)
    print(f"jitter drop x: {ratios[0]:.1f}, y: {ratios[1]:.1f}; worst follow error: "
          f"{100 * follow_error[0]:.2f}% of the width, {100 * follow_error[1]:.2f}% of the height")
    assert min(ratios) >= 4
    assert follow_error.max() <= 0.02
    widths = plan.boxes[:, 2] - plan.boxes[:, 0]
    assert np.ptp(widths) < 1e-9 and np.ptp(plan.boxes[:, 3] - plan.boxes[:, 1]) < 1e-9  # one size per shot
    assert set(plan.shots.tolist()) == {0}
    assert (plan.valid == valid).all()


def test_frames_without_a_face_are_held_at_the_ends_and_interpolated_between():
    frames = 40
    centres = np.stack([np.linspace(300, 400, frames), np.full(frames, 240)], -1)
    valid = np.ones(frames, bool)
    valid[:5] = valid[20:30] = False
    plan = plan_from_observations(observations(centres, np.full(frames, 100), (800, 480), valid), CROP,
                                  smoothing_seconds=0)
    got = (plan.boxes[:, 0] + plan.boxes[:, 2]) / 2
    assert np.allclose(got[:5], centres[5, 0])
    assert np.allclose(got[20:30], centres[20:30, 0])  # a linear move is interpolated exactly


def test_a_jump_starts_a_new_shot_with_its_own_size_and_no_smoothing_across():
    centres = [(300, 300)] * 20 + [(900, 400)] * 20
    sizes = [100] * 20 + [200] * 20
    plan = plan_from_observations(observations(centres, sizes, (1280, 720)), CROP)
    assert plan.shots.tolist() == [0] * 20 + [1] * 20
    widths = plan.boxes[:, 2] - plan.boxes[:, 0]
    assert widths[0] < widths[-1]
    assert np.allclose((plan.boxes[19, 0] + plan.boxes[19, 2]) / 2, 300)
    assert np.allclose((plan.boxes[20, 0] + plan.boxes[20, 2]) / 2, 900)


def test_photo_plan_holds_the_face_with_its_margin_and_round_trips_through_json(tmp_path):
    image = textured_frame(1000, 800)
    plan, kps = photo_crop_plan(image, FakeDetector([[face_at(500, 380, 200), face_at(100, 100, 50)]]), (512, 384),
                                margin=0.3)
    left, top, width, height = pixel_box(plan.boxes[0])
    assert width / height == pytest.approx(512 / 384, abs=0.01)
    face = plan.face_boxes[0]
    assert left < face[0] and top < face[1] and left + width > face[2] and top + height > face[3]
    assert width == pytest.approx(200 * 1.6 * 512 / 384, rel=0.01)  # the face plus margins fills the height
    assert kps_in_crop(plan, 0, kps[:3]).shape == (3, 2)
    restored = CropPlan.load(plan.save(tmp_path / "plan.json"))
    assert restored.frame_size == (1000, 800) and restored.crop_size == (512, 384)
    assert np.allclose(restored.boxes, plan.boxes, atol=1e-3) and (restored.shots == plan.shots).all()
    (tmp_path / "bad.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match="not a crop plan file"):
        CropPlan.load(tmp_path / "bad.json")


def test_observe_faces_follows_one_person_and_refuses_a_faceless_video():
    frames = [np.zeros((200, 300, 3), np.uint8)] * 4
    left, right = face_at(80, 100, 60), face_at(220, 100, 60)
    moved = face_at(85, 100, 60)
    detector = FakeDetector([[left, right], [right, moved], [], [right, moved]])
    seen = observe_faces(frames, detector, face_index=0, fps=25)
    assert seen.valid.tolist() == [True, True, False, True]
    assert seen.boxes[1, 0] == pytest.approx(55) and seen.boxes[3, 0] == pytest.approx(55)  # stays on the left face
    with pytest.raises(ValueError, match="no face found with face_index 3 in any of the 2 frame"):
        observe_faces(frames[:2], FakeDetector([[left, right]] * 2), face_index=3)


# --- crops -----------------------------------------------------------------------------------


def no_dark_band(crop):
    """Every row and column of the crop is as bright as the picture's (Lanczos may ring a little)."""
    return min(crop.mean(axis=(1, 2)).min(), crop.mean(axis=(0, 2)).min()) > 60 and crop.min() >= 20


def test_a_face_at_the_border_is_cropped_without_a_black_band():
    image = textured_frame(640, 480)
    touching = one_box_plan((640, 480), (30, 240), face=100)
    left, top, width, height = pixel_box(touching.boxes[0])
    assert left == 0 and left + width <= 640  # shifted inside, face off-centre
    crop = crop_frame(image, touching, 0)
    assert crop.shape == (512, 512, 3) and no_dark_band(crop)
    filling = one_box_plan((640, 480), (320, 240), face=400)  # box larger than the frame: reflected
    left, top, width, height = pixel_box(filling.boxes[0])
    assert width > 640 and top < 0
    assert no_dark_band(crop_frame(image, filling, 0))


def test_downscaling_averages_instead_of_aliasing():
    stripes = np.zeros((400, 400, 3), np.uint8)
    stripes[:, ::2] = 255
    small = resized(stripes, 100, 100)
    assert abs(float(small.mean()) - 127.5) < 1 and small.std() < 1


def test_even_size_rule():
    assert even_size(1921, 1081) == (1920, 1080) and even_size(1920, 1080) == (1920, 1080)
    with pytest.raises(ValueError, match="too small"):
        even_size(1, 10)


# --- paste-back ------------------------------------------------------------------------------


def test_outside_the_mask_the_original_stays_inside_it_the_generated_crop():
    image = textured_frame(641, 481)  # odd: the output loses the last column and row
    plan = one_box_plan((641, 481), (300, 220), face=150)
    generated = np.random.default_rng(2).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    (out,) = pasted_chunks([generated[None]], [image], plan, settings=PasteSettings(feather=0.1, colour_match=False))
    assert out.shape == (1, 480, 640, 3)
    left, top, width, height = pixel_box(plan.boxes[0])
    mask, _ = paste_mask(plan, 0, "head", 0.1)
    full_mask = np.zeros(image.shape[:2], np.float32)
    full_mask[top:top + height, left:left + width] = mask
    full_mask = full_mask[:480, :640]
    outside, inner = full_mask == 0, full_mask == 1
    assert inner.sum() > 0.2 * width * height and (0 < full_mask[~outside & ~inner]).all()
    assert (mask[0] == 0).all() and (mask[:, -1] == 0).all()  # soft edge ends inside the box
    assert np.array_equal(out[0][outside], image[:480, :640][outside])
    expected = np.zeros_like(image)
    expected[top:top + height, left:left + width] = resized(generated, width, height)
    assert np.array_equal(out[0][inner], expected[:480, :640][inner])


def test_the_feather_width_is_a_parameter():
    plan = one_box_plan((800, 600), (400, 300), face=200)
    narrow, _ = paste_mask(plan, 0, "head", 0.02)
    wide, _ = paste_mask(plan, 0, "head", 0.15)
    zone = lambda mask: int(((mask > 0) & (mask < 1)).sum())  # noqa: E731
    assert zone(wide) > 4 * zone(narrow)


def test_colour_match_cuts_the_seam_error_at_least_5x():
    image = textured_frame(800, 600, seed=3)
    plan = one_box_plan((800, 600), (400, 300), face=180)
    perfect = crop_frame(image, plan, 0)
    cast = np.clip(perfect.astype(np.float32) * [0.8, 1.05, 1.15] + [25, -10, 5], 0, 255).astype(np.uint8)
    left, top, width, height = pixel_box(plan.boxes[0])
    _, ring = paste_mask(plan, 0, "head", 0.08)

    def seam_error(colour):
        canvas = image.copy()
        paste_into(canvas, cast, plan, 0, 0.08, colour)
        region = (slice(top, top + height), slice(left, left + width))
        difference = canvas[region][ring].astype(np.float32) - image[region][ring].astype(np.float32)
        return float(np.abs(difference.mean(axis=0)).mean()), float(np.abs(difference).mean())

    (without, pixel_without), (matched, pixel_matched) = seam_error(None), seam_error(ColourMatch())
    print(f"seam ring mean colour error (RGB levels): {without:.2f} without colour match, {matched:.3f} with "
          f"({without / matched:.0f}x); per-pixel error {pixel_without:.2f} -> {pixel_matched:.2f}")
    assert without / matched >= 5


# --- streaming -------------------------------------------------------------------------------


class AliveFrames:
    """Counts full-resolution frames alive at once (each array registered, released when freed)."""

    def __init__(self):
        self.alive = self.peak = 0

    def track(self, array, frames=1):
        self.alive += frames
        self.peak = max(self.peak, self.alive)
        weakref.finalize(array, self._release, frames)
        return array

    def _release(self, frames):
        self.alive -= frames


def stream_peaks(length, chunk=4, size=(160, 120)):
    """(peak frames alive, peak traced bytes) pasting `length` frames of a video."""
    centres = np.stack([np.linspace(70, 90, length), np.full(length, 60)], -1)
    plan = plan_from_observations(observations(centres, np.full(length, 30), size), (64, 64))
    counter = AliveFrames()
    base = textured_frame(*size)

    def originals():
        for index in range(length):
            yield counter.track(np.roll(base, index, axis=1))

    def generated():
        for start in range(0, length, 3):
            yield np.full((min(3, length - start), 64, 64, 3), 200, np.uint8)

    tracemalloc.start()
    written = 0
    for out in pasted_chunks(generated(), originals(), plan, settings=PasteSettings(chunk=chunk)):
        counter.track(out, len(out))
        written += len(out)
        del out
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert written == length
    return counter.peak, peak_bytes


def test_memory_is_flat_in_video_length():
    chunk, frame_bytes = 4, 160 * 120 * 3
    short_frames, short_bytes = stream_peaks(30, chunk)
    long_frames, long_bytes = stream_peaks(300, chunk)
    assert short_frames == long_frames <= chunk + 2
    assert long_bytes < (2 * chunk + 6) * frame_bytes and long_bytes < 1.2 * short_bytes


def test_pingpong_plays_the_video_back_and_forth():
    assert pingpong_indices(9, 4, 30, 30).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert pingpong_indices(3, 10, 30, 15).tolist() == [0, 2, 4]
    assert pingpong_indices(3, 1, 25, 30).tolist() == [0, 0, 0]


def test_video_frames_at_serves_backward_requests(tmp_path):
    frames = np.stack([np.full((32, 48, 3), 10 * i, np.uint8) for i in range(12)])
    path = write_mp4(frames, tmp_path / "ramp.mp4", 30)
    indices = pingpong_indices(30, 12, 30, 30)
    got = [int(np.median(frame)) for frame in video_frames_at(path, indices, block=4)]
    assert np.abs(np.array(got) - 10 * indices).max() <= 3
    with pytest.raises(ValueError, match="the video has 12 frames"):
        list(video_frames_at(path, [12]))
