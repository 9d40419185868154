"""Full-frame modes end to end on tiny random models: `generate --paste-back` on a sample photo and
`generate --dub` on a sample video, plus the bad inputs of issue 9."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile
from PIL import Image

from vexpress_core import cli
from vexpress_core.audio import load_audio
from vexpress_core.framing import CropPlan, PasteSettings, pasted_chunks
from vexpress_core.framing.modes import frame_photo
from vexpress_core.detectors import RetinaFaceDetector
from vexpress_core.video import read_video_frames
from vexpress_core.video import probe_video, write_mp4

RATE = 16000
FAST = ["--width", "64", "--height", "64", "--steps", "1", "--context-frames", "8", "--context-overlap", "2",
        "--device", "cpu", "--detector", "retinaface"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, samples_dir) -> dict[str, Path]:
    """Half a second of speech, the sample photo, a 5-frame and a 1-frame clip of the sample video, faceless media."""
    folder = tmp_path_factory.mktemp("framing-inputs")
    speech = load_audio(samples_dir / "short_case_10" / "aud.mp3")
    soundfile.write(folder / "speech.wav", speech[RATE // 2:RATE], RATE, subtype="FLOAT")
    video = samples_dir / "short_case_tys" / "gt.mp4"
    frames = [cv2.resize(frame, (320, 320), interpolation=cv2.INTER_AREA)
              for _, frame in zip(range(5), read_video_frames(video))]
    write_mp4(np.stack(frames), folder / "clip.mp4", 10)
    write_mp4(np.stack(frames[:1]), folder / "still.mp4", 25)
    write_mp4(np.full((4, 96, 96, 3), 128, np.uint8), folder / "faceless.mp4", 25)
    Image.new("RGB", (200, 160), (128, 128, 128)).save(folder / "grey.png")
    return {path.stem: path for path in folder.iterdir()} | {"photo": samples_dir / "short_case_10" / "ref.jpg",
                                                             "video": video}


def generate(models, out, *extra):
    return cli.main(["generate", "--models", str(models), *FAST, *extra, "--out", str(out)])


def assert_video(path, frames, fps, size):
    info = probe_video(path)
    assert (info["width"], info["height"]) == size, info
    assert abs(info["frames"] - frames) <= 1, info
    assert info["fps"] == pytest.approx(fps, rel=1e-4), info
    assert info["audio_streams"] == 1, info


def test_photo_mode_gives_the_photo_back_talking(tiny_model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "photo.mp4"
    assert generate(tiny_model_dir, out, "--reference", str(inputs["photo"]), "--audio", str(inputs["speech"]),
                    "--paste-back", "--save-crop-plan") == 0
    assert_video(out, 15, 30.0, (512, 512))
    assert "pasted back into the 512x512 photo" in capsys.readouterr().out
    plan = CropPlan.load(tmp_path / "photo.crop_plan.json")
    assert plan.frame_size == (512, 512) and plan.crop_size == (64, 64) and len(plan) == 1
    first = next(read_video_frames(out))
    photo = np.asarray(Image.open(inputs["photo"]).convert("RGB"))
    corner = (slice(0, 40), slice(0, 40))  # far from the face: the photo itself (up to H.264)
    assert np.abs(first[corner].astype(int) - photo[corner]).mean() < 4


def test_dubbing_keeps_the_video_size_and_fps_and_stops_with_the_speech(tiny_model_dir, inputs, tmp_path):
    out = tmp_path / "dub.mp4"
    plan_path = tmp_path / "plan.json"
    assert generate(tiny_model_dir, out, "--dub", str(inputs["video"]), "--audio", str(inputs["speech"]),
                    "--save-crop-plan", str(plan_path), "--no-color-match", "--feather", "0.05") == 0
    fps = probe_video(inputs["video"])["fps"]
    assert_video(out, int(0.5 * fps), fps, (512, 512))
    plan = json.loads(plan_path.read_text())
    assert plan["frame_size"] == [512, 512] and plan["fps"] == pytest.approx(fps)
    assert len(plan["boxes"]) < 100  # only the frames the speech reaches were looked at


def test_dubbing_a_short_video_plays_it_back_and_forth_at_the_requested_fps(tiny_model_dir, inputs, tmp_path):
    out = tmp_path / "pingpong.mp4"
    assert generate(tiny_model_dir, out, "--dub", str(inputs["clip"]), "--audio", str(inputs["speech"]),
                    "--fps", "20", "--reference-frame", "2") == 0
    assert_video(out, 10, 20.0, (320, 320))


def test_a_one_frame_video_is_dubbed(tiny_model_dir, inputs, tmp_path):
    out = tmp_path / "still.mp4"
    assert generate(tiny_model_dir, out, "--dub", str(inputs["still"]), "--audio", str(inputs["speech"])) == 0
    assert_video(out, 12, 25.0, (320, 320))


@pytest.mark.parametrize("media, extra, message", [
    ("grey", ["--paste-back"], "no face found in the reference photo"),
    ("faceless", ["--dub"], "no face found in any of the 4 frame(s) of video"),
    ("photo", ["--paste-back", "--face-index", "3"], "face_index 3 is out of range"),
    ("clip", ["--dub", "--reference-frame", "9"], "reference frame 9 is out of range"),
    ("clip", ["--dub", "--kps", "x.pth"], "--dub takes the head motion from the dubbed video itself"),
])
def test_bad_input_gives_one_clear_error_and_no_file(tiny_model_dir, inputs, tmp_path, capsys, media, extra, message):
    out = tmp_path / "never.mp4"
    target = ["--reference", str(inputs[media])] if extra[0] == "--paste-back" else []
    args = [*target, "--audio", str(inputs["speech"]), extra[0]]
    args += [str(inputs[media])] if extra[0] == "--dub" else []
    assert generate(tiny_model_dir, out, *args, *extra[1:]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_8k_photo_is_framed_and_pasted_in_chunks_of_two(inputs):
    photo = np.asarray(Image.open(inputs["photo"]).convert("RGB"))
    canvas = cv2.resize(photo, (4320, 4320), interpolation=cv2.INTER_LANCZOS4)
    eight_k = cv2.copyMakeBorder(canvas, 0, 0, 1680, 1680, cv2.BORDER_REPLICATE)  # 7680 x 4320
    framing = frame_photo(eight_k, RetinaFaceDetector(), 512, 512)
    assert framing.reference.shape == (512, 512, 3)
    crops = np.repeat(framing.reference[None], 3, axis=0)
    chunks = list(pasted_chunks([crops], [eight_k] * 3, framing.plan, [0, 0, 0], PasteSettings(colour_match=False)))
    assert [chunk.shape for chunk in chunks] == [(2, 4320, 7680, 3), (1, 4320, 7680, 3)]


def test_dubbing_framing_takes_the_face_from_a_photo_or_the_most_frontal_frame(inputs):
    from vexpress_core.framing.modes import frame_video

    detector = RetinaFaceDetector()
    own = frame_video(inputs["clip"], detector, 64, 64)
    assert len(own.plan) == 5 and own.plan.fps == 10 and own.track.frame_size == (64, 64)
    assert own.reference.shape == (64, 64, 3) and own.reference_kps.shape == (3, 2)
    assert own.track.fps == 10 and len(own.track) == 5
    photo = np.asarray(Image.open(inputs["photo"]).convert("RGB"))
    other = frame_video(inputs["clip"], detector, 64, 64, reference_photo=photo, seconds_needed=0.1)
    assert not np.array_equal(other.reference, own.reference)
    assert other.driving_track(4, 20.0).points.shape == (4, 3, 2)
