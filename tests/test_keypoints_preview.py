import numpy as np
import pytest

from vexpress_core import keypoints as kp
from vexpress_core.keypoints.preview import overlay_track, preview_strip


def circle_track(frames=12, size=(256, 192), fps=12.0):
    """Eyes and nose moving along a small circle, in a (width, height) frame."""
    angle = np.linspace(0, 2 * np.pi, frames)[:, None]
    face = np.array([[100.0, 80.0], [150.0, 80.0], [125.0, 110.0]])
    points = face + 10 * np.stack([np.cos(angle), np.sin(angle)], -1)
    return kp.KeypointTrack(points, size, fps)


def assert_dots_at(frames, points):
    for frame, kps in zip(frames, points):
        for (x, y), colour in zip(kps, kp.KPS_COLOURS):
            assert tuple(frame[int(y), int(x)]) == colour


def test_dots_sit_at_the_track_positions_over_a_photo():
    track = circle_track()
    photo = np.full((192, 256, 3), 90, np.uint8)
    frames = overlay_track(photo, track)
    assert frames.shape == (12, 192, 256, 3) and frames.dtype == np.uint8
    assert_dots_at(frames, track.points)
    assert (photo == 90).all(), "the photo is not changed"
    # far from the face the photo shows through untouched
    assert (frames[:, 180:, :20] == 90).all()


def test_the_track_is_scaled_to_driving_frames_of_another_size():
    track = circle_track()
    driving = np.random.default_rng(0).integers(0, 256, (12, 384, 512, 3), dtype=np.uint8)
    frames = overlay_track(driving, track)
    assert frames.shape == driving.shape
    assert_dots_at(frames, track.points * 2)
    # frames differ where the drawing is not
    assert np.array_equal(frames[:, 370:, :30], driving[:, 370:, :30])


def test_the_nose_leaves_a_trail():
    track = circle_track()
    photo = np.zeros((192, 256, 3), np.uint8)
    with_trail = overlay_track(photo, track, trail_seconds=1.0)
    without = overlay_track(photo, track, trail_seconds=0.0)
    trail_pixels = (with_trail[-1] != without[-1]).any(axis=-1)
    assert trail_pixels.sum() > 50
    assert np.array_equal(with_trail[0], without[0])


def test_bad_backgrounds_are_refused():
    track = circle_track()
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay_track(np.zeros((192, 256, 3), np.float32), track)
    with pytest.raises(ValueError, match="give 1 or 12"):
        overlay_track(np.zeros((5, 192, 256, 3), np.uint8), track)


def test_preview_strip_puts_frames_side_by_side():
    frames = np.zeros((10, 64, 48, 3), np.uint8)
    frames[9] = 255
    strip = preview_strip(frames, count=4, height=32)
    assert strip.shape == (32, 4 * 24, 3)
    assert (strip[:, -24:] == 255).all() and (strip[:, :24] == 0).all()
