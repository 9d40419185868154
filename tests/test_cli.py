"""`python -m vexpress_core` commands through `cli.main(argv)` on tiny random models.

Not tested beyond argument parsing here: `download` (network); `demo` runs in tests/test_untested_paths.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from vexpress_core import checkpoint, cli, pipeline
from vexpress_core.audio import load_audio
from vexpress_core.checkpoint import load_models
from vexpress_core.keypoints import load_track
from vexpress_core.video import probe_video, write_mp4

SAMPLE = "short_case_10"
EXTRACT_SAMPLE = "short_case_tys"  # the shortest driving video (100 frames)
RATE = 16000
WEIGHT_FILES = ("reference_net", "denoising_unet", "motion_module", "v_kps_guider", "audio_projection")
FAST = ["--width", "64", "--height", "64", "--steps", "1", "--context-frames", "8", "--context-overlap", "2",
        "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sample(samples_dir) -> Path:
    return samples_dir / SAMPLE


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample) -> dict[str, Path]:
    """A short speech wav cut from the sample, a silent wav, a grey (faceless) image, a small driving video."""
    folder = tmp_path_factory.mktemp("cli-inputs")
    speech = load_audio(sample / "aud.mp3")
    soundfile.write(folder / "speech.wav", speech[RATE // 2:RATE // 2 + int(0.5 * RATE)], RATE, subtype="FLOAT")
    soundfile.write(folder / "silent.wav", np.zeros(RATE // 2, np.float32), RATE)
    Image.new("RGB", (128, 128), (128, 128, 128)).save(folder / "grey.png")
    with Image.open(sample / "ref.jpg") as image:
        face = np.asarray(image.convert("RGB").resize((128, 128), Image.BICUBIC))
    frames = np.stack([np.roll(face, shift, axis=1) for shift in (0, 2, 4, 6, 4, 2)])
    write_mp4(frames, folder / "driving.mp4", 20)
    (folder / "text.txt").write_text("not an image, not audio, not a video\n" * 10)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "a_file").write_text("blocks a directory")
    return {path.stem: path for path in folder.iterdir()}


def generate_args(models: Path, reference: Path, audio: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--models", str(models), "--reference", str(reference), "--audio", str(audio),
            *FAST, *extra, "--out", str(out)]


@pytest.fixture
def denoise_calls(monkeypatch):
    """Records what `generate` hands to pipeline.denoise (settings, track, speech), then runs it."""
    calls = []
    real = pipeline.denoise

    def spy(models, reference, speech, track, settings, *args, **kwargs):
        calls.append({"settings": settings, "track": track, "speech": speech})
        return real(models, reference, speech, track, settings, *args, **kwargs)

    monkeypatch.setattr(pipeline, "denoise", spy)
    return calls


def expected_frames(wav: Path, fps: float) -> int:
    return int(soundfile.info(str(wav)).frames / RATE * fps)


def assert_video(path: Path, frames: int, fps: float, size=(64, 64)) -> None:
    info = probe_video(path)
    assert info["frames"] == frames, info
    assert info["fps"] == fps, info
    assert (info["width"], info["height"]) == size, info
    assert info["audio_streams"] == 1, info


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_with_a_published_kps_track(tiny_model_dir, sample, inputs, tmp_path, capsys, denoise_calls):
    out = tmp_path / "kps.mp4"
    args = generate_args(tiny_model_dir, sample / "ref.jpg", inputs["speech"], out, "--kps", str(sample / "kps.pth"))
    assert cli.main(args) == 0
    frames = expected_frames(inputs["speech"], 30.0)
    assert frames == 15
    assert_video(out, frames, 30.0)
    assert f"wrote {out}" in capsys.readouterr().out
    (call,) = denoise_calls
    settings = call["settings"]
    assert (settings.width, settings.height, settings.steps, settings.context_frames, settings.context_overlap) == \
        (64, 64, 1, 8, 2)
    # The other settings are the published defaults.
    assert (settings.fps, settings.guidance_scale, settings.reference_weight, settings.audio_weight, settings.seed,
            settings.blend, settings.scheduler, settings.deflicker) == (30.0, 3.5, 0.95, 3.0, 42, "mean", "ddim", True)
    track = call["track"]
    assert len(track) == frames and track.frame_size == (64, 64)
    assert not np.allclose(track.points, track.points[:1])  # naive_retarget follows the driving track


def test_generate_without_driving_input_keeps_the_reference_face(tiny_model_dir, sample, inputs, tmp_path,
                                                                 denoise_calls):
    out = tmp_path / "still.mp4"
    assert cli.main(generate_args(tiny_model_dir, sample / "ref.jpg", inputs["speech"], out)) == 0
    assert_video(out, expected_frames(inputs["speech"], 30.0), 30.0)
    track = denoise_calls[0]["track"]
    assert np.array_equal(track.points, np.repeat(track.points[:1], len(track), axis=0))  # fix_face


def test_generate_with_a_driving_video_and_every_option(tiny_model_dir, sample, inputs, tmp_path,
                                                        denoise_calls):
    out = tmp_path / "nested" / "driven.mp4"  # missing parent folders are created
    extra = ["--driving-video", str(inputs["driving"]), "--retarget", "offset_retarget", "--fps", "25",
             "--guidance", "2.5", "--reference-weight", "0.9", "--audio-weight", "2", "--seed", "7",
             "--blend", "ramp", "--window-batch", "2", "--scheduler", "euler", "--no-deflicker",
             "--kps-resample", "stretch", "--dtype", "fp32", "--detector", "retinaface"]
    args = with_changes(generate_args(tiny_model_dir, sample / "ref.jpg", inputs["speech"], out, *extra),
                        {"--width": "80"})
    assert cli.main(args) == 0
    frames = expected_frames(inputs["speech"], 25.0)
    assert frames == 12
    assert_video(out, frames, 25.0, size=(80, 64))
    settings = denoise_calls[0]["settings"]
    assert (settings.fps, settings.guidance_scale, settings.reference_weight, settings.audio_weight, settings.seed,
            settings.blend, settings.window_batch, settings.scheduler, settings.deflicker) == \
        (25.0, 2.5, 0.9, 2.0, 7, "ramp", 2, "euler", False)
    track = denoise_calls[0]["track"]
    assert len(track) == frames and track.frame_size == (80, 64)


# ---------------------------------------------------------------------------------------------
# make-tiny-models, convert, extract-kps


def test_make_tiny_models_output_loads(tmp_path, capsys):
    target = tmp_path / "tiny"
    assert cli.main(["make-tiny-models", str(target), "--seed", "3"]) == 0
    assert str(target) in capsys.readouterr().out
    assert sorted(p.stem for p in (target / "v-express").iterdir()) == sorted(WEIGHT_FILES)
    models = load_models(target)
    assert list(models.denoising_unet.config.block_out_channels) == [32, 32, 64, 64]


def test_convert_writes_safetensors_that_load(tiny_model_dir, tmp_path, capsys):
    from safetensors import safe_open

    dst = tmp_path / "converted"
    assert cli.main(["convert", str(tiny_model_dir), str(dst)]) == 0
    assert sorted(p.name for p in dst.iterdir()) == sorted(f"{name}.safetensors" for name in WEIGHT_FILES)
    assert capsys.readouterr().out.count("wrote ") == 5
    original = load_models(tiny_model_dir)
    converted = load_models(tiny_model_dir, weights_dir=dst)
    assert all(path.suffix == ".safetensors" and path.parent == dst for path in converted.paths.weights.values())
    for name in ("reference_net", "denoising_unet", "v_kps_guider", "audio_projection"):
        before, after = getattr(original, name).state_dict(), getattr(converted, name).state_dict()
        assert before.keys() == after.keys(), name
        assert all(torch.equal(before[key], after[key]) for key in before), name

    half = tmp_path / "fp16"
    assert cli.main(["convert", str(tiny_model_dir), str(half), "--dtype", "fp16"]) == 0
    with safe_open(str(half / "motion_module.safetensors"), "pt") as weights:
        dtypes = {key: weights.get_tensor(key).dtype for key in weights.keys()}
    assert {d for k, d in dtypes.items() if k.endswith("pos_encoder.pe")} == {torch.float32}
    assert {d for k, d in dtypes.items() if not k.endswith("pos_encoder.pe")} == {torch.float16}
    load_models(tiny_model_dir, weights_dir=half)


def test_extract_kps_writes_a_track_with_the_video_fps(samples_dir, tmp_path):
    video = samples_dir / EXTRACT_SAMPLE / "gt.mp4"
    out = tmp_path / "track.npz"
    assert cli.main(["extract-kps", str(video), str(out), "--detector", "retinaface"]) == 0
    info = probe_video(video)
    track = load_track(out)
    assert track.fps == pytest.approx(info["fps"], rel=1e-9)
    assert len(track) == info["frames"]
    assert track.frame_size == (info["width"], info["height"])
    assert track.valid.mean() > 0.9
    eye_distance = np.linalg.norm(track.points[:, 0] - track.points[:, 1], axis=-1)
    assert (eye_distance > 10).all()


def test_extract_kps_json_of_a_small_video(inputs, tmp_path):
    out = tmp_path / "track.json"
    assert cli.main(["extract-kps", str(inputs["driving"]), str(out)]) == 0
    track = load_track(out)
    assert (len(track), track.fps, track.frame_size) == (6, 20.0, (128, 128))


# ---------------------------------------------------------------------------------------------
# Bad input: exit code 2 and one `error:` line naming the input


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the models were loaded before the bad input was noticed")

    monkeypatch.setattr(checkpoint, "load_models", refuse)


def assert_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


CHEAP_BAD_GENERATE = {  # name -> (argument changes, words the error must contain); checked before loading models
    "width": ({"--width": "60"}, ["width", "60"]),
    "height": ({"--height": "12"}, ["height", "12"]),
    "context_frames": ({"--context-frames": "33"}, ["context_frames", "33"]),
    "context_overlap": ({"--context-overlap": "8"}, ["context_overlap", "8"]),
    "steps": ({"--steps": "0"}, ["steps"]),
    "fps": ({"--fps": "0"}, ["fps"]),
    "missing_reference": ({"--reference": "{tmp}/missing.jpg"}, ["{tmp}/missing.jpg"]),
    "reference_not_an_image": ({"--reference": "{text}"}, ["{text}"]),
    "missing_audio": ({"--audio": "{tmp}/missing.wav"}, ["{tmp}/missing.wav"]),
    "empty_audio": ({"--audio": "{empty}"}, ["{empty}", "empty"]),
    "silent_audio": ({"--audio": "{silent}"}, ["{silent}", "silent"]),
    "audio_not_audio": ({"--audio": "{text}"}, ["{text}"]),
    "output_under_a_file": ({"--out": "{a_file}/out.mp4"}, ["{a_file}/out.mp4"]),
    "output_is_a_directory": ({"--out": "{tmp}"}, ["{tmp}", "directory"]),
}


def with_changes(args: list[str], changes: dict[str, str]) -> list[str]:
    args = list(args)
    for flag, value in changes.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args[-2:-2] = [flag, value]  # before --out
    return args


@pytest.mark.parametrize("case", CHEAP_BAD_GENERATE)
def test_generate_bad_input_fails_before_loading_models(case, tiny_model_dir, sample, inputs, tmp_path, capsys,
                                                        no_model_loading):
    changes, words = CHEAP_BAD_GENERATE[case]
    names = {"tmp": str(tmp_path), **{key: str(path) for key, path in inputs.items()}}
    args = generate_args(tiny_model_dir, sample / "ref.jpg", inputs["speech"], tmp_path / "out.mp4")
    args = with_changes(args, {flag: value.format(**names) for flag, value in changes.items()})
    assert cli.main(args) == 2
    assert_error(capsys, *(word.format(**names) for word in words))
    assert not (tmp_path / "out.mp4").exists()


def test_generate_with_missing_or_incomplete_models(sample, inputs, tmp_path, capsys):
    for models, words in [(tmp_path / "nowhere", ["nowhere", "does not exist"]),
                          (tmp_path, [str(tmp_path), "missing", "denoising_unet"])]:
        args = generate_args(models, sample / "ref.jpg", inputs["speech"], tmp_path / "out.mp4")
        assert cli.main(args) == 2
        assert_error(capsys, *words)
    assert not (tmp_path / "out.mp4").exists()


def bad_track_cases(inputs, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a torch archive")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 truncated zip")
    return {
        "corrupt_npz": (["--kps", str(corrupt)], [str(corrupt)]),
        "malformed_kps": (["--kps", str(broken)], [str(broken)]),
        "missing_kps": (["--kps", str(tmp_path / "missing.pth")], [str(tmp_path / "missing.pth")]),
        "faceless_reference": (["--reference", str(inputs["grey"])], ["no face", "reference"]),
        "faceless_driving_video": (["--driving-video", str(inputs["grey"].with_suffix(".mp4"))], ["no face"]),
    }


@pytest.fixture
def faceless_video(inputs):
    path = inputs["grey"].with_suffix(".mp4")
    if not path.exists():
        write_mp4([np.full((3, 64, 64, 3), 128, np.uint8)], path, 10)
    return path


def bad_track_generate_args(case, model_dir, sample, inputs, tmp_path):
    """`generate` arguments with one bad track or face input, and the words its error must contain."""
    extra, words = bad_track_cases(inputs, tmp_path)[case]
    args = generate_args(model_dir, sample / "ref.jpg", inputs["speech"], tmp_path / "out.mp4")
    if extra[0] == "--reference":
        args = with_changes(args, {"--reference": extra[1]})
    else:
        args[-2:-2] = extra
    return args, words


@pytest.mark.parametrize("case", ["malformed_kps", "corrupt_npz", "missing_kps", "faceless_reference",
                                  "faceless_driving_video"])
def test_generate_bad_track_or_face_fails_with_exit_2(case, tiny_model_dir, sample, inputs, tmp_path, capsys,
                                                     faceless_video):
    args, words = bad_track_generate_args(case, tiny_model_dir, sample, inputs, tmp_path)
    assert cli.main(args) == 2
    assert_error(capsys, *words)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("case", ["malformed_kps", "missing_kps", "faceless_reference"])
def test_generate_checks_the_track_and_the_reference_face_before_loading_models(
        case, tiny_model_dir, sample, inputs, tmp_path, capsys, no_model_loading):
    """A broken track file or a photo without a face needs no model to be noticed; with the real
    weights loading them takes far longer than the check."""
    args, words = bad_track_generate_args(case, tiny_model_dir, sample, inputs, tmp_path)
    assert cli.main(args) == 2
    assert_error(capsys, *words)


def test_extract_kps_bad_input(inputs, tmp_path, capsys, faceless_video):
    cases = [
        ([str(tmp_path / "missing.mp4"), str(tmp_path / "o.npz")], [str(tmp_path / "missing.mp4")]),
        ([str(inputs["text"]), str(tmp_path / "o.npz")], [str(inputs["text"])]),
        ([str(faceless_video), str(tmp_path / "o.npz")], ["no face"]),
        ([str(inputs["driving"]), str(tmp_path / "o.txt")], [str(tmp_path / "o.txt"), ".npz"]),
    ]
    for args, words in cases:
        assert cli.main(["extract-kps", *args, "--detector", "retinaface"]) == 2, args
        assert_error(capsys, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_faceless_driving_video_error_names_the_video(tiny_model_dir, sample, inputs, tmp_path, capsys,
                                                    faceless_video):
    assert cli.main(["extract-kps", str(faceless_video), str(tmp_path / "o.npz"), "--detector", "retinaface"]) == 2
    assert_error(capsys, "no face", str(faceless_video))
    args = generate_args(tiny_model_dir, sample / "ref.jpg", inputs["speech"], tmp_path / "out.mp4")
    args[-2:-2] = ["--driving-video", str(faceless_video)]
    assert cli.main(args) == 2
    assert_error(capsys, "no face", str(faceless_video))


def test_convert_and_make_tiny_models_bad_input(inputs, tmp_path, capsys):
    assert cli.main(["convert", str(tmp_path), str(tmp_path / "dst")]) == 2
    assert_error(capsys, str(tmp_path), "missing")
    assert cli.main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "dst")]) == 2
    assert_error(capsys, "nowhere")
    assert cli.main(["make-tiny-models", str(inputs["a_file"] / "models")]) == 2
    assert_error(capsys, str(inputs["a_file"]))


@pytest.mark.parametrize("argv,words", [
    (["generate", "--models", "m", "--reference", "r", "--audio", "a", "--out", "o", "--retarget", "sideways"],
     ["--retarget", "sideways"]),
    (["generate", "--models", "m", "--reference", "r", "--audio", "a", "--out", "o", "--kps", "k",
      "--driving-video", "v"], ["--driving-video", "--kps"]),
    (["generate", "--models", "m", "--reference", "r", "--audio", "a"], ["--out"]),
    (["generate", "--models", "m", "--reference", "r", "--audio", "a", "--out", "o", "--width", "wide"],
     ["--width", "wide"]),
    (["generate", "--models", "m", "--reference", "r", "--audio", "a", "--out", "o", "--blend", "median"],
     ["--blend", "median"]),
    (["teleport"], ["teleport"]),
    ([], ["command"]),
])
def test_argument_errors_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    for word in words:
        assert word in err, (word, err)


# ---------------------------------------------------------------------------------------------
# Parsing only: defaults, demo, download


def test_generate_defaults_are_the_published_ones():
    args = cli.parser().parse_args(["generate", "--models", "m", "--reference", "r", "--audio", "a", "--out", "o"])
    settings = cli.settings_from(args)  # steps and scheduler come from the default preset, quality
    assert (args.width, args.height, args.fps or 30.0, settings.steps, args.guidance, args.reference_weight, args.audio_weight,
            args.context_frames, args.context_overlap, args.seed) == (512, 512, 30.0, 25, 3.5, 0.95, 3.0, 24, 4, 42)
    assert (args.blend, settings.scheduler, args.deflicker, args.window_batch, args.retarget, args.kps, args.driving_video) \
        == ("mean", "ddim", True, "auto", None, None, None)
    assert args.preset == "quality" and args.weight_storage == "dtype"
    assert settings == pipeline.GenerationSettings()


@pytest.mark.parametrize("command", ["generate", "demo", "extract-kps", "convert", "make-tiny-models", "download"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    assert f"usage: python -m vexpress_core {command}" in capsys.readouterr().out


def test_demo_and_download_arguments(monkeypatch):
    parser = cli.parser()
    demo = parser.parse_args(["demo"])
    assert (demo.out, demo.steps, demo.seed, demo.run) == ("vexpress_demo.mp4", 25, 42, cli.run_demo)
    demo = parser.parse_args(["demo", "x.mp4", "--steps", "2", "--seed", "1"])
    assert (demo.out, demo.steps, demo.seed) == ("x.mp4", 2, 1)
    download = parser.parse_args(["download", "models"])
    assert (download.dir, download.run) == ("models", cli.run_download)


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "vexpress_core", "--help"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("generate", "demo", "extract-kps", "convert", "make-tiny-models", "download"):
        assert command in result.stdout


def test_registered_detectors_and_schedulers_appear_in_the_cli_help(capsys):
    from vexpress_core.detectors import DETECTORS
    from vexpress_core.sampling import SCHEDULERS

    DETECTORS.register("dummy_detector", lambda model_dir: None)
    SCHEDULERS.register("dummy_scheduler", lambda: None)
    try:
        for command in ("generate", "extract-kps"):
            with pytest.raises(SystemExit):
                cli.main([command, "--help"])
            help_text = capsys.readouterr().out
            assert "dummy_detector" in help_text
        with pytest.raises(SystemExit):
            cli.main(["generate", "--help"])
        assert "dummy_scheduler" in capsys.readouterr().out
    finally:
        DETECTORS.unregister("dummy_detector")
        SCHEDULERS.unregister("dummy_scheduler")
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    assert "dummy" not in capsys.readouterr().out
