import dataclasses
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from vexpress_core import keypoints as kp
from vexpress_core.keypoints import KeypointTrack


@pytest.fixture(scope="module")
def preprocess_io(fixture_dir):
    return torch.load(fixture_dir / "preprocess_io.pt", weights_only=True)


def track_of(points, fps=None, frame_size=(512, 512)):
    return KeypointTrack(np.asarray(points, np.float32), frame_size, fps)


def ramp_track(length, fps=None):
    """Track whose every coordinate equals the frame index (easy to check interpolation)."""
    return track_of(np.broadcast_to(np.arange(length, dtype=np.float32)[:, None, None], (length, 3, 2)), fps)

# --- drawing ---------------------------------------------------------------------------------


def test_draw_kps_image_matches_published_pixels(preprocess_io):
    expected = preprocess_io["kps_images_hwc_uint8"].numpy()
    for kps, image in zip(preprocess_io["kps_frames"].numpy(), expected):
        drawn = kp.draw_kps_image(preprocess_io["height"], preprocess_io["width"], kps)
        assert drawn.dtype == np.uint8 and drawn.shape == image.shape
        assert np.array_equal(drawn, image)


def test_draw_track_draws_a_window_in_output_pixels(preprocess_io):
    height, width = preprocess_io["height"], preprocess_io["width"]
    points = preprocess_io["kps_frames"].numpy()
    half_size_track = KeypointTrack(points / 2, (width // 2, height // 2))
    window = kp.draw_track(half_size_track, width, height, 1, len(points))
    assert window.shape == (len(points) - 1, height, width, 3)
    assert np.array_equal(window, preprocess_io["kps_images_hwc_uint8"].numpy()[1:])


# --- resampling ------------------------------------------------------------------------------


def test_stretch_matches_published_interpolation(preprocess_io):
    expected = preprocess_io["kps_interpolated_200"].numpy()
    track = track_of(preprocess_io["kps_sequence"].numpy())
    resampled = kp.resample_track(track, len(expected), "stretch")
    assert resampled.points.shape == expected.shape
    assert np.abs(resampled.points - expected).max() <= 1e-4


def test_stretch_cuts_a_longer_track():
    resampled = kp.resample_track(ramp_track(50), 20, "stretch", out_fps=25)
    assert np.array_equal(resampled.points[:, 0, 0], np.arange(20))
    assert resampled.fps == 25


@pytest.mark.parametrize("track_fps, out_fps, expected", [
    (30, 15, [0, 2, 4, 6, 8]),
    (30, 60, [0, 0.5, 1, 1.5, 2, 2.5]),
])
def test_time_resampling_follows_the_driving_fps(track_fps, out_fps, expected):
    resampled = kp.resample_track(ramp_track(10, track_fps), len(expected), "time", out_fps)
    assert len(resampled) == len(expected) and resampled.fps == out_fps
    assert np.allclose(resampled.points[:, 1, 1], expected)


def test_time_resampling_plays_a_short_track_back_and_forth():
    resampled = kp.resample_track(ramp_track(4, 30), 11, "time", 30)
    assert np.allclose(resampled.points[:, 0, 0], [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2])


def test_resampling_marks_frames_touching_invalid_ones():
    track = dataclasses.replace(ramp_track(3, 30), valid=np.array([True, False, True]))
    resampled = kp.resample_track(track, 5, "time", 60)
    assert resampled.valid.tolist() == [True, False, False, False, True]


def test_time_resampling_needs_both_fps():
    with pytest.raises(ValueError, match="fps"):
        kp.resample_track(ramp_track(4), 8, "time", 30)
    with pytest.raises(ValueError, match="out_fps"):
        kp.resample_track(ramp_track(4, 30), 8, "time")
    with pytest.raises(ValueError, match="stretch, time"):
        kp.resample_track(ramp_track(4, 30), 8, "warp")


def test_default_resample_mode_depends_on_fps():
    assert kp.default_resample_mode(ramp_track(3)) == "stretch"
    assert kp.default_resample_mode(ramp_track(3, 25)) == "time"


# --- track files -----------------------------------------------------------------------------


def test_every_sample_kps_pth_loads(samples_dir):
    files = sorted(samples_dir.glob("*/*kps.pth"))
    assert len(files) >= 2
    # torch's own weights_only loader, allowed the same numpy globals, is the independent reference.
    allowed = [(np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
               np.dtypes.Float32DType]
    for path in files:
        track = kp.load_kps_pth(path)
        with torch.serialization.safe_globals(allowed):
            expected = np.stack(torch.load(path, weights_only=True))
        assert track.points.dtype == np.float32 and track.points.shape == expected.shape
        assert np.array_equal(track.points, expected)
        assert track.frame_size == kp.PUBLISHED_KPS_FRAME_SIZE and track.fps is None and track.valid.all()


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_kps_archive(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("kps/data.pkl", payload)
        archive.writestr("kps/version", "3\n")
    return path


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    path = write_kps_archive(tmp_path / "evil.pth", pickle.dumps([_RunsShell(marker)], protocol=2))
    with pytest.raises(ValueError, match="not allowed") as error:
        kp.load_kps_pth(path)
    assert str(path) in str(error.value) and "system" in str(error.value)
    assert not marker.exists()


def test_restricted_unpickler_refuses_tensors(tmp_path):
    path = tmp_path / "tensors.pth"
    torch.save([torch.zeros(3, 2)], path)
    with pytest.raises(ValueError, match="_rebuild_tensor"):
        kp.load_kps_pth(path)


_STORAGE = object()


class _StoragePickler(pickle.Pickler):
    """Writes _STORAGE as a torch-style persistent storage id."""

    def persistent_id(self, obj):
        return ("storage", "FloatStorage", "0", "cpu", 6) if obj is _STORAGE else None


def test_restricted_unpickler_refuses_persistent_storages(tmp_path):
    payload = io.BytesIO()
    _StoragePickler(payload, protocol=2).dump([_STORAGE])
    with pytest.raises(ValueError, match="tensor storage"):
        kp.load_kps_pth(write_kps_archive(tmp_path / "storage.pth", payload.getvalue()))


def bad_kps_files(tmp_path):
    text = tmp_path / "text.pth"
    text.write_text("hello")
    empty, wrong_shape, not_list = tmp_path / "empty.pth", tmp_path / "shape.pth", tmp_path / "array.pth"
    torch.save([], empty)
    torch.save([np.zeros((4, 2), np.float32)], wrong_shape)
    torch.save(np.zeros((2, 3, 2), np.float32), not_list)
    return [
        (tmp_path / "missing.pth", "file not found"),
        (text, "not a zip"),
        (empty, "empty"),
        (wrong_shape, r"entry 0 is float32 \[4, 2\]"),
        (not_list, "not a list"),
    ]


def test_bad_kps_files_give_clear_errors(tmp_path):
    for path, reason in bad_kps_files(tmp_path):
        with pytest.raises(ValueError, match=reason) as error:
            kp.load_kps_pth(path)
        assert str(path) in str(error.value) and "[3,2]" in str(error.value)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_own_track_format_round_trips(tmp_path, suffix):
    track = KeypointTrack(np.random.default_rng(0).random((7, 3, 2), np.float32) * 300, (640, 360), 29.97,
                          np.array([True, False] + [True] * 5))
    path = tmp_path / f"track{suffix}"
    kp.save_track(track, path)
    loaded = kp.load_any_track(path)
    assert np.array_equal(loaded.points, track.points) and np.array_equal(loaded.valid, track.valid)
    assert loaded.frame_size == (640, 360) and loaded.fps == pytest.approx(29.97)
    kp.save_track(dataclasses.replace(track, fps=None), path)
    assert kp.load_track(path).fps is None


def test_load_any_track_dispatches_and_rejects(tmp_path, samples_dir):
    assert len(kp.load_any_track(next(samples_dir.glob("*/kps.pth")))) > 0
    with pytest.raises(ValueError, match=r"\.pth"):
        kp.load_any_track(tmp_path / "track.csv")
    broken = tmp_path / "broken.json"
    broken.write_text('{"points": [[[1, 2]]]}')
    with pytest.raises(ValueError, match="broken.json"):
        kp.load_track(broken)


@pytest.mark.parametrize("kwargs, message", [
    ({"points": np.zeros((4, 2, 2))}, r"\[N,3,2\]"),
    ({"points": np.zeros((0, 3, 2))}, "empty"),
    ({"points": np.full((2, 3, 2), np.nan)}, "NaN"),
    ({"frame_size": (0, 512)}, "frame_size"),
    ({"fps": -1.0}, "fps"),
    ({"valid": np.ones(3, bool)}, "valid"),
])
def test_track_validation(kwargs, message):
    arguments = {"points": np.zeros((2, 3, 2)), "frame_size": (512, 512), **kwargs}
    with pytest.raises(ValueError, match=message):
        KeypointTrack(**arguments)


def test_scaled_to():
    track = track_of([[[10, 20], [30, 40], [50, 60]]], frame_size=(100, 200))
    scaled = track.scaled_to(200, 100)
    assert scaled.frame_size == (200, 100)
    assert np.allclose(scaled.points, [[[20, 10], [60, 20], [100, 30]]])
    assert len(scaled) == 1


# --- retargeting -----------------------------------------------------------------------------

REFERENCE = np.array([[200.0, 250.0], [300.0, 250.0], [250.0, 310.0]], np.float32)


def driving_track():
    """Frame 1 has the reference's eye-nose ratio but a different size; the others are turned."""
    frames = [
        [[100, 100], [160, 110], [110, 150]],
        [[100, 100], [150, 100], [125, 130]],
        [[110, 105], [170, 112], [128, 150]],
    ]
    return track_of(frames)


def test_fix_face_repeats_the_reference():
    points = kp.retarget_track(REFERENCE, None, 5, "fix_face")
    assert points.shape == (5, 3, 2) and np.array_equal(points, np.repeat(REFERENCE[None], 5, 0))


def test_no_retarget_keeps_the_track():
    track = driving_track()
    assert np.array_equal(kp.retarget_track(REFERENCE, track, len(track), "no_retarget"), track.points)


def test_naive_retarget_scales_from_the_closest_ratio_frame_and_aligns_the_nose():
    track = driving_track()
    points = kp.retarget_track(REFERENCE, track, len(track), "naive_retarget")
    left, right, nose = points[1]
    assert np.linalg.norm(right - left) == pytest.approx(100.0, rel=1e-5)  # reference eye distance
    assert nose[1] - left[1] == pytest.approx(60.0, rel=1e-5)  # reference nose-to-eye-line distance
    assert np.allclose(points[0, 2], REFERENCE[2])


def test_offset_retarget_moves_against_half_the_nose_displacement():
    track = driving_track()
    points = kp.retarget_track(REFERENCE, track, len(track), "offset_retarget")
    scale = np.array([100 / 50, 60 / 30])  # from frame 1, the closest eye-nose ratio
    nose_motion = (track.points[:, 2] - track.points[0, 2]) * scale
    assert np.allclose(points, REFERENCE[None] - nose_motion[:, None] / 2, atol=1e-4)


def test_retarget_errors():
    with pytest.raises(ValueError, match="fix_face, no_retarget, offset_retarget, naive_retarget"):
        kp.retarget_track(REFERENCE, driving_track(), 3, "mirror")
    with pytest.raises(ValueError, match="resample"):
        kp.retarget_track(REFERENCE, driving_track(), 4, "naive_retarget")
    with pytest.raises(ValueError, match="needs a keypoint track"):
        kp.retarget_track(REFERENCE, None, 3, "offset_retarget")


def test_output_track_scales_resamples_and_retargets():
    track = KeypointTrack(driving_track().points * np.array([0.5, 0.25]), (256, 64), fps=None)
    result = kp.output_track(REFERENCE, track, 512, 256, 6, "no_retarget", fps=30)
    assert result.frame_size == (512, 256) and len(result) == 6 and result.fps == 30
    assert np.allclose(result.points, kp.resample_track(driving_track(), 6).points, atol=1e-4)
    fixed = kp.output_track(REFERENCE, None, 512, 512, 4)
    assert np.array_equal(fixed.points, np.repeat(REFERENCE[None], 4, 0))
    with pytest.raises(ValueError, match="needs a keypoint track"):
        kp.output_track(REFERENCE, None, 512, 512, 4, "naive_retarget")
