"""A missing optional backend (onnxruntime for retinaface, insightface for buffalo_l) is one clear
line in the CLI and a node error that says what to install; the next run after installing works."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_like import NODES, execute, load_handle
from vexpress_core import cli
from vexpress_core.demo import ASSETS_DIR
from vexpress_core.tiny import make_tiny_models

BY_ID = NODES.nodes_by_id()


def fake_buffalo_l(model_dir):
    pack = model_dir / "insightface_models" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"")
    return model_dir


@pytest.mark.parametrize("detector, package", [("retinaface", "onnxruntime"), ("insightface", "insightface")])
def test_cli_reports_a_missing_backend_in_one_line(detector, package, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: importing it raises ImportError
    models = fake_buffalo_l(make_tiny_models(tmp_path / "models"))  # complete: the folder is checked first
    capsys.readouterr()
    code = cli.main(["generate", "--models", str(models), "--reference", str(ASSETS_DIR / "portrait.png"),
                     "--audio", str(ASSETS_DIR / "speech.wav"), "--out", str(tmp_path / "out.mp4"),
                     "--detector", detector, "--width", "64", "--height", "64"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"error: the {detector} detector needs {package}: pip install {package}"]
    assert "Traceback" not in err and not (tmp_path / "out.mp4").exists()


@pytest.fixture(scope="module")
def models_handle(tmp_path_factory):
    root = tmp_path_factory.mktemp("v-express")
    make_tiny_models(root / "V-Express")
    return load_handle(root)


def test_load_reference_node_names_the_missing_package_then_works(models_handle, monkeypatch):
    portrait = torch.from_numpy(np.array(Image.open(ASSETS_DIR / "portrait.png").convert("RGB"))).float()[None] / 255
    inputs = dict(models=models_handle, image=portrait, width=64, height=64, crop="center", face_margin=0.6,
                  detector="retinaface", face_index=-1)
    NODES.detectors._cached.cache_clear()  # a detector made by an earlier test would hide the missing package
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)
        failed = execute(BY_ID["VExpressLoadReference"], inputs)
    assert not failed.ok and failed.exception_message.endswith("needs onnxruntime: pip install onnxruntime")
    again = execute(BY_ID["VExpressLoadReference"], inputs)  # installed again: the same process carries on
    assert again.ok, again.exception_message
