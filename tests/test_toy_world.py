"""The synthetic talking-head world (training/toy): identities, speech, mouth rule, head motion, the
exact V-Kps points the pack's detector agrees with, and `python training toy render`."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile

from vexpress_core.detectors import make_detector
from vexpress_core.keypoints import load_track
from vexpress_core.video import probe_video, read_video_frames
from vexpress_training.toy.clips import render_clip
from vexpress_training.toy.metrics import mouth_opening_measure, pause_frames, pearson
from vexpress_training.toy.speech import SAMPLE_RATE, babble, mouth_opening
from vexpress_training.toy.world import NEUTRAL, frame_points, head_track, identity, render

from conftest import REPO


def test_identities_are_seeded_and_differ():
    assert identity(5) == identity(5)
    people = [identity(seed) for seed in range(40)]
    assert len({person.skin for person in people}) == 40
    assert len({person.hair_style for person in people}) == 4
    widths = [person.head_rx for person in people]
    assert max(widths) / min(widths) > 1.15
    a, b = (render(identity(seed), NEUTRAL, 0.0, 0.0, 64) for seed in (1, 2))
    assert np.abs(a.astype(int) - b).mean() > 20


def test_babble_has_syllables_and_pauses_of_a_third_to_one_and_a_half_seconds():
    wave = babble(3, 12.0)
    assert wave.dtype == np.float32 and len(wave) == 12 * SAMPLE_RATE and np.array_equal(wave, babble(3, 12.0))
    opening = mouth_opening(wave, 300, 25.0)
    closed = np.append(opening <= 0, False)
    runs, start = [], None
    for index, value in enumerate(closed):
        if value and start is None:
            start = index
        elif not value and start is not None:
            runs.append((index - start) / 25.0)
            start = None
    pauses = [run for run in runs[1:-1] if run >= 0.28]
    assert pauses and min(pauses) >= 0.28 and max(pauses) <= 1.6
    assert (opening > 0.5).mean() > 0.2


def test_the_mouth_is_closed_in_silence_and_opens_with_loudness():
    wave = np.zeros(2 * SAMPLE_RATE, np.float32)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    wave[SAMPLE_RATE:] = np.sin(2 * np.pi * 200 * t) * np.linspace(0.01, 0.5, SAMPLE_RATE)
    opening = mouth_opening(wave, 50, 25.0)
    assert (opening[:24] == 0).all() and opening[-1] == 1.0
    assert (np.diff(opening[26:]) >= 0).all()


def test_the_drawn_mouth_follows_the_rule():
    wave = babble(1001, 6.0)
    clip = render_clip(1001, wave, 1001)
    measured = mouth_opening_measure(clip.frames, clip.points)
    assert pearson(measured, clip.opening) > 0.95
    assert pause_frames(clip.opening, clip.fps).any() or clip.opening.min() == 0


def test_head_tracks_stay_in_range_and_move_smoothly():
    poses = head_track(9, 500, 25.0)
    dx = np.array([pose.dx for pose in poses])
    roll = np.array([pose.roll for pose in poses])
    scale = np.array([pose.scale for pose in poses])
    assert np.abs(dx).max() <= 0.075 and np.ptp(dx) > 0.03
    assert np.abs(roll).max() <= 12 and np.abs(scale - 1).max() <= 0.1
    assert np.abs(np.diff(dx)).max() < 0.01
    assert all(pose == NEUTRAL for pose in head_track(None, 10, 25.0))


@pytest.mark.parametrize("size", [64, 256])
def test_the_default_detector_finds_toy_faces_at_the_rendered_points(size):
    detector = make_detector("retinaface")
    errors = []
    for seed in range(1000, 1030):
        person = identity(seed)
        pose = head_track(seed, 40, 25.0)[seed % 40] if seed % 2 else NEUTRAL
        faces = detector.detect(render(person, pose, (seed % 5) / 4, 0.0, size))
        truth = frame_points(person, pose, size)
        assert faces, f"no face found for identity {seed} at {size} px"
        found = max(faces, key=lambda face: face.area).kps[:3] - 0.5  # detector: pixel edges; track: pixel centres
        errors.append(np.linalg.norm(found - truth, axis=1).max() / np.linalg.norm(truth[1] - truth[0]))
    assert np.median(errors) < 0.15 and max(errors) < 0.35


def test_render_command_writes_the_four_files(tmp_path):
    out = tmp_path / "case"
    command = [sys.executable, "training", "toy", "render", "--identity", "1003", "--babble", "4", "--seconds", "2",
               "--pose", "11", "--size", "64", "--fps", "25", "--out", str(out)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    video = probe_video(out / "gt.mp4")
    assert (video["frames"], video["width"], video["height"]) == (50, 64, 64) and video["fps"] == 25.0
    track = load_track(out / "kps.npz")
    assert track.points.shape == (50, 3, 2) and track.frame_size == (64, 64) and track.fps == 25.0
    clip = render_clip(1003, babble(4, 2.0), 11)
    np.testing.assert_allclose(track.points, clip.points)
    frames = np.stack(list(read_video_frames(out / "gt.mp4")))
    assert np.abs(frames.astype(float) - clip.frames).mean() < 3
    wave, rate = soundfile.read(out / "speech.wav")
    assert rate == SAMPLE_RATE and len(wave) == 2 * SAMPLE_RATE
    reference = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "ref.png"))
    np.testing.assert_array_equal(reference, clip.reference)


def test_render_command_takes_the_first_seconds_of_a_speech_file(tmp_path, samples_dir):
    out = tmp_path / "real"
    command = [sys.executable, "training", "toy", "render", "--identity", "1004", "--audio",
               str(samples_dir / "short_case_AOC" / "aud.mp3"), "--seconds", "1.5", "--out", str(out)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    assert probe_video(out / "gt.mp4")["frames"] == 37
    assert soundfile.info(out / "speech.wav").frames == 24000


def test_render_command_rejects_bad_input(tmp_path):
    command = [sys.executable, "training", "toy", "render", "--identity", "1", "--audio", str(tmp_path / "none.wav"),
               "--out", str(tmp_path / "x")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "none.wav is not a file" in result.stderr
    assert not (tmp_path / "x").exists()
