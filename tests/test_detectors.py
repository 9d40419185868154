"""Face detectors (one module per backend), face selection, track extraction, and the demo portrait."""
import itertools
from pathlib import Path

import numpy as np
import pytest

from vexpress_core import demo, video
from vexpress_core import detectors as det
from vexpress_core import keypoints as kp
from vexpress_core.detectors import Face
from fake_detectors import FakeDetector


@pytest.fixture(scope="module")
def retinaface():
    return det.RetinaFaceDetector()


def sample_dirs(samples_dir):
    return sorted(p.parent for p in samples_dir.glob("*/kps.pth"))


def face_at(x, y, size=100.0, score=0.99):
    kps = np.array([[x - 20, y], [x + 20, y], [x, y + 20], [x - 15, y + 40], [x + 15, y + 40]], np.float32)
    return Face((x - size / 2, y - size / 2, x + size / 2, y + size / 2), kps, score)


# --- detection -------------------------------------------------------------------------------


def test_retinaface_matches_published_kps_on_first_frames(samples_dir, retinaface):
    dirs = sample_dirs(samples_dir)
    assert len(dirs) >= 2
    for sample in dirs:
        published = kp.load_kps_pth(sample / "kps.pth").points[0]
        frame = next(video.read_video_frames(sample / "gt.mp4", kp.PUBLISHED_KPS_FRAME_SIZE))
        detected = det.reference_keypoints(frame, retinaface)
        eye_distance = np.linalg.norm(published[0] - published[1])
        errors = np.linalg.norm(detected - published, axis=-1) / eye_distance
        assert errors.max() < 0.10, f"{sample.name}: errors {errors} of the eye distance"


def test_extract_track_from_video_reads_fps_and_size(samples_dir):
    sample = sample_dirs(samples_dir)[0]
    fps, length = video.video_fps_and_length(sample / "gt.mp4")
    seen = []
    detector = FakeDetector([[face_at(100, 100)]] * (length or 10_000))
    track = det.extract_track_from_video(sample / "gt.mp4", detector, progress=lambda i, n: seen.append((i, n)),
                                        size=(320, 240))
    assert track.fps == pytest.approx(fps) and track.frame_size == (320, 240)
    assert len(track) == detector.calls and seen[-1] == (len(track), length)
    first = next(video.read_video_frames(sample / "gt.mp4", (320, 240)))
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8


def test_extract_track_with_retinaface_follows_published_track(samples_dir, retinaface):
    sample = sample_dirs(samples_dir)[-1]
    published = kp.load_kps_pth(sample / "kps.pth").points[:8]
    frames = itertools.islice(video.read_video_frames(sample / "gt.mp4", kp.PUBLISHED_KPS_FRAME_SIZE), len(published))
    track = det.extract_track(frames, retinaface, fps=30)
    eye_distance = np.linalg.norm(published[:, 0] - published[:, 1], axis=-1)
    assert (np.linalg.norm(track.points - published, axis=-1) / eye_distance[:, None]).max() < 0.15


def test_extract_track_fills_frames_without_a_face():
    faces = [[], [face_at(100, 100)], [], [], [face_at(130, 100)], []]
    frames = np.zeros((len(faces), 48, 64, 3), np.uint8)
    track = det.extract_track(frames, FakeDetector(faces), fps=25)
    assert track.valid.tolist() == [False, True, False, False, True, False]
    assert track.frame_size == (64, 48) and track.fps == 25
    assert np.allclose(track.points[:, 2, 0], [100, 100, 110, 120, 130, 130])
    with pytest.raises(ValueError, match="no face found in any of the 2 frames"):
        det.extract_track(frames[:2], FakeDetector([[], []]), fps=25)


def test_face_selection_largest_or_by_position():
    small_left, big_right = face_at(100, 100, size=50), face_at(300, 100, size=120)
    image = np.zeros((8, 8, 3), np.uint8)
    assert np.array_equal(det.reference_keypoints(image, FakeDetector([[small_left, big_right]])), big_right.kps[:3])
    picked = det.reference_keypoints(image, FakeDetector([[big_right, small_left]]), face_index=0)
    assert np.array_equal(picked, small_left.kps[:3])
    with pytest.raises(ValueError, match="no face found in the reference image"):
        det.reference_keypoints(image, FakeDetector([[]]))
    with pytest.raises(ValueError, match="face_index 2"):
        det.reference_keypoints(image, FakeDetector([[small_left]]), face_index=2)


def test_retinaface_finds_no_face_in_a_blank_image(retinaface):
    assert retinaface.detect(np.full((256, 256, 3), 127, np.uint8)) == []


def test_retinaface_maps_large_images_back_to_pixels(samples_dir, retinaface):
    frame = next(video.read_video_frames(sample_dirs(samples_dir)[0] / "gt.mp4"))
    native = det.reference_keypoints(frame, retinaface)
    height, width = frame.shape[:2]
    small = det.RetinaFaceDetector(max_side=max(height, width) // 2)
    assert np.abs(det.reference_keypoints(frame, small) - native).max() < 0.1 * np.linalg.norm(native[0] - native[1])


class FakeFaceAnalysis:
    """Stands in for insightface.app.FaceAnalysis: records its use, returns insightface-like faces."""

    instances = []

    class _Face(dict):
        __getattr__ = dict.__getitem__

    def __init__(self, **kwargs):
        self.kwargs, self.prepared, self.images = kwargs, None, []
        FakeFaceAnalysis.instances.append(self)

    def prepare(self, **kwargs):
        self.prepared = kwargs

    def get(self, image_bgr):
        self.images.append(image_bgr)
        return [
            self._Face(bbox=np.array([10, 10, 30, 30], np.float32), kps=np.arange(10.0).reshape(5, 2), det_score=0.9),
            self._Face(bbox=np.array([40, 0, 100, 70], np.float32), kps=np.full((5, 2), 7.0), det_score=0.8),
        ]


def fake_buffalo_l(tmp_path):
    pack = tmp_path / "insightface_models" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"")
    return tmp_path


def test_insightface_adapter_without_insightface(tmp_path):
    model_dir = fake_buffalo_l(tmp_path)
    detector = det.InsightFaceDetector(model_dir, det_size=320, face_analysis_cls=FakeFaceAnalysis)
    app = FakeFaceAnalysis.instances[-1]
    assert app.kwargs["name"] == "buffalo_l" and Path(app.kwargs["root"]) == model_dir / "insightface_models"
    assert app.kwargs["providers"] == ["CPUExecutionProvider"] and app.prepared["det_size"] == (320, 320)
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 255
    kps = det.reference_keypoints(image, detector)
    assert app.images[-1][0, 0].tolist() == [0, 0, 255]  # insightface gets BGR
    assert np.array_equal(kps, np.full((3, 2), 7, np.float32))  # the larger face, kps[:3]
    faces = detector.detect(image)
    assert faces[0].bbox == (10.0, 10.0, 30.0, 30.0) and faces[0].score == pytest.approx(0.9)
    assert faces[0].kps.dtype == np.float32 and faces[0].kps.shape == (5, 2)


def test_insightface_adapter_needs_its_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="det_10g.onnx"):
        det.InsightFaceDetector(tmp_path, face_analysis_cls=FakeFaceAnalysis)


def test_make_detector_choices(tmp_path, monkeypatch):
    assert isinstance(det.make_detector("auto", tmp_path), det.RetinaFaceDetector)
    assert isinstance(det.make_detector("retinaface"), det.RetinaFaceDetector)
    with pytest.raises(ValueError, match="auto, insightface, retinaface"):
        det.make_detector("dlib")
    with pytest.raises(ValueError, match="model_dir"):
        det.make_detector("insightface")
    model_dir = fake_buffalo_l(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "insightface", None)  # as if not installed
    assert isinstance(det.make_detector("auto", model_dir), det.RetinaFaceDetector)
    with pytest.raises(RuntimeError, match="pip install insightface"):
        det.make_detector("insightface", model_dir)


# --- demo assets -----------------------------------------------------------------------------


def test_demo_portrait_is_found_by_retinaface(retinaface):
    image, kps = demo.load_demo_portrait()
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8 and kps.shape == (3, 2)
    assert (demo.ASSETS_DIR / "portrait.png").stat().st_size < 200_000
    detected = det.reference_keypoints(image, retinaface)
    assert (np.linalg.norm(detected - kps, axis=-1) / np.linalg.norm(kps[0] - kps[1])).max() < 0.15
