import numpy as np
import pytest

from vexpress_core import keypoints as kp
from vexpress_core.keypoints import speech_motion as sm
from vexpress_core.audio import SAMPLE_RATE, load_audio

FPS = 25.0
WIDTH = 512
SILENCE_SECONDS = 1.0


@pytest.fixture(scope="module")
def clip(samples_dir):
    """A sample's speech with one second of silence inserted in the middle, and its reference face."""
    speech = load_audio(samples_dir / "short_case_AOC" / "aud.mp3")
    middle = len(speech) // 2
    waveform = np.concatenate([speech[:middle], np.zeros(int(SILENCE_SECONDS * SAMPLE_RATE), np.float32), speech[middle:]])
    reference = kp.load_kps_pth(samples_dir / "short_case_AOC" / "kps.pth").points[0]
    silence_start = middle / SAMPLE_RATE
    return {
        "waveform": waveform,
        "reference": reference,
        "frames": int(len(waveform) / SAMPLE_RATE * FPS),
        "silence": (silence_start, silence_start + SILENCE_SECONDS),
    }


def motion(clip, scale=1.0, seed=0):
    return sm.speech_motion_points(clip["reference"], clip["waveform"], clip["frames"], FPS, WIDTH, scale, seed)


def head_speed(points, reference):
    """Mean speed of the three points per frame step, in eye distances per second."""
    eye = np.linalg.norm(reference[1] - reference[0])
    return np.linalg.norm(np.diff(points, axis=0), axis=-1).mean(axis=1) * FPS / eye


def test_zero_scale_is_exactly_fix_face(clip):
    fixed = kp.retarget_track(clip["reference"], None, clip["frames"], "fix_face")
    points = motion(clip, scale=0.0)
    assert points.dtype == fixed.dtype and np.array_equal(points, fixed)


def test_the_seed_decides_the_motion(clip):
    first = motion(clip, seed=7)
    assert first.shape == (clip["frames"], 3, 2) and first.dtype == np.float32
    assert np.array_equal(first, motion(clip, seed=7))
    assert np.abs(first - motion(clip, seed=8)).max() > 1.0


@pytest.mark.parametrize("seed", range(4))
def test_motion_stays_within_bounds(clip, seed):
    points = motion(clip, seed=seed)
    extent = sm.motion_extent(clip["reference"], points, WIDTH)
    assert extent["nose_shift"] <= 0.08
    assert extent["roll"] <= 6.0
    assert extent["eye_distance"] <= 0.05
    # and it does move: the nose travels at least 1 % of the frame width
    assert extent["nose_shift"] >= 0.01


def test_the_head_moves_with_the_speech_and_rests_in_silence(clip):
    points = motion(clip)
    speed = head_speed(points, clip["reference"])
    times = (np.arange(len(speed)) + 0.5) / FPS
    start, stop = clip["silence"]
    # the head settles within a quarter second of the pause's edges (a nod may be finishing)
    silent = (times > start + 0.25) & (times < stop - 0.25)
    speaking = (times < start) | (times > stop)
    envelope = sm.speech_features(clip["waveform"], clip["frames"], FPS).envelope
    correlation = np.corrcoef(speed, (envelope[1:] + envelope[:-1]) / 2)[0, 1]
    print(f"head speed: speech {speed[speaking].mean():.3f}, silence {speed[silent].mean():.3f} eye/s; "
          f"correlation with the envelope {correlation:.2f}")
    assert speed[speaking].mean() >= 4 * speed[silent].mean()
    assert correlation >= 0.2


def test_speech_features_find_the_pause(clip):
    features = sm.speech_features(clip["waveform"], clip["frames"], FPS)
    times = np.arange(clip["frames"]) / FPS
    start, stop = clip["silence"]
    middle = (times > start + 0.35) & (times < stop - 0.35)
    assert features.gate[middle].max() < 0.15 and features.envelope[middle].max() == 0
    assert features.gate[times < start - 0.5].mean() > 0.8
    assert features.nods[middle].max() == 0 and (features.nods > 0).sum() >= 2


def test_bad_inputs_are_refused(clip):
    reference, waveform = clip["reference"], clip["waveform"]
    with pytest.raises(ValueError, match="motion_scale"):
        sm.speech_motion_points(reference, waveform, 10, FPS, WIDTH, motion_scale=-1)
    with pytest.raises(ValueError, match="mono waveform"):
        sm.speech_motion_points(reference, np.zeros((2, 100)), 10, FPS, WIDTH)
    with pytest.raises(ValueError, match="reference keypoints"):
        sm.speech_motion_points(reference[:2], waveform, 10, FPS, WIDTH)
    with pytest.raises(ValueError, match="fps"):
        sm.speech_motion_points(reference, waveform, 10, 0, WIDTH)


def test_speech_motion_is_a_retarget_mode(clip):
    context = kp.RetargetContext(clip["waveform"], motion_scale=0.5, motion_seed=3)
    track = kp.output_track(clip["reference"], None, WIDTH, WIDTH, clip["frames"], "speech_motion", fps=FPS, context=context)
    assert track.frame_size == (WIDTH, WIDTH) and track.fps == FPS and len(track) == clip["frames"]
    assert np.array_equal(track.points, motion(clip, scale=0.5, seed=3))
    with pytest.raises(ValueError, match="speech_motion.*RetargetContext"):
        kp.output_track(clip["reference"], None, WIDTH, WIDTH, clip["frames"], "speech_motion", fps=FPS)
