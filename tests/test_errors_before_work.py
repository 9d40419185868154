"""Errors before work (issue 20, part 2): everything that can be checked cheaply - the model folder
and its files, the output path, the audio, the photo, the videos' headers, option ranges - is
checked before any face detection, video decoding or model loading, in the CLI and in the nodes'
input validation.

The CLI cases dub (or are driven by) a 15 s video: detecting faces in it takes many seconds, so
a check that came after detection could not finish within the 2 s allowed. The 2 s are CPU time of
the test process (on a machine shared with other jobs wall time says little); the detector and
the model loader are replaced by functions that fail the test when called.
"""
from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch

from comfyui_like import NODES, execute
from vexpress_core import checkpoint, cli, detectors

LONG_SAMPLE = "vasa-1_l5"  # a 15 s driving video
SECONDS_ALLOWED = 2.0


@pytest.fixture
def detector_calls(monkeypatch) -> list:
    """Records every detector made (none may be, before a bad input is reported)."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a face detector was made before the bad input was noticed")

    monkeypatch.setattr(detectors, "make_detector", refuse)
    monkeypatch.setattr(checkpoint, "load_models", refuse)
    return calls


@pytest.fixture(scope="module")
def sample(samples_dir) -> Path:
    return samples_dir / LONG_SAMPLE


def dub_args(models, sample: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--dub", str(sample / "gt.mp4"), "--audio", str(sample / "aud.mp3"), "--models", str(models),
            "--width", "64", "--height", "64", "--device", "cpu", *extra, "--out", str(out)]


def drive_args(models, sample: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--reference", str(sample / "ref.jpg"), "--driving-video", str(sample / "gt.mp4"),
            "--audio", str(sample / "aud.mp3"), "--models", str(models), "--width", "64", "--height", "64",
            "--device", "cpu", *extra, "--out", str(out)]


def fails_fast(argv: list[str], capsys, *words: str) -> str:
    started = time.process_time()
    code = cli.main(argv)
    elapsed = time.process_time() - started
    error = capsys.readouterr().err
    assert code == 2, error
    assert elapsed < SECONDS_ALLOWED, f"{elapsed:.1f} s of CPU time before the error"
    for word in words:
        assert word in error, (word, error)
    return error


def header_lies(tiny_model_dir: Path, folder: Path) -> Path:
    shutil.copytree(tiny_model_dir, folder, copy_function=os.link)
    weights = folder / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    weights.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    return folder


@pytest.mark.parametrize("args", [dub_args, drive_args], ids=["dub", "driving_video"])
def test_a_missing_model_folder_fails_before_detection(args, sample, tmp_path, capsys, detector_calls):
    missing = tmp_path / "no-such-models"
    fails_fast(args(missing, sample, tmp_path / "out.mp4"), capsys, str(missing), "does not exist")
    assert detector_calls == []
    assert not (tmp_path / "out.mp4").exists()


def test_a_broken_model_file_fails_before_detection(sample, tiny_model_dir, tmp_path, capsys, detector_calls):
    models = header_lies(tiny_model_dir, tmp_path / "models")
    fails_fast(dub_args(models, sample, tmp_path / "out.mp4"), capsys,
               str(models / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"), "claims")
    assert detector_calls == []


@pytest.mark.parametrize("args", [dub_args, drive_args], ids=["dub", "driving_video"])
def test_an_output_under_a_file_fails_before_detection(args, sample, tiny_model_dir, tmp_path, capsys, detector_calls):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    fails_fast(args(tiny_model_dir, sample, blocker / "out.mp4"), capsys, str(blocker / "out.mp4"))
    assert detector_calls == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_output_in_an_unwritable_folder_fails_before_detection(sample, tiny_model_dir, tmp_path, capsys,
                                                                 detector_calls):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        fails_fast(dub_args(tiny_model_dir, sample, locked / "out.mp4"), capsys, str(locked / "out.mp4"))
    finally:
        locked.chmod(0o700)
    assert detector_calls == []


BAD_OPTIONS = {  # name -> (extra arguments, words the error must contain)
    "reference_frame_past_the_end": (["--reference-frame", "5000"], ["reference frame 5000 is out of range", "377 frames"]),
    "negative_face_index": (["--face-index", "-1"], ["--face-index", "-1"]),
    "motion_scale": (["--motion-scale", "7"], ["--motion-scale", "7"]),
    "feather": (["--feather", "0.9"], ["--feather", "0.9"]),
    "width": (["--width", "60"], ["width", "60"]),
    "unknown_device": (["--device", "toaster"], ["--device", "toaster"]),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_options_out_of_range_fail_before_detection(case, sample, tiny_model_dir, tmp_path, capsys, detector_calls):
    extra, words = BAD_OPTIONS[case]
    argv = dub_args(tiny_model_dir, sample, tmp_path / "out.mp4")
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv[-2:-2] = [flag, value]
    fails_fast(argv, capsys, *words)
    assert detector_calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_cuda_fails_before_detection(sample, tiny_model_dir, tmp_path, capsys, detector_calls):
    argv = dub_args(tiny_model_dir, sample, tmp_path / "out.mp4")
    argv[argv.index("--device") + 1] = "cuda"
    fails_fast(argv, capsys, "--device cuda", "--device cpu")
    assert detector_calls == []


@pytest.mark.parametrize("args", [dub_args, drive_args], ids=["dub", "driving_video"])
def test_unreadable_videos_fail_before_detection(args, sample, tiny_model_dir, tmp_path, capsys, detector_calls):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 20)
    sound_only = sample / "aud.mp3"
    for video, words in ((text, [str(text)]), (sound_only, [str(sound_only), "no video stream"])):
        argv = args(tiny_model_dir, sample, tmp_path / "out.mp4")
        argv[argv.index(str(sample / "gt.mp4"))] = str(video)
        fails_fast(argv, capsys, *words)
    assert detector_calls == []


def test_extract_kps_checks_the_output_before_detection(sample, tmp_path, capsys, detector_calls):
    fails_fast(["extract-kps", str(sample / "gt.mp4"), str(tmp_path / "track.txt")], capsys, ".npz or .json")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    fails_fast(["extract-kps", str(sample / "gt.mp4"), str(blocker / "track.npz")], capsys, str(blocker))
    assert detector_calls == []


# --------------------------------------------------------------------------- nodes: ComfyUI's input validation


def validation_errors(node_id: str, inputs: dict) -> list[str]:
    """What ComfyUI's validation reports for a node; the node must not have run."""
    outcome = execute(NODES.nodes_by_id()[node_id], inputs)
    assert outcome.exception_type is None, f"{node_id} ran: {outcome.exception_message}"
    return outcome.errors


@pytest.mark.parametrize("node_id", ["VExpressLoadReference", "VExpressFaceCrop"])
def test_output_sizes_are_validated_before_the_prompt_runs(node_id):
    node = NODES.nodes_by_id()[node_id]
    inputs = {spec.name: spec.default for spec in node.INPUTS if spec.is_widget}
    inputs.update(models=None, image=None, images=None)  # links: never reached
    (error,) = validation_errors(node_id, {**inputs, "width": 100})
    assert "width must be a multiple of 8 between 64 and 1024, got 100" in error
    (error,) = validation_errors(node_id, {**inputs, "height": 2048})
    assert "height must be a multiple of 8 between 64 and 1024, got 2048" in error


def test_window_options_are_validated_before_the_prompt_runs():
    (error,) = validation_errors("VExpressWindowOptions", {"context_frames": 8, "context_overlap": 8, "blend": "mean"})
    assert "context_overlap must be in 0..context_frames-1 (7), got 8" in error


def test_a_broken_track_file_is_validated_before_the_prompt_runs(tmp_path, monkeypatch):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 cut short")
    monkeypatch.setattr(NODES.runtime, "annotated_filepath", lambda name: str(tmp_path / name))
    (error,) = validation_errors("VExpressKpsLoad", {"file": "broken.npz", "fps": 0.0})
    assert str(broken) in error and "not a keypoint track file" in error
