import numpy as np
import pytest

from vexpress_core import keypoints as kp
from vexpress_core.detectors import extract_track_from_video, make_detector
from vexpress_core.keypoints.smoothing import eye_distance, smoothed_points, smoothed_track, track_jerk

SAMPLE = "short_case_tys"


@pytest.fixture(scope="module")
def gt_track(samples_dir):
    """The sample's driving-video track, extracted with the default detector (about 10 s)."""
    return extract_track_from_video(samples_dir / SAMPLE / "gt.mp4", make_detector())


def still_track(frames=60, noise=0.8, fps=25.0, seed=0):
    rng = np.random.default_rng(seed)
    face = np.array([[220, 240], [300, 240], [260, 290]], np.float32)
    return kp.KeypointTrack(face + rng.normal(0, noise, (frames, 3, 2)), (512, 512), fps)


def test_smoothing_cuts_jerk_and_stays_on_the_track(gt_track):
    smooth = smoothed_track(gt_track)
    raw_jerk, jerk = track_jerk(gt_track.points), track_jerk(smooth.points)
    deviation = np.linalg.norm(smooth.points - gt_track.points, axis=-1).mean() / eye_distance(gt_track.points)
    print(f"{SAMPLE}: jerk {raw_jerk:.3f} -> {jerk:.3f} px/frame^2 (x{jerk / raw_jerk:.3f}), deviation {deviation:.2%}")
    assert jerk <= raw_jerk / 3
    assert deviation <= 0.03
    assert smooth.frame_size == gt_track.frame_size and smooth.fps == gt_track.fps
    assert np.array_equal(smooth.valid, gt_track.valid)


@pytest.mark.parametrize("where", [0.3, 0.7])
def test_a_fast_step_is_followed_within_three_frames(gt_track, where):
    points = gt_track.points
    step = 0.2 * eye_distance(points)
    start = int(len(points) * where)
    moved = points.copy()
    moved[start:, :, 0] += step
    # The step as the filter sees it: the smoothed moved track minus the smoothed original.
    response = (smoothed_points(moved, gt_track.fps) - smoothed_points(points, gt_track.fps))[..., 0] / step
    assert np.abs(response[start + 3:] - 1).max() <= 0.1
    assert np.abs(response[: start - 3]).max() <= 0.1


def test_a_blink_survives_while_jitter_goes():
    track = still_track()
    blink = np.zeros_like(track.points)
    depth = 0.1 * eye_distance(track.points)
    blink[30:34, :2, 1] = depth * np.array([0.5, 1.0, 1.0, 0.5])[:, None]
    kept = (smoothed_points(track.points + blink, track.fps) - smoothed_points(track.points, track.fps))[:, :2, 1]
    assert kept.max(axis=0).min() >= 0.4 * depth
    assert track_jerk(smoothed_points(track.points, track.fps)) <= track_jerk(track.points) / 5


def test_zero_strength_is_the_track_itself_and_more_is_smoother():
    track = still_track()
    assert smoothed_track(track, 0) is track
    assert np.array_equal(smoothed_points(track.points, track.fps, 0), track.points)
    jerks = [track_jerk(smoothed_points(track.points, track.fps, s)) for s in (0.5, 1.0, 2.0)]
    assert jerks[0] > jerks[1] > jerks[2]


def test_tracks_without_fps_or_too_short_are_handled():
    assert smoothed_track(kp.KeypointTrack(still_track().points, (512, 512))).points.shape == (60, 3, 2)
    short = still_track(frames=2)
    assert np.array_equal(smoothed_track(short).points, short.points)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "1"])
def test_bad_strength_is_refused(bad):
    with pytest.raises(ValueError, match="smooth must be"):
        smoothed_track(still_track(), bad)
