"""The ComfyUI side of first use: the loader offers the known model before it exists and fetches it on
the first run (a fake hub, no network), with the progress bar counting bytes; the sampler's progress
updates carry preview pictures, which never change the video."""
from __future__ import annotations

import functools

import numpy as np

import pytest
import torch
from PIL import Image

from comfyui_like import NODES, REPO
from fake_comfyui import FakeUtils
from vexpress_core.download import DownloadCancelled, ensure_model
from vexpress_core.tiny import make_tiny_models

from test_download import FakeHub, published_repo

fetch, runtime = NODES.fetch, NODES.runtime
BY_ID = NODES.nodes_by_id()
SAMPLER_ARGS = dict(steps=2, cfg=1.0, reference_weight=0.95, audio_weight=3.0, scheduler="ddim", seed=7, deflicker=False)


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "folder_paths", None)
    monkeypatch.setenv(runtime.MODEL_ROOT_ENV, str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("published") / "V-Express")


@pytest.fixture(scope="module")
def repo(tiny_dir):
    return published_repo(tiny_dir)


@pytest.fixture(scope="module")
def prepared(tiny_dir):
    """Models, reference, speech and a fix_face track for a 64x64, 0.3 s generation."""
    N = BY_ID
    assets = REPO / "vexpress_core" / "assets"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("folder_paths", "model_management", "comfy_utils"):
            patch.setattr(runtime, name, None)
        patch.setenv(runtime.MODEL_ROOT_ENV, str(tiny_dir.parent))
        (models,) = N["VExpressLoadModels"].run(model="V-Express", dtype="fp32", keep_idle_on="gpu")
        portrait = torch.from_numpy(np.array(Image.open(assets / "portrait.png").convert("RGB"))).float()[None] / 255
        reference, _ = N["VExpressLoadReference"].run(models=models, image=portrait, width=64, height=64, crop="center",
                                                      face_margin=0.6, detector="retinaface", face_index=-1)
        wave = torch.sin(torch.arange(4800) / 16000 * 2 * torch.pi * 220)[None, None]
        speech, _, _ = N["VExpressAudioEncode"].run(models=models, audio={"waveform": wave, "sample_rate": 16000}, fps=30.0)
        (kps,) = N["VExpressKpsRetarget"].run(reference=reference, speech=speech, mode="fix_face", resample="auto")
        (window,) = N["VExpressWindowOptions"].run(context_frames=4, context_overlap=1, blend="mean")
    return models, reference, speech, kps, window


def test_the_loader_offers_the_known_model_before_it_exists(empty_root):
    loader = BY_ID["VExpressLoadModels"]
    assert fetch.model_choices() == ["V-Express", fetch.TOY_CHOICE]
    assert loader.validate_inputs(model="V-Express") is True  # fetched when the prompt runs
    assert "not found" in loader.validate_inputs(model="Elsewhere")
    (empty_root / "mine" / "v-express").mkdir(parents=True)
    assert fetch.model_choices() == ["mine", "V-Express", fetch.TOY_CHOICE]


def test_picking_the_absent_model_downloads_it_with_byte_progress(empty_root, repo, monkeypatch):
    utils = FakeUtils()
    monkeypatch.setattr(runtime, "comfy_utils", utils)
    monkeypatch.setattr(fetch, "ensure_model", functools.partial(ensure_model, hub=FakeHub(repo, delay=0.05)))
    path = fetch.model_folder("V-Express")
    assert path == empty_root / "V-Express" and (path / "v-express" / "reference_net.bin").is_file()
    totals = {total for _, total, _ in utils.calls}
    assert len(totals) == 1 and totals.pop() > 10_000_000  # bytes, not files
    assert utils.calls[-1][0] == utils.calls[-1][1]


def test_cancel_during_the_download_leaves_no_model(empty_root, repo, monkeypatch):
    class Interrupted(Exception):
        pass

    calls = []

    def interrupt_on_second_poll():
        calls.append(1)
        if len(calls) > 1:
            raise Interrupted

    monkeypatch.setattr(runtime, "check_interrupted", interrupt_on_second_poll)
    monkeypatch.setattr(fetch, "ensure_model", functools.partial(ensure_model, hub=FakeHub(repo, delay=0.05)))
    with pytest.raises((Interrupted, DownloadCancelled)):
        fetch.model_folder("V-Express")
    assert fetch.model_choices() == ["V-Express", fetch.TOY_CHOICE] and fetch.will_download("V-Express")


def test_sampler_progress_carries_previews_that_do_not_change_the_video(prepared, monkeypatch):
    models, reference, speech, kps, window = prepared
    sampler = BY_ID["VExpressSampler"]
    results = {}
    for previews in (True, False):
        utils = FakeUtils()
        monkeypatch.setattr(runtime, "comfy_utils", utils)
        images, _, _ = sampler.run(models=models, reference=reference, speech=speech, kps=kps, **SAMPLER_ARGS,
                                   window_options=window, previews=previews)
        results[previews] = (images, [preview for _, _, preview in utils.calls if preview is not None])
    assert torch.equal(results[True][0], results[False][0])
    assert results[False][1] == []
    kind, picture, max_side = results[True][1][0]
    assert kind == "JPEG" and isinstance(picture, Image.Image) and picture.mode == "RGB" and max_side == 512
    assert picture.size == (16, 16)  # a 4-frame window of 8x8 latents (64x64 frames) tiled 2x2
