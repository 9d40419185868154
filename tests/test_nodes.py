"""The ComfyUI nodes without ComfyUI: one spec per node rendered to ComfyUI's schema, declared vs
returned types, no input mutation, model-folder registration, ComfyUI model management, progress,
cancel, and server survival (errors that say what to change, then a valid run in the same process).
The pack is loaded by path as a package, as ComfyUI does (tests/comfyui_like.py); ComfyUI's modules
are faked where needed. tests/comfyui_live_check.py runs the same checks against a real ComfyUI."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import os
import shutil
import sys
import types
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_like import NODES, PACK, REPO, execute, load_handle, load_pack, spec_defaults, validate
from fake_comfyui import (FakeFolderPaths, FakeModelManagement, FakeModelPatcher, FakeUtils,  # noqa: F401 (comfy: a fixture)
                          InterruptProcessingException, comfy)
from vexpress_core.audio import load_audio
from vexpress_core.keypoints import KeypointTrack, crop_box
from vexpress_core.offload import REFERENCE_NETWORKS, SPEECH_NETWORKS
from vexpress_core.orchestration import PreparedReference
from vexpress_core.settings import GenerationSettings, MemorySettings, SpeedSettings, WindowSettings
from vexpress_core.tiny import make_tiny_models

runtime, schema, vtypes, management = NODES.runtime, NODES.schema, NODES.types, NODES.management
BY_ID = NODES.nodes_by_id()
SAMPLE = "short_case_tys"
CUSTOM_TYPES = {vtypes.MODELS, vtypes.REFERENCE, vtypes.AUDIO, vtypes.KPS, vtypes.WINDOW_OPTIONS, vtypes.MEMORY_OPTIONS,
                vtypes.SPEED_OPTIONS, vtypes.CROP_PLAN}
WIDGET_TYPES = set(schema.WIDGET_TYPES)


# ------------------------------------------------------------------------------------------------
# Shared data


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("v-express")
    make_tiny_models(root / "V-Express")
    return root


@pytest.fixture(scope="module")
def handle(model_root):
    """Loaded without ComfyUI: the core's `placed` moves the networks."""
    return load_handle(model_root)


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


REFERENCE_ARGS = dict(width=64, height=64, crop="center", face_margin=0.6, detector="retinaface", face_index=-1)


@pytest.fixture(scope="module")
def prepared(handle, portrait, speech_audio):
    reference, _ = BY_ID["VExpressLoadReference"].run(models=handle, image=portrait, **REFERENCE_ARGS)
    speech, _, _ = BY_ID["VExpressAudioEncode"].run(models=handle, audio=speech_audio, fps=30.0)
    (kps,) = BY_ID["VExpressKpsRetarget"].run(reference=reference, speech=speech, mode="fix_face", resample="auto")
    return reference, speech, kps


# ------------------------------------------------------------------------------------------------
# Conventions and the rendered schema


@pytest.mark.parametrize("node_id", sorted(BY_ID))
def test_node_conventions(node_id):
    node = BY_ID[node_id]
    assert node_id == node.__name__ and node_id.startswith(vtypes.PREFIX)
    assert node.DISPLAY_NAME and node.CATEGORY == "V-Express"
    assert isinstance(node.DESCRIPTION, str) and len(node.DESCRIPTION) > 40
    assert node.OUTPUTS and all(out.tooltip and out.name for out in node.OUTPUTS)
    names = [spec.name for spec in node.INPUTS]
    assert len(names) == len(set(names))
    for spec in node.INPUTS:
        assert spec.tooltip, f"{node_id}.{spec.name} has no tooltip"
        if not spec.is_widget and spec.type not in ("IMAGE", "AUDIO"):
            assert spec.type in CUSTOM_TYPES, f"{node_id}.{spec.name}: custom type {spec.type} lacks the VEXPRESS_ prefix"
        if spec.type in ("INT", "FLOAT"):
            assert spec.min <= spec.default <= spec.max, f"{node_id}.{spec.name} default out of range"
        if spec.type == "COMBO":
            if spec.name not in ("model", "file"):  # folder listings: empty without ComfyUI's folders
                assert spec.choices(), f"{node_id}.{spec.name} offers nothing"
            if spec.default is not None:
                assert spec.default in spec.choices()
    for out in node.OUTPUTS:
        assert out.type in CUSTOM_TYPES | WIDGET_TYPES | {"IMAGE", "AUDIO"}
    # execute takes exactly the declared inputs; optional ones have defaults, required ones none.
    parameters = inspect.signature(node.execute).parameters
    assert list(parameters) == names
    for spec in node.INPUTS:
        assert (parameters[spec.name].default is not inspect.Parameter.empty) == spec.optional
    if node.has_validation():
        assert set(inspect.signature(node.validate_inputs).parameters) <= set(names)


@pytest.mark.parametrize("node_id", sorted(BY_ID))
def test_object_info_is_comfyuis_v3_shape(node_id):
    """The spec's /object_info entry, as ComfyUI v0.3.64 serialises a V3 node (Schema.get_v1_info:
    checked equal to the live server's by tests/comfyui_live_check.py)."""
    info = schema.object_info(BY_ID[node_id])
    assert info["name"] == node_id and info["category"] == "V-Express"
    required = [s.name for s in BY_ID[node_id].INPUTS if not s.optional]
    optional = [s.name for s in BY_ID[node_id].INPUTS if s.optional]
    assert info["input_order"]["required"] == required and info["input_order"].get("optional", []) == optional
    for name, (kind, options) in {**info["input"]["required"], **info["input"].get("optional", {})}.items():
        assert "optional" not in options and options["tooltip"]
        if kind == "COMBO":
            assert options["multiselect"] is False and isinstance(options["options"], list)
    assert len(info["output"]) == len(info["output_name"]) == len(info["output_tooltips"]) == len(info["output_is_list"])


def test_registered_choices_appear_in_node_inputs():
    """A detector or scheduler registered after import shows up in the combos (read at schema time)."""
    from vexpress_core.detectors import DETECTORS
    from vexpress_core.sampling import SCHEDULERS

    DETECTORS.register("dummy-detector", lambda model_dir: None)
    SCHEDULERS.register("dummy-scheduler", lambda: None)
    try:
        combos = {(node_id, name): options["options"] for node_id, node in BY_ID.items()
                  for group in schema.object_info(node)["input"].values() for name, (kind, options) in group.items()
                  if kind == "COMBO"}
        assert "dummy-detector" in combos["VExpressLoadReference", "detector"]
        assert "dummy-detector" in combos["VExpressKpsExtract", "detector"]
        assert "dummy-scheduler" in combos["VExpressSampler", "scheduler"]
    finally:
        DETECTORS.unregister("dummy-detector")
        SCHEDULERS.unregister("dummy-scheduler")
    assert "dummy-scheduler" not in BY_ID["VExpressSampler"].INPUTS[8].choices()


class FakeIo:
    """The part of comfy_api.latest.io that comfy_node uses, recording what it is given (the real
    classes are checked by tests/comfyui_live_check.py)."""

    class ComfyNode:
        pass

    class Schema:
        def __init__(self, **fields):
            self.__dict__.update(fields)

    class NodeOutput:
        def __init__(self, *args):
            self.args = args

    def __init__(self):
        def kind(name):
            class Input:
                def __init__(self, id, **options):
                    self.id, self.io_type, self.options = id, name, options

            class Output:
                def __init__(self, **options):
                    self.io_type, self.options = name, options

            return types.SimpleNamespace(Input=Input, Output=Output)

        for attr, name in (("Int", "INT"), ("Float", "FLOAT"), ("Boolean", "BOOLEAN"), ("String", "STRING"),
                           ("Combo", "COMBO"), ("Image", "IMAGE"), ("Audio", "AUDIO"), ("Mask", "MASK"),
                           ("Latent", "LATENT"), ("Video", "VIDEO")):
            setattr(self, attr, kind(name))
        self.Custom = kind


@pytest.mark.parametrize("node_id", sorted(BY_ID))
def test_comfy_node_renders_every_field(node_id):
    node, io = BY_ID[node_id], FakeIo()
    rendered = schema.comfy_node(node, io)
    assert rendered.__name__ == node_id and issubclass(rendered, io.ComfyNode) and rendered.SPEC is node
    built = rendered.define_schema()
    assert (built.node_id, built.display_name, built.category, built.description) == (
        node_id, node.DISPLAY_NAME, node.CATEGORY, node.DESCRIPTION)
    info = schema.object_info(node)
    for spec, comfy_input in zip(node.INPUTS, built.inputs, strict=True):
        assert comfy_input.id == spec.name and comfy_input.io_type == spec.type
        rendered_options = {k: v for k, v in comfy_input.options.items() if v is not None and k != "optional"}
        if spec.type == "COMBO":
            rendered_options["multiselect"] = False
        group = "optional" if spec.optional else "required"
        assert comfy_input.options["optional"] == spec.optional
        assert rendered_options == info["input"][group][spec.name][1]
    assert [(o.io_type, o.options["display_name"], o.options["tooltip"]) for o in built.outputs] == [
        (o.type, o.name, o.tooltip) for o in node.OUTPUTS]
    for hook in ("validate_inputs", "fingerprint_inputs"):
        if hook in vars(node):
            assert inspect.getfullargspec(getattr(rendered, hook)).args == inspect.getfullargspec(getattr(node, hook)).args
        else:
            assert hook not in vars(rendered)


@pytest.mark.parametrize("node_id", ["VExpressLoadReference", "VExpressFaceCrop"])
def test_rendered_validation_answers_as_the_node_on_comfyuis_copy_of_the_class(node_id):
    """ComfyUI calls validate_inputs on a locked copy of the rendered class, which has none of the
    node's attributes; these nodes' checks read their own input specs (found in a real ComfyUI)."""
    node = BY_ID[node_id]
    locked = type(f"Locked{node_id}", (schema.comfy_node(node, FakeIo()),), {})
    assert locked.validate_inputs(width=512, height=512) is True
    refused = locked.validate_inputs(width=100, height=512)
    assert refused == node.validate_inputs(width=100, height=512) and "width must be a multiple of 8" in refused


def test_comfy_entrypoint_lists_every_node(monkeypatch):
    io = FakeIo()

    class ComfyExtension:
        pass

    latest = types.ModuleType("comfy_api.latest")
    latest.ComfyExtension, latest.io = ComfyExtension, io
    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)
    extension = asyncio.run(PACK.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    listed = asyncio.run(extension.get_node_list())
    assert [n.__name__ for n in listed] == [n.node_id() for n in NODES.NODES] == list(BY_ID)
    assert all(issubclass(n, io.ComfyNode) for n in listed)


def test_rendered_execute_returns_node_output(handle, prepared):
    reference, speech, _ = prepared
    rendered = schema.comfy_node(BY_ID["VExpressKpsRetarget"], FakeIo())
    output = rendered.execute(reference=reference, speech=speech, mode="fix_face", resample="auto")
    assert len(output.args) == 1 and isinstance(output.args[0], KeypointTrack)


def test_pack_loads_like_comfyui_and_never_as_bare_nodes():
    """ComfyUI imports the folder by path as a package named after its path; without ComfyUI it still
    loads, exposes only the V3 entry point (ComfyUI ignores comfy_entrypoint when NODE_CLASS_MAPPINGS
    exists), and nothing is imported as the bare top-level `nodes` (ComfyUI's core module)."""
    assert "nodes" not in sys.modules
    assert PACK.__name__ == str(REPO).replace(".", "_x_") and NODES.__name__ == PACK.__name__ + ".nodes"
    assert callable(PACK.comfy_entrypoint) and not hasattr(PACK, "NODE_CLASS_MAPPINGS")
    assert NODES.runtime.folder_paths is None
    assert "from nodes" not in (REPO / "__init__.py").read_text() and "import nodes" not in (REPO / "__init__.py").read_text()


def test_pack_imported_as_plain_module_loads_itself_as_a_package(monkeypatch):
    """Run as a plain file (no package), the entry point loads its folder as the package `vexpress_pack`."""
    import runpy

    monkeypatch.delitem(sys.modules, "vexpress_pack", raising=False)
    try:
        namespace = runpy.run_path(str(REPO / "__init__.py"))
        assert [n.node_id() for n in namespace["NODES"]] == list(BY_ID)
        assert namespace["NODES"][0].__module__ == "vexpress_pack.nodes.loaders" and "nodes" not in sys.modules
    finally:
        for name in [n for n in sys.modules if n == "vexpress_pack" or n.startswith("vexpress_pack.")]:
            del sys.modules[name]


def test_pack_registers_model_folder_with_comfyui(tmp_path, monkeypatch):
    """With ComfyUI's modules present (faked in sys.modules) the pack registers models/v-express."""
    folder_paths = FakeFolderPaths(tmp_path)
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = FakeModelManagement(), FakeUtils()
    comfy.model_patcher = types.SimpleNamespace(ModelPatcher=FakeModelPatcher)
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    for name in ("model_management", "utils", "model_patcher"):
        monkeypatch.setitem(sys.modules, f"comfy.{name}", getattr(comfy, name))
    other = tmp_path / "checkout.of.the.pack"
    shutil.copytree(REPO, other, ignore=shutil.ignore_patterns(".git", "tests", "training", "vexpress_core", "__pycache__", "*.md"))
    try:
        module = load_pack(other)
        assert module.nodes.runtime.folder_paths is folder_paths
        assert module.nodes.runtime.model_management is comfy.model_management
        assert module.nodes.runtime.model_patcher is comfy.model_patcher
        assert folder_paths.get_folder_paths("v-express") == [str(tmp_path / "models" / "v-express")]
    finally:
        name = str(other).replace(".", "_x_")
        for key in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            del sys.modules[key]


# ------------------------------------------------------------------------------------------------
# Model folder and loading


def test_model_dropdown_lists_subfolders_and_validates(comfy, model_root, tmp_path):
    root = tmp_path / "models" / "v-express"
    comfy.folder_paths.add_model_folder_path("v-express", str(root), is_default=True)
    (root / "broken" / "v-express").mkdir(parents=True)
    # A clone of the Hugging Face repo keeps everything under model_ckpts/.
    shutil.copytree(model_root / "V-Express", root / "V-Express-clone" / "model_ckpts")
    (root / "V-Express").symlink_to(model_root / "V-Express", target_is_directory=True)
    loader = BY_ID["VExpressLoadModels"]
    folders = NODES.loaders.model_folders()
    assert folders == ["V-Express", "V-Express-clone", "broken"]
    assert schema.object_info(loader)["input"]["required"]["model"][1]["options"] == folders + [NODES.loaders.TOY_CHOICE]
    assert NODES.loaders.model_folder_path("V-Express-clone") == root / "V-Express-clone" / "model_ckpts"
    assert loader.validate_inputs("V-Express") is True
    assert loader.validate_inputs("V-Express-clone") is True
    message = loader.validate_inputs("broken")
    assert isinstance(message, str) and "missing" in message and "reference_net" in message
    assert "not found" in loader.validate_inputs("nothing-here")


def test_loader_keeps_no_networks_and_uses_comfy_devices(comfy, model_root):
    """No module-level cache: ComfyUI's executor caches the node's output; a dropped handle frees its networks."""
    comfy.folder_paths.add_model_folder_path("v-express", str(model_root))
    loader = BY_ID["VExpressLoadModels"]
    (first,) = loader.run(model="V-Express", dtype="auto", keep_idle_on="cpu")
    assert first.dtype == torch.float32 and first.load_device == torch.device("cpu") and first.low_vram
    assert sorted(first.patchers) == sorted(first.models.networks())
    (other,) = loader.run(model="V-Express", dtype="bf16", keep_idle_on="gpu")
    assert other is not first and other.dtype == torch.bfloat16 and not other.low_vram
    assert next(other.models.denoising_unet.parameters()).dtype == torch.bfloat16
    network = weakref.ref(first.models.denoising_unet)
    del first
    gc.collect()
    assert network() is None


def test_idle_networks_go_back_even_on_error():
    @dataclasses.dataclass
    class FakeModels:
        net: torch.nn.Module
        device: torch.device = torch.device("cpu")

        def networks(self):
            return {"net": self.net}

    handle = management.ModelHandle(FakeModels(torch.nn.Linear(2, 2)), "fake", torch.device("cpu"), torch.device("meta"), low_vram=True)
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
# ComfyUI model management


@dataclasses.dataclass
class TwoNetworks:
    vae: torch.nn.Module
    denoising_unet: torch.nn.Module
    device: torch.device = torch.device("cpu")

    def networks(self):
        return {"vae": self.vae, "denoising_unet": self.denoising_unet}


GPU, HOST = torch.device("cuda", 0), torch.device("cpu")


def managed_handle(low_vram):
    models = TwoNetworks(torch.nn.Linear(4, 4), torch.nn.Linear(8, 8))
    return management.ModelHandle.create(models, "fake", GPU, HOST, low_vram)


def placement(handle):
    return {name: patcher.model.device.type for name, patcher in handle.patchers.items()}


def test_networks_are_comfyui_loaded_models(comfy):
    handle = managed_handle(low_vram=False)
    assert all(isinstance(p, FakeModelPatcher) and p.model.module is getattr(handle.models, name)
               for name, p in handle.patchers.items())
    assert handle.patchers["denoising_unet"].model_size() == 8 * 8 * 4 + 8 * 4
    foreign = FakeModelPatcher(torch.nn.Linear(2, 2), GPU, HOST)
    comfy.mm.load_models_gpu([foreign])
    with handle.using(("denoising_unet",)) as models:
        assert models.device == GPU and placement(handle) == {"vae": "cpu", "denoising_unet": "cuda"}
    (loaded, full), = comfy.mm.load_calls[1:]
    assert loaded == [handle.patchers["denoising_unet"]] and full  # whole modules: no partial (lowvram) load
    # After the block the network stays loaded, as ComfyUI keeps its own models, next to the foreign one.
    assert handle.loaded_networks() == ["denoising_unet"] and len(comfy.mm.current_loaded_models) == 2
    # "Unload models" / free-memory logic evicts it to its offload device; the next use loads it again.
    comfy.mm.get_torch_device = lambda: GPU
    comfy.mm.unload_all_models()
    assert handle.loaded_networks() == [] and placement(handle) == {"vae": "cpu", "denoising_unet": "cpu"}
    with handle.using(("vae", "denoising_unet")):
        assert placement(handle) == {"vae": "cuda", "denoising_unet": "cuda"}
    assert sorted(handle.loaded_networks()) == ["denoising_unet", "vae"]


def test_low_vram_keeps_only_the_running_networks_loaded(comfy):
    handle = managed_handle(low_vram=True)
    foreign = FakeModelPatcher(torch.nn.Linear(2, 2), GPU, HOST)
    comfy.mm.load_models_gpu([foreign])
    with handle.using(("vae",)):
        assert handle.loaded_networks() == ["vae"]
    with pytest.raises(RuntimeError, match="cancelled"):
        with handle.using(("denoising_unet",)):
            assert handle.loaded_networks() == ["denoising_unet"] and placement(handle)["vae"] == "cpu"
            raise RuntimeError("cancelled")
    assert handle.loaded_networks() == [] and placement(handle) == {"vae": "cpu", "denoising_unet": "cpu"}
    assert [m.model for m in comfy.mm.current_loaded_models] == [foreign]  # other models untouched


def test_node_chain_under_comfyui_model_management(comfy, model_root, portrait, speech_audio):
    comfy.folder_paths.add_model_folder_path("v-express", str(model_root))
    (models,) = BY_ID["VExpressLoadModels"].run(model="V-Express", dtype="fp32", keep_idle_on="gpu")
    BY_ID["VExpressLoadReference"].run(models=models, image=portrait, **REFERENCE_ARGS)
    assert sorted(models.loaded_networks()) == sorted(REFERENCE_NETWORKS)
    speech, _, _ = BY_ID["VExpressAudioEncode"].run(models=models, audio=speech_audio, fps=30.0)
    assert sorted(models.loaded_networks()) == sorted(REFERENCE_NETWORKS + SPEECH_NETWORKS)
    comfy.mm.unload_all_models()
    assert models.loaded_networks() == []
    speech_again, _, _ = BY_ID["VExpressAudioEncode"].run(models=models, audio=speech_audio, fps=30.0)
    assert torch.equal(speech.speech.hidden, speech_again.speech.hidden)
    assert [call[0] for call in comfy.mm.load_calls] == [
        [models.patchers[n] for n in names] for names in (REFERENCE_NETWORKS, SPEECH_NETWORKS, SPEECH_NETWORKS)]


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
        assert isinstance(value, management.ModelHandle)
    elif kind == vtypes.REFERENCE:
        assert isinstance(value, PreparedReference) and value.keypoints.shape == (3, 2)
    elif kind == vtypes.AUDIO:
        assert isinstance(value, vtypes.SpeechInput)
    elif kind == vtypes.KPS:
        assert isinstance(value, KeypointTrack)
    elif kind == vtypes.WINDOW_OPTIONS:
        assert isinstance(value, WindowSettings)
    elif kind == vtypes.MEMORY_OPTIONS:
        assert isinstance(value, MemorySettings)
    elif kind == vtypes.SPEED_OPTIONS:
        assert isinstance(value, SpeedSettings)
    else:
        raise AssertionError(f"no check for {kind}")


def run_node(node_id, **kwargs):
    """Runs a node as ComfyUI does; checks outputs against the declaration and that inputs are untouched."""
    node = BY_ID[node_id]
    snapshot = {k: (v.clone() if isinstance(v, torch.Tensor) else {**v, "waveform": v["waveform"].clone()} if isinstance(v, dict) else v)
                for k, v in kwargs.items()}
    outcome = execute(node, kwargs)
    assert outcome.ok, (outcome.errors, outcome.exception_message)
    result = outcome.outputs
    assert isinstance(result, tuple) and len(result) == len(node.OUTPUTS)
    for out, value in zip(node.OUTPUTS, result):
        check_value(out.type, value)
    for key, before in snapshot.items():  # nodes never change their inputs
        after = kwargs[key]
        if isinstance(before, torch.Tensor):
            assert torch.equal(before, after), f"{node_id} changed its input {key}"
        elif isinstance(before, dict):
            assert torch.equal(before["waveform"], after["waveform"]), f"{node_id} changed its input {key}"
    return result


def test_node_chain_declared_types(handle, portrait, speech_audio, samples_dir):
    reference, picture = run_node("VExpressLoadReference", models=handle, image=portrait, width=96, height=64,
                                  crop="face", face_margin=0.6, detector="retinaface", face_index=-1)
    assert picture.shape == (1, 64, 96, 3) and reference.width == 96 and reference.height == 64
    assert (reference.keypoints[:, 0] < 96).all() and (reference.keypoints[:, 1] < 64).all()
    speech, frame_count, audio = run_node("VExpressAudioEncode", models=handle, audio=speech_audio, fps=25.0)
    assert frame_count == speech.num_frames == 7 and speech.fps == 25.0
    assert audio["waveform"].shape == (1, 2, 4480)  # 7 frames at 25 fps of 16 kHz
    driving = image_tensor(samples_dir / SAMPLE / "ref.jpg").repeat(3, 1, 1, 1)
    (track,) = run_node("VExpressKpsExtract", images=driving, fps=24.0, detector="retinaface", face_index=-1)
    assert len(track) == 3 and track.fps == 24.0 and track.valid.all()
    for mode in ("fix_face", "no_retarget", "offset_retarget", "naive_retarget"):
        (kps,) = run_node("VExpressKpsRetarget", reference=reference, speech=speech, mode=mode, resample="auto", kps=track)
        assert len(kps) == 7 and kps.frame_size == (96, 64)
    (preview,) = run_node("VExpressKpsPreview", kps=kps, width=0, height=0)
    assert preview.shape == (7, 64, 96, 3) and preview.max() > 0
    (window,) = run_node("VExpressWindowOptions", context_frames=16, context_overlap=2, blend="ramp")
    assert window == WindowSettings(16, 2, "ramp")
    (memory,) = run_node("VExpressMemoryOptions", **spec_defaults(BY_ID["VExpressMemoryOptions"]))
    assert memory == MemorySettings()
    (speed,) = run_node("VExpressSpeedOptions", **spec_defaults(BY_ID["VExpressSpeedOptions"]))
    assert speed == SpeedSettings()


def test_fix_face_needs_no_driving_track_and_other_modes_do(prepared):
    reference, speech, _ = prepared
    retarget = BY_ID["VExpressKpsRetarget"]
    (kps,) = retarget.run(reference=reference, speech=speech, mode="fix_face", resample="auto")
    assert np.allclose(kps.points, reference.keypoints[None])
    with pytest.raises(ValueError, match="needs a keypoint track"):
        retarget.run(reference=reference, speech=speech, mode="naive_retarget", resample="auto")


def test_kps_load_node(comfy, samples_dir):
    comfy.folder_paths.input_dir.mkdir()
    shutil.copy(samples_dir / SAMPLE / "kps.pth", comfy.folder_paths.input_dir / "driving_kps.pth")
    loader = BY_ID["VExpressKpsLoad"]
    assert schema.object_info(loader)["input"]["required"]["file"][1]["options"] == ["driving_kps.pth"]
    assert loader.validate_inputs("driving_kps.pth") is True
    assert "not found" in loader.validate_inputs("other.pth")
    (track,) = run_node("VExpressKpsLoad", file="driving_kps.pth", fps=25.0)
    assert track.fps == 25.0 and track.frame_size == (512, 512)
    (unknown,) = run_node("VExpressKpsLoad", file="driving_kps.pth", fps=0.0)
    assert unknown.fps is None
    before = loader.fingerprint_inputs(file="driving_kps.pth", fps=0.0)
    path = comfy.folder_paths.input_dir / "driving_kps.pth"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert loader.fingerprint_inputs(file="driving_kps.pth", fps=0.0) != before  # a changed file runs again


def no_face_image():
    y, x = np.mgrid[0:128, 0:128]
    return torch.from_numpy(np.stack([x, y, x + y], -1) / 256.0).float()[None]


def test_reference_without_a_face_says_so(handle):
    for crop in ("face", "center"):
        with pytest.raises(ValueError, match="no face found"):
            BY_ID["VExpressLoadReference"].run(models=handle, image=no_face_image(), **{**REFERENCE_ARGS, "crop": crop})


# ------------------------------------------------------------------------------------------------
# Sampler: options, outputs, progress per (step, window), cancel within one window


SAMPLER_ARGS = dict(steps=2, cfg=1.0, reference_weight=0.95, audio_weight=3.0, scheduler="ddim", seed=7, deflicker=True)
WINDOWS = WindowSettings(context_frames=4, context_overlap=1)


def test_sampler_options_default_to_the_published_settings(prepared):
    reference, speech, _ = prepared
    settings = NODES.sampling.generation_settings(reference, speech, **SAMPLER_ARGS)
    published = GenerationSettings()
    for name in ("context_frames", "context_overlap", "blend", "window_batch", "decode_chunk", "vae_tiling", "compile"):
        assert getattr(settings, name) == getattr(published, name), name
    for spec in BY_ID["VExpressWindowOptions"].INPUTS:
        assert spec.default == getattr(published, spec.name), spec.name
    memory_defaults = {spec.name: spec.default for spec in BY_ID["VExpressMemoryOptions"].INPUTS}
    assert BY_ID["VExpressMemoryOptions"].execute(**memory_defaults)[0] == published.memory  # 0 = "auto"
    chosen = NODES.sampling.generation_settings(reference, speech, **SAMPLER_ARGS, window=WindowSettings(8, 2, "ramp"),
                                                memory=MemorySettings(window_batch=2, decode_chunk=4, vae_tiling=True),
                                                low_vram=True)
    assert (chosen.context_frames, chosen.context_overlap, chosen.blend, chosen.window_batch, chosen.decode_chunk,
            chosen.vae_tiling, chosen.latents_on_host) == (8, 2, "ramp", 2, 4, True, True)


def test_sampler_outputs_and_progress(comfy, handle, prepared):
    reference, speech, kps = prepared
    images, audio, fps = run_node("VExpressSampler", models=handle, reference=reference, speech=speech, kps=kps,
                                  **SAMPLER_ARGS, window_options=WINDOWS,
                                  memory_options=MemorySettings(window_batch=2, decode_chunk=4))
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
    sampler = BY_ID["VExpressSampler"]
    inputs = dict(models=handle, reference=reference, speech=speech, kps=kps, **SAMPLER_ARGS, window_options=WINDOWS)
    assert execute(sampler, inputs, InterruptProcessingException).interrupted
    assert len(comfy.utils.updates) == 1
    # The handle is still usable after the cancel.
    comfy.utils.ProgressBar.update_absolute = original
    images, _, _ = run_node("VExpressSampler", **{**inputs, "steps": 1})
    assert images.shape[0] == 9


def test_sampler_rejects_a_track_of_the_wrong_length(handle, prepared):
    reference, speech, kps = prepared
    short = KeypointTrack(kps.points[:5], kps.frame_size, kps.fps)
    with pytest.raises(ValueError, match="frames"):
        BY_ID["VExpressSampler"].run(models=handle, reference=reference, speech=speech, kps=short, **SAMPLER_ARGS)


# ------------------------------------------------------------------------------------------------
# Server survival: errors run the way ComfyUI's executor runs nodes, name what to change, and the
# next valid run in the same process succeeds.


def assert_survives(node_id, bad: dict, good: dict, *expected: str, interrupt=None):
    node = BY_ID[node_id]
    outcome = execute(node, bad, interrupt)
    if interrupt is not None:
        assert outcome.interrupted, (outcome.errors, outcome.exception_message)
    else:
        text = " ".join(outcome.errors) or outcome.exception_message
        assert not outcome.ok and text, f"{node_id} accepted bad input"
        for phrase in expected:
            assert phrase in text, f"{node_id}: {phrase!r} missing from the error {text!r}"
    again = execute(node, good)
    assert again.ok, (again.errors, again.exception_message)
    return again.outputs


def test_no_face_in_the_reference_says_what_to_use(comfy, handle, portrait):
    good = dict(models=handle, image=portrait, **REFERENCE_ARGS)
    for crop in ("face", "center"):
        assert_survives("VExpressLoadReference", {**good, "image": no_face_image(), "crop": crop}, good,
                        "no face found in", "use a clear, front-facing portrait")


def test_no_face_in_the_driving_frames_says_what_to_connect(comfy, portrait):
    good = dict(images=portrait.repeat(2, 1, 1, 1), fps=30.0, detector="retinaface", face_index=-1)
    assert_survives("VExpressKpsExtract", {**good, "images": no_face_image().repeat(2, 1, 1, 1)}, good,
                    "no face found in any of the 2 frames", "driving video that shows a face", "fix_face")
    assert_survives("VExpressKpsExtract", {**good, "images": portrait[:0]}, good, "no frames", "connect the images")


def test_silent_audio_says_to_give_speech(comfy, handle, speech_audio):
    silent = {"waveform": torch.zeros(1, 2, 16000), "sample_rate": 16000}
    good = dict(models=handle, audio=speech_audio, fps=30.0)
    assert_survives("VExpressAudioEncode", {**good, "audio": silent}, good, "silent", "give a clip with speech in it")
    too_short = {"waveform": speech_audio["waveform"][..., :100], "sample_rate": 16000}
    assert_survives("VExpressAudioEncode", {**good, "audio": too_short}, good, "shorter than one frame")


def test_bad_sizes_name_the_input_and_the_rule(comfy, handle, portrait, prepared):
    good = dict(models=handle, image=portrait, **REFERENCE_ARGS)
    assert_survives("VExpressLoadReference", {**good, "width": 100}, good,
                    "width must be a multiple of 8 between 64 and 1024, got 100")
    assert_survives("VExpressLoadReference", {**good, "height": 32}, good,
                    "height must be a multiple of 8 between 64 and 1024, got 32")
    assert_survives("VExpressLoadReference", {**good, "image": portrait[:0]}, good, "empty IMAGE batch", "connect an image")
    options = dict(context_frames=4, context_overlap=1, blend="mean")
    assert_survives("VExpressWindowOptions", {**options, "context_overlap": 4}, options,
                    "context_overlap must be in 0..context_frames-1 (3), got 4")
    assert_survives("VExpressWindowOptions", {**options, "context_frames": 40}, options, "context_frames must be in 1..32")


def interrupt_on_check(comfy, number: int) -> None:
    """Presses Cancel when the node checks for it the `number`-th time (from inside the networks)."""
    original = comfy.mm.throw_exception_if_processing_interrupted

    def check():
        if comfy.mm.checks + 1 == number:
            comfy.mm.interrupt = True
        original()

    comfy.mm.throw_exception_if_processing_interrupted = check


@pytest.mark.parametrize("node_id", ["VExpressAudioEncode", "VExpressLoadReference", "VExpressKpsExtract"])
def test_cancel_during_a_node_then_a_valid_run(comfy, handle, portrait, speech_audio, node_id):
    inputs = {
        "VExpressAudioEncode": dict(models=handle, audio=speech_audio, fps=30.0),
        "VExpressLoadReference": dict(models=handle, image=portrait, **REFERENCE_ARGS),
        "VExpressKpsExtract": dict(images=portrait.repeat(3, 1, 1, 1), fps=30.0, detector="retinaface", face_index=-1),
    }[node_id]
    assert execute(BY_ID[node_id], inputs).ok
    checks = comfy.mm.checks
    assert checks >= 3, f"{node_id} checks for Cancel only {checks} times"
    comfy.mm.checks = 0
    interrupt_on_check(comfy, checks // 2 + 1)  # in the middle of the work, not before it starts
    outcome = execute(BY_ID[node_id], inputs, InterruptProcessingException)
    assert outcome.interrupted and comfy.mm.checks == checks // 2 + 1
    again = execute(BY_ID[node_id], inputs)
    assert again.ok and comfy.mm.checks > checks // 2 + 1


# ------------------------------------------------------------------------------------------------
# One orchestration: the CLI and the node graph give the same frames for the same inputs and settings


def test_cli_and_node_graph_give_the_same_frames(comfy, model_root, portrait, speech_audio, tmp_path, monkeypatch):
    """Same photo (lossless PNG), same 16 kHz speech, same settings: identical uint8 frames. The CLI's
    mp4 writer is replaced by a capture of the frames it would encode (H.264 is lossy)."""
    import soundfile
    from PIL import Image

    from vexpress_core import cli, orchestration, pipeline

    photo, speech_file = tmp_path / "photo.png", tmp_path / "speech.wav"
    Image.fromarray(NODES.types.image_to_uint8(portrait[0])).save(photo)
    soundfile.write(speech_file, speech_audio["waveform"][0, 0].numpy(), 16000)
    captured = {}

    def capture_frames(models, final, speech, settings, out, cancel=None):
        captured["frames"] = pipeline.decoded_generation(models, final, speech, settings).frames
        return Path(out)

    monkeypatch.setattr(orchestration.pipeline, "written_video", capture_frames)
    settings = dict(steps=2, seed=7, cfg=3.5, reference_weight=0.95, audio_weight=3.0, scheduler="ddim", deflicker=True)
    assert cli.main(["generate", "--models", str(model_root / "V-Express"), "--reference", str(photo), "--audio",
                     str(speech_file), "--out", str(tmp_path / "cli.mp4"), "--width", "64", "--height", "64",
                     "--steps", "2", "--seed", "7", "--dtype", "fp32", "--device", "cpu", "--detector", "retinaface",
                     "--context-frames", "4", "--context-overlap", "1"]) == 0

    comfy.folder_paths.add_model_folder_path("v-express", str(model_root))
    (models,) = run_node("VExpressLoadModels", model="V-Express", dtype="fp32", keep_idle_on="gpu")
    image = torch.from_numpy(np.array(Image.open(photo))).float()[None] / 255.0
    reference, _ = run_node("VExpressLoadReference", models=models, image=image, **REFERENCE_ARGS)
    wave, rate = soundfile.read(speech_file, dtype="float32")
    speech, _, _ = run_node("VExpressAudioEncode", models=models, fps=30.0,
                            audio={"waveform": torch.from_numpy(wave)[None, None], "sample_rate": rate})
    (kps,) = run_node("VExpressKpsRetarget", reference=reference, speech=speech, mode="fix_face", resample="auto")
    (window,) = run_node("VExpressWindowOptions", context_frames=4, context_overlap=1, blend="mean")
    images, _, _ = run_node("VExpressSampler", models=models, reference=reference, speech=speech, kps=kps,
                            window_options=window, **settings)
    node_frames = NODES.types.image_to_uint8  # per frame: float 0..1 -> uint8, as the frames came out
    nodes_uint8 = np.stack([node_frames(frame) for frame in images])
    assert captured["frames"].shape == nodes_uint8.shape == (9, 64, 64, 3)
    assert np.array_equal(captured["frames"], nodes_uint8)
