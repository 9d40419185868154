"""`generate` flags that had no test: --low-vram, --vae-tiling, --kps-fps, an out-of-range --face-index."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
from diffusers import AutoencoderKL

from vexpress_core import cli, pipeline
from vexpress_core.audio import load_audio
from vexpress_core.keypoints import load_kps_pth
from vexpress_core.video import probe_video

SAMPLE = "short_case_10"
RATE = 16000
FAST = ["--width", "64", "--height", "64", "--steps", "1", "--context-frames", "8", "--context-overlap", "2",
        "--device", "cpu"]
FRAMES = 15  # 0.5 s at 30 fps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def speech(tmp_path_factory, samples_dir) -> Path:
    path = tmp_path_factory.mktemp("cli-flags") / "speech.wav"
    soundfile.write(path, load_audio(samples_dir / SAMPLE / "aud.mp3")[RATE // 2:RATE], RATE, subtype="FLOAT")
    return path


@pytest.fixture
def calls(monkeypatch):
    """What `generate` hands to pipeline.denoise (settings, track)."""
    seen = []
    real = pipeline.denoise

    def spy(models, reference, speech, track, settings, *args, **kwargs):
        seen.append({"settings": settings, "track": track})
        return real(models, reference, speech, track, settings, *args, **kwargs)

    monkeypatch.setattr(pipeline, "denoise", spy)
    return seen


def generate(models, reference, audio, out, *extra) -> int:
    return cli.main(["generate", "--models", str(models), "--reference", str(reference), "--audio", str(audio),
                     *FAST, *extra, "--out", str(out)])


def test_low_vram_keeps_latents_on_the_host_and_networks_idle_on_the_cpu(tiny_model_dir, samples_dir, speech,
                                                                          tmp_path, calls, monkeypatch):
    from vexpress_core import offload

    placements = []
    real = offload.placed

    def spy(models, names, run_device, idle_device):
        placements.append((str(run_device), str(idle_device)))
        return real(models, names, run_device, idle_device)

    monkeypatch.setattr(offload, "placed", spy)
    out = tmp_path / "low.mp4"
    assert generate(tiny_model_dir, samples_dir / SAMPLE / "ref.jpg", speech, out, "--low-vram") == 0
    assert calls[0]["settings"].latents_on_host
    assert placements and all(idle == "cpu" for _, idle in placements)
    assert probe_video(out)["frames"] == FRAMES


def test_vae_tiling_decodes_through_tiles(tiny_model_dir, samples_dir, speech, tmp_path, calls, monkeypatch):
    tiled = []
    real = AutoencoderKL.tiled_decode

    def spy(self, *args, **kwargs):
        tiled.append(args[0].shape)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "tiled_decode", spy)
    out = tmp_path / "tiled.mp4"
    assert generate(tiny_model_dir, samples_dir / SAMPLE / "ref.jpg", speech, out, "--vae-tiling") == 0
    assert calls[0]["settings"].vae_tiling
    assert sum(shape[0] for shape in tiled) == FRAMES  # every frame went through the tiled decoder
    assert probe_video(out)["frames"] == FRAMES


def test_kps_fps_plays_a_published_track_by_time(tiny_model_dir, samples_dir, speech, tmp_path, calls):
    kps = samples_dir / SAMPLE / "kps.pth"
    out = tmp_path / "timed.mp4"
    assert generate(tiny_model_dir, samples_dir / SAMPLE / "ref.jpg", speech, out, "--kps", str(kps),
                    "--kps-fps", "10", "--retarget", "no_retarget") == 0
    points = calls[0]["track"].points
    published = load_kps_pth(kps)
    scale = np.array([64 / published.frame_size[0], 64 / published.frame_size[1]])
    # Output frame i shows the track at i/30 s, i.e. source frame i/3 at 10 fps.
    for frame, source in ((0, 0), (3, 1), (6, 2), (9, 3)):
        assert np.allclose(points[frame], published.points[source] * scale, atol=1e-3)
    assert np.allclose(points[1], (2 * published.points[0] + published.points[1]) / 3 * scale, atol=1e-3)


def test_out_of_range_face_index_is_one_clear_error(tiny_model_dir, samples_dir, speech, tmp_path, capsys):
    out = tmp_path / "none.mp4"
    code = generate(tiny_model_dir, samples_dir / SAMPLE / "ref.jpg", speech, out, "--face-index", "3",
                    "--crop", "face")
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == ["error: face_index 3 is out of range: the reference image has 1 face(s)"]
    assert not out.exists()
