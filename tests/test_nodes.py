"""The ComfyUI nodes without ComfyUI: conventions, declared vs returned types, no input mutation,
model-folder registration, progress and cancel. ComfyUI's modules are faked where needed."""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import nodes
from nodes import runtime
from nodes import types as vtypes
from nodes.loaders import model_folder_path, model_folders
from vexpress_core.keypoints import crop_box
from vexpress_core.audio import load_audio
from vexpress_core.keypoints import KeypointTrack
from vexpress_core.tiny import make_tiny_models

REPO = Path(__file__).resolve().parents[1]
SAMPLE = "short_case_tys"
CUSTOM_TYPES = {vtypes.MODELS, vtypes.REFERENCE, vtypes.AUDIO, vtypes.KPS}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


# ------------------------------------------------------------------------------------------------
# Fakes of ComfyUI's modules


class FakeFolderPaths(types.ModuleType):
    def __init__(self, base: Path):
        super().__init__("folder_paths")
        self.models_dir = str(base / "models")
        self.folder_names_and_paths = {}
        self.input_dir = base / "input"

    def add_model_folder_path(self, name, path, is_default=False):
        paths = self.folder_names_and_paths.setdefault(name, ([], set()))[0]
        if path not in paths:
            paths.insert(0, path) if is_default else paths.append(path)

    def get_folder_paths(self, name):
        return list(self.folder_names_and_paths[name][0])

    def get_input_directory(self):
        return str(self.input_dir)

    def get_annotated_filepath(self, name):
        return str(self.input_dir / name)


class InterruptProcessingException(Exception):
    pass


class FakeModelManagement(types.ModuleType):
    InterruptProcessingException = InterruptProcessingException

    def __init__(self):
        super().__init__("comfy.model_management")
        self.interrupt = False
        self.checks = 0
        self.freed = []

    def get_torch_device(self):
        return torch.device("cpu")

    def should_use_fp16(self, device=None):
        return False

    def should_use_bf16(self, device=None):
        return False

    def free_memory(self, num_bytes, device):
        self.freed.append((num_bytes, device))

    def soft_empty_cache(self, force=False):
        pass

    def throw_exception_if_processing_interrupted(self):
        self.checks += 1
        if self.interrupt:
            self.interrupt = False
            raise InterruptProcessingException()


class FakeUtils(types.ModuleType):
    def __init__(self):
        super().__init__("comfy.utils")
        self.updates = []
        outer = self

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.current = total, 0

            def update_absolute(self, value, total=None, preview=None):
                if total is not None:
                    self.total = total
                self.current = min(value, self.total)
                outer.updates.append((self.current, self.total))

        self.ProgressBar = ProgressBar


@pytest.fixture()
def comfy(monkeypatch, tmp_path):
    """ComfyUI's folder_paths, comfy.model_management and comfy.utils, faked in the nodes' runtime."""
    fake = types.SimpleNamespace(folder_paths=FakeFolderPaths(tmp_path), mm=FakeModelManagement(), utils=FakeUtils())
    monkeypatch.setattr(runtime, "folder_paths", fake.folder_paths)
    monkeypatch.setattr(runtime, "model_management", fake.mm)
    monkeypatch.setattr(runtime, "comfy_utils", fake.utils)
    return fake


# ------------------------------------------------------------------------------------------------
# Shared data


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("v-express")
    make_tiny_models(root / "V-Express")
    return root


@pytest.fixture(scope="module")
def handle(model_root):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.MODEL_ROOT_ENV, str(model_root))
        patch.setattr(runtime, "folder_paths", None)
        patch.setattr(runtime, "model_management", None)
        (models,) = nodes.NODE_CLASS_MAPPINGS["VExpressLoadModels"]().load("V-Express", "fp32", "gpu")
    return models


def image_tensor(path: Path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float()[None] / 255.0


@pytest.fixture(scope="module")
def portrait(samples_dir):
    return image_tensor(samples_dir / SAMPLE / "ref.jpg")


@pytest.fixture(scope="module")
def speech_audio(samples_dir):
    wave = torch.from_numpy(load_audio(samples_dir / SAMPLE / "aud.mp3"))
    return {"waveform": wave[None, None, :4800].repeat(1, 2, 1), "sample_rate": 16000}  # 0.3 s, stereo


@pytest.fixture(scope="module")
def prepared(handle, portrait, speech_audio):
    N = nodes.NODE_CLASS_MAPPINGS
    reference, _ = N["VExpressLoadReference"]().prepare(handle, portrait, 64, 64, "center", 0.6, "retinaface", -1)
    speech, _, _ = N["VExpressAudioEncode"]().encode(handle, speech_audio, 30.0)
    (kps,) = N["VExpressKpsRetarget"]().retarget(reference, speech, "fix_face", "auto")
    return reference, speech, kps


# ------------------------------------------------------------------------------------------------
# Conventions


def all_inputs(cls):
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}, spec


@pytest.mark.parametrize("node_id", sorted(nodes.NODE_CLASS_MAPPINGS))
def test_node_conventions(node_id):
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    assert node_id == cls.__name__ and node_id.startswith(vtypes.PREFIX)
    assert node_id in nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert cls.CATEGORY == "V-Express"
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    inputs, spec = all_inputs(cls)
    assert set(spec) <= {"required", "optional"}
    for name, (kind, *options) in inputs.items():
        assert options and options[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
        if isinstance(kind, str) and kind not in WIDGET_TYPES | {"IMAGE", "AUDIO"}:
            assert kind in CUSTOM_TYPES, f"{node_id}.{name}: custom type {kind} lacks the VEXPRESS_ prefix"
        if kind in ("INT", "FLOAT"):
            opts = options[0]
            assert opts["min"] <= opts["default"] <= opts["max"], f"{node_id}.{name} default out of range"
        if isinstance(kind, list) and "default" in options[0]:
            assert options[0]["default"] in kind
    for kind in cls.RETURN_TYPES:
        assert kind in CUSTOM_TYPES | WIDGET_TYPES | {"IMAGE", "AUDIO"}
    # The function takes exactly the declared inputs; optional ones have defaults.
    parameters = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    names = [p for p in parameters if p != "self"]
    assert set(names) == set(inputs)
    for name in spec.get("optional", {}):
        assert parameters[name].default is not inspect.Parameter.empty


def test_pack_imports_like_comfyui_without_comfyui():
    """ComfyUI imports the folder by path as a package; without ComfyUI present it must still load."""
    spec = importlib.util.spec_from_file_location("vexpress_pack_plain", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert set(module.NODE_CLASS_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)
        assert module.nodes.runtime.folder_paths is None
    finally:
        for name in [n for n in sys.modules if n == spec.name or n.startswith(spec.name + ".")]:
            del sys.modules[name]


def test_pack_registers_model_folder_with_comfyui(tmp_path, monkeypatch):
    """With ComfyUI's modules present (faked in sys.modules) the pack registers models/v-express."""
    folder_paths = FakeFolderPaths(tmp_path)
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = FakeModelManagement(), FakeUtils()
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", comfy.model_management)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    spec = importlib.util.spec_from_file_location("vexpress_pack_comfy", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert module.nodes.runtime.folder_paths is folder_paths
        assert module.nodes.runtime.model_management is comfy.model_management
        assert folder_paths.get_folder_paths("v-express") == [str(tmp_path / "models" / "v-express")]
    finally:
        for name in [n for n in sys.modules if n == spec.name or n.startswith(spec.name + ".")]:
            del sys.modules[name]


# ------------------------------------------------------------------------------------------------
# Model folder


def test_model_dropdown_lists_subfolders_and_validates(comfy, model_root, tmp_path):
    root = tmp_path / "models" / "v-express"
    comfy.folder_paths.add_model_folder_path("v-express", str(root), is_default=True)
    (root / "broken" / "v-express").mkdir(parents=True)
    # A clone of the Hugging Face repo keeps everything under model_ckpts/.
    shutil.copytree(model_root / "V-Express", root / "V-Express-clone" / "model_ckpts")
    (root / "V-Express").symlink_to(model_root / "V-Express", target_is_directory=True)
    loader = nodes.NODE_CLASS_MAPPINGS["VExpressLoadModels"]
    assert loader.INPUT_TYPES()["required"]["model"][0] == model_folders() == ["V-Express", "V-Express-clone", "broken"]
    assert model_folder_path("V-Express-clone") == root / "V-Express-clone" / "model_ckpts"
    assert loader.VALIDATE_INPUTS("V-Express") is True
    assert loader.VALIDATE_INPUTS("V-Express-clone") is True
    message = loader.VALIDATE_INPUTS("broken")
    assert isinstance(message, str) and "missing" in message and "reference_net" in message
    assert "not found" in loader.VALIDATE_INPUTS("nothing-here")


def test_loader_caches_and_uses_comfy_devices(comfy, model_root, tmp_path):
    comfy.folder_paths.add_model_folder_path("v-express", str(model_root))
    loader = nodes.NODE_CLASS_MAPPINGS["VExpressLoadModels"]()
    (first,) = loader.load("V-Express", "auto", "cpu")
    (again,) = loader.load("V-Express", "auto", "cpu")
    assert again is first
    assert first.dtype == torch.float32 and first.load_device == torch.device("cpu")
    (other,) = loader.load("V-Express", "bf16", "cpu")
    assert other is not first and other.dtype == torch.bfloat16
    assert next(other.models.denoising_unet.parameters()).dtype == torch.bfloat16


def test_idle_networks_go_back_even_on_error():
    @dataclasses.dataclass
    class FakeModels:
        net: torch.nn.Module
        device: torch.device = torch.device("cpu")

        def networks(self):
            return {"net": self.net}

    handle = vtypes.ModelHandle(FakeModels(torch.nn.Linear(2, 2)), "fake", torch.device("cpu"), torch.device("meta"))
    with pytest.raises(RuntimeError, match="boom"):
        with handle.using(("net",)) as models:
            assert models.net.weight.device.type == "cpu" and models.device == torch.device("cpu")
            raise RuntimeError("boom")
    assert handle.models.net.weight.device.type == "meta"
    with pytest.raises(KeyError, match="unknown"):
        with handle.using(("vae",)):
            pass


def test_crop_box():
    assert crop_box((400, 200), 1.0) == (100, 0, 300, 200)
    assert crop_box((200, 400), 0.5) == (0, 0, 200, 400)
    # A face near the top-left corner, with a margin, stays inside the image.
    x0, y0, x1, y1 = crop_box((1000, 800), 1.0, (10, 20, 110, 140), 0.5)
    assert (x0, y0) == (0, 0) and x1 - x0 == y1 - y0 == 240
    # The crop never exceeds the image: the margin shrinks instead.
    assert crop_box((300, 300), 1.0, (100, 100, 200, 200), 3.0) == (0, 0, 300, 300)


# ------------------------------------------------------------------------------------------------
# Declared outputs match returned values; inputs untouched


def check_value(kind: str, value) -> None:
    if kind == "IMAGE":
        assert isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.device.type == "cpu"
        assert value.ndim == 4 and value.shape[-1] == 3 and 0 <= float(value.min()) <= float(value.max()) <= 1
    elif kind == "AUDIO":
        assert isinstance(value["waveform"], torch.Tensor) and value["waveform"].ndim == 3
        assert isinstance(value["sample_rate"], int)
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool)
    elif kind == "FLOAT":
        assert isinstance(value, float)
    elif kind == vtypes.MODELS:
        assert isinstance(value, vtypes.ModelHandle)
    elif kind == vtypes.REFERENCE:
        assert isinstance(value, vtypes.ReferenceInput) and value.keypoints.shape == (3, 2)
    elif kind == vtypes.AUDIO:
        assert isinstance(value, vtypes.SpeechInput)
    elif kind == vtypes.KPS:
        assert isinstance(value, KeypointTrack)
    else:
        raise AssertionError(f"no check for {kind}")


def run_node(node_id, **kwargs):
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    snapshot = {k: (v.clone() if isinstance(v, torch.Tensor) else {**v, "waveform": v["waveform"].clone()} if isinstance(v, dict) else v)
                for k, v in kwargs.items()}
    result = getattr(cls(), cls.FUNCTION)(**kwargs)
    assert isinstance(result, tuple) and len(result) == len(cls.RETURN_TYPES)
    for kind, value in zip(cls.RETURN_TYPES, result):
        check_value(kind, value)
    for key, before in snapshot.items():  # nodes never change their inputs
        after = kwargs[key]
        if isinstance(before, torch.Tensor):
            assert torch.equal(before, after), f"{node_id} changed its input {key}"
        elif isinstance(before, dict):
            assert torch.equal(before["waveform"], after["waveform"]), f"{node_id} changed its input {key}"
    return result


def test_node_chain_declared_types(handle, portrait, speech_audio, samples_dir):
    reference, picture = run_node("VExpressLoadReference", models=handle, image=portrait, width=64, height=48,
                                  crop="face", face_margin=0.6, detector="retinaface", face_index=-1)
    assert picture.shape == (1, 48, 64, 3) and reference.width == 64 and reference.height == 48
    assert (reference.keypoints[:, 0] < 64).all() and (reference.keypoints[:, 1] < 48).all()
    speech, frame_count, audio = run_node("VExpressAudioEncode", models=handle, audio=speech_audio, fps=25.0)
    assert frame_count == speech.num_frames == 7 and speech.fps == 25.0
    assert audio["waveform"].shape == (1, 2, 4480)  # 7 frames at 25 fps of 16 kHz
    driving = image_tensor(samples_dir / SAMPLE / "ref.jpg").repeat(3, 1, 1, 1)
    (track,) = run_node("VExpressKpsExtract", images=driving, fps=24.0, detector="retinaface", face_index=-1)
    assert len(track) == 3 and track.fps == 24.0 and track.valid.all()
    for mode in ("fix_face", "no_retarget", "offset_retarget", "naive_retarget"):
        (kps,) = run_node("VExpressKpsRetarget", reference=reference, speech=speech, mode=mode, resample="auto", kps=track)
        assert len(kps) == 7 and kps.frame_size == (64, 48)
    (preview,) = run_node("VExpressKpsPreview", kps=kps, width=0, height=0)
    assert preview.shape == (7, 48, 64, 3) and preview.max() > 0


def test_fix_face_needs_no_driving_track_and_other_modes_do(prepared):
    reference, speech, _ = prepared
    retarget = nodes.NODE_CLASS_MAPPINGS["VExpressKpsRetarget"]()
    (kps,) = retarget.retarget(reference, speech, "fix_face", "auto")
    assert np.allclose(kps.points, reference.keypoints[None])
    with pytest.raises(ValueError, match="needs a keypoint track"):
        retarget.retarget(reference, speech, "naive_retarget", "auto")


def test_kps_load_node(comfy, samples_dir):
    comfy.folder_paths.input_dir.mkdir()
    shutil.copy(samples_dir / SAMPLE / "kps.pth", comfy.folder_paths.input_dir / "driving_kps.pth")
    loader = nodes.NODE_CLASS_MAPPINGS["VExpressKpsLoad"]
    assert loader.INPUT_TYPES()["required"]["file"][0] == ["driving_kps.pth"]
    assert loader.VALIDATE_INPUTS("driving_kps.pth") is True
    assert "not found" in loader.VALIDATE_INPUTS("other.pth")
    (track,) = run_node("VExpressKpsLoad", file="driving_kps.pth", fps=25.0)
    assert track.fps == 25.0 and track.frame_size == (512, 512)
    (unknown,) = run_node("VExpressKpsLoad", file="driving_kps.pth", fps=0.0)
    assert unknown.fps is None


def test_reference_without_a_face_says_so(handle):
    y, x = np.mgrid[0:128, 0:128]
    gradient = torch.from_numpy(np.stack([x, y, x + y], -1) / 256.0).float()[None]
    with pytest.raises(ValueError, match="no face found"):
        nodes.NODE_CLASS_MAPPINGS["VExpressLoadReference"]().prepare(handle, gradient, 64, 64, "face", 0.6, "retinaface", -1)
    with pytest.raises(ValueError, match="no face found"):
        nodes.NODE_CLASS_MAPPINGS["VExpressLoadReference"]().prepare(handle, gradient, 64, 64, "center", 0.6, "retinaface", -1)


# ------------------------------------------------------------------------------------------------
# Sampler: outputs, progress per (step, window), cancel within one window


SAMPLER_ARGS = dict(steps=2, cfg=1.0, reference_weight=0.95, audio_weight=3.0, context_frames=4, context_overlap=1,
                    blend="mean", scheduler="ddim", seed=7, deflicker=True)


def test_sampler_outputs_and_progress(comfy, handle, prepared):
    reference, speech, kps = prepared
    images, audio, fps = run_node("VExpressSampler", models=handle, reference=reference, speech=speech, kps=kps,
                                  **SAMPLER_ARGS, window_batch=2, decode_chunk=4)
    assert images.shape == (9, 64, 64, 3) and fps == 30.0
    assert audio["waveform"].shape == (1, 2, 4800) and audio["sample_rate"] == 16000
    windows = 3  # 9 frames in windows of 4 overlapping by 1: starts 0, 3, 5
    assert comfy.utils.updates[-1] == (2 * windows, 2 * windows)
    assert [value for value, _ in comfy.utils.updates] == list(range(1, 2 * windows + 1))
    assert comfy.mm.checks >= 2 * windows


def test_sampler_stops_within_one_window_on_interrupt(comfy, handle, prepared):
    reference, speech, kps = prepared
    original = comfy.utils.ProgressBar.update_absolute

    def press_cancel_after_first_window(bar, value, total=None, preview=None):
        original(bar, value, total, preview)
        comfy.mm.interrupt = True

    comfy.utils.ProgressBar.update_absolute = press_cancel_after_first_window
    with pytest.raises(InterruptProcessingException):
        nodes.NODE_CLASS_MAPPINGS["VExpressSampler"]().sample(handle, reference, speech, kps, **SAMPLER_ARGS)
    assert len(comfy.utils.updates) == 1
    # The handle is still usable after the cancel.
    comfy.utils.ProgressBar.update_absolute = original
    images, _, _ = nodes.NODE_CLASS_MAPPINGS["VExpressSampler"]().sample(handle, reference, speech, kps, **{**SAMPLER_ARGS, "steps": 1})
    assert images.shape[0] == 9


def test_sampler_rejects_a_track_of_the_wrong_length(handle, prepared):
    reference, speech, kps = prepared
    short = KeypointTrack(kps.points[:5], kps.frame_size, kps.fps)
    with pytest.raises(ValueError, match="frames"):
        nodes.NODE_CLASS_MAPPINGS["VExpressSampler"]().sample(handle, reference, speech, short, **SAMPLER_ARGS)
