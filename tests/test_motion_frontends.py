"""Head motion through the front ends: `generate --retarget speech_motion`, `--smooth`, `preview-kps`
on tiny random models, and the V-Kps nodes' motion inputs and overlay."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from comfyui_like import NODES, execute
from vexpress_core import cli, orchestration, pipeline
from vexpress_core.audio import SAMPLE_RATE, load_audio
from vexpress_core.detectors import extract_track_from_video, make_detector
from vexpress_core.keypoints import KPS_COLOURS, KeypointTrack, load_kps_pth, retarget_track, smoothed_track
from vexpress_core.keypoints.speech_motion import speech_motion_points
from vexpress_core.video import probe_video, write_mp4

SAMPLE = "short_case_10"
FAST = ["--width", "64", "--height", "64", "--steps", "1", "--context-frames", "8", "--context-overlap", "2",
        "--device", "cpu"]
BY_ID = NODES.nodes_by_id()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, samples_dir) -> dict:
    """1 s of the sample's speech, its photo, and a small shaky driving video made from the photo."""
    folder = tmp_path_factory.mktemp("motion-inputs")
    speech = load_audio(samples_dir / SAMPLE / "aud.mp3")[: SAMPLE_RATE]
    soundfile.write(folder / "speech.wav", speech, SAMPLE_RATE, subtype="FLOAT")
    with Image.open(samples_dir / SAMPLE / "ref.jpg") as image:
        face = np.asarray(image.convert("RGB").resize((128, 128), Image.BICUBIC))
    shakes = np.random.default_rng(0).integers(-3, 4, (10, 2))
    write_mp4(np.stack([np.roll(face, tuple(s), axis=(0, 1)) for s in shakes]), folder / "driving.mp4", 20)
    return {"speech": folder / "speech.wav", "photo": samples_dir / SAMPLE / "ref.jpg",
            "driving": folder / "driving.mp4", "waveform": speech}


@pytest.fixture
def drawn_tracks(monkeypatch):
    """The tracks `generate` hands to pipeline.denoise."""
    tracks = []
    real = pipeline.denoise

    def spy(models, reference, speech, track, *args, **kwargs):
        tracks.append(track)
        return real(models, reference, speech, track, *args, **kwargs)

    monkeypatch.setattr(pipeline, "denoise", spy)
    return tracks


def assert_video(path, frames, fps, size):
    info = probe_video(path)
    assert (info["frames"], info["fps"], (info["width"], info["height"]), info["audio_streams"]) == (frames, fps, size, 1)


def test_generate_with_speech_motion(tiny_model_dir, inputs, tmp_path, drawn_tracks):
    out = tmp_path / "speech_motion.mp4"
    args = ["generate", "--models", str(tiny_model_dir), "--reference", str(inputs["photo"]), "--audio",
            str(inputs["speech"]), *FAST, "--retarget", "speech_motion", "--motion-scale", "1.5", "--motion-seed", "4",
            "--out", str(out)]
    assert cli.main(args) == 0
    assert_video(out, 30, 30.0, (64, 64))
    (track,) = drawn_tracks
    assert len(track) == 30 and track.frame_size == (64, 64)
    framed = orchestration.framed_reference(cli.read_image(inputs["photo"]), 64, 64, make_detector())
    expected = speech_motion_points(framed.keypoints, load_audio(inputs["speech"]), 30, 30.0, 64, 1.5, 4)
    assert np.array_equal(track.points, expected)


def test_generate_with_a_smoothed_driving_video(tiny_model_dir, inputs, tmp_path, drawn_tracks):
    out = tmp_path / "driven.mp4"
    args = ["generate", "--models", str(tiny_model_dir), "--reference", str(inputs["photo"]), "--audio",
            str(inputs["speech"]), *FAST, "--fps", "25", "--driving-video", str(inputs["driving"]), "--smooth", "1.5",
            "--out", str(out)]
    assert cli.main(args) == 0
    assert_video(out, 25, 25.0, (64, 64))
    assert len(drawn_tracks[0]) == 25


def test_driving_tracks_are_smoothed_by_default_and_files_on_request(inputs, tmp_path):
    detector = make_detector("retinaface")
    raw = extract_track_from_video(inputs["driving"], detector)
    extracted = orchestration.driving_track(driving_video=inputs["driving"], detector=detector)
    assert np.array_equal(extracted.points, smoothed_track(raw).points)
    assert not np.array_equal(extracted.points, raw.points)
    assert np.array_equal(orchestration.driving_track(driving_video=inputs["driving"], detector=detector, smooth=0).points,
                          raw.points)
    published = load_kps_pth(inputs["photo"].parent / "kps.pth")
    kps_file = inputs["photo"].parent / "kps.pth"
    assert np.array_equal(orchestration.driving_track(kps_file=kps_file).points, published.points)
    assert np.array_equal(orchestration.driving_track(kps_file=kps_file, smooth=2).points,
                          smoothed_track(published, 2).points)


def test_preview_kps_writes_a_video_with_the_speech_and_a_strip(inputs, tmp_path):
    base = ["preview-kps", "--reference", str(inputs["photo"]), "--audio", str(inputs["speech"]),
            "--retarget", "speech_motion", "--width", "96", "--height", "96", "--fps", "25"]
    assert cli.main([*base, str(tmp_path / "preview.mp4")]) == 0
    assert_video(tmp_path / "preview.mp4", 25, 25.0, (96, 96))
    assert cli.main([*base, "--strip-frames", "4", str(tmp_path / "preview.png")]) == 0
    with Image.open(tmp_path / "preview.png") as strip:
        assert strip.size == (4 * 96, 96)
    assert cli.main([*base, str(tmp_path / "preview.gif")]) == 2


# --- nodes -----------------------------------------------------------------------------------


def node_inputs(inputs):
    reference = SimpleNamespace(keypoints=np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 75.0]], np.float32),
                                width=128, height=128)
    speech = SimpleNamespace(speech=SimpleNamespace(waveform=inputs["waveform"], num_frames=25, fps=25.0))
    return reference, speech


def test_retarget_node_moves_the_head_with_the_speech(inputs):
    reference, speech = node_inputs(inputs)
    node = BY_ID["VExpressKpsRetarget"]
    outcome = execute(node, {"reference": reference, "speech": speech, "mode": "speech_motion", "resample": "auto",
                             "motion_scale": 1.0, "motion_seed": 2})
    assert outcome.ok, outcome
    (track,) = outcome.outputs
    assert np.array_equal(track.points, speech_motion_points(reference.keypoints, inputs["waveform"], 25, 25.0, 128, 1.0, 2))
    still = execute(node, {"reference": reference, "speech": speech, "mode": "speech_motion", "resample": "auto",
                           "motion_scale": 0.0, "motion_seed": 2}).outputs[0]
    assert np.array_equal(still.points, retarget_track(reference.keypoints, None, 25, "fix_face"))


def test_preview_node_draws_over_the_photo(inputs):
    track = KeypointTrack(np.array([[[40.0, 50.0], [80.0, 50.0], [60.0, 75.0]]] * 3), (128, 128), 25.0)
    photo = np.full((1, 64, 64, 3), 0.5, np.float32)
    outcome = execute(BY_ID["VExpressKpsPreview"], {"kps": track, "width": 0, "height": 0, "overlay": True,
                                                    "images": torch.from_numpy(photo)})
    assert outcome.ok, outcome
    (frames,) = outcome.outputs
    assert tuple(frames.shape) == (3, 64, 64, 3)
    for (x, y), colour in zip(track.points[0] / 2, KPS_COLOURS):
        assert tuple((frames[0, int(y), int(x)] * 255).round().int().tolist()) == colour
    missing = execute(BY_ID["VExpressKpsPreview"], {"kps": track, "width": 0, "height": 0, "overlay": True})
    assert "connect the reference image" in missing.exception_message
