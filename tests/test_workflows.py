"""The shipped workflows (workflows/*.json UI format, workflows/api/*.json API format): they validate
as shipped against the node definitions, the UI and API twins agree, and the V-Express part of
each API workflow runs through the node functions on a tiny model (only size, steps and the model
folder are overridden). ComfyUI's core nodes used by the workflows are described below as ComfyUI
declares them (comfy_extras/nodes_video.py, nodes_audio.py, nodes.py) and stood in for when run."""
from __future__ import annotations

import copy
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from comfyui_like import NODES, execute as execute_node
from vexpress_core.tiny import make_tiny_models
from vexpress_core.video import probe_video, to_uint8, write_mp4

runtime = NODES.runtime
BY_ID = NODES.nodes_by_id()

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
MODEL_FOLDER = "V-Express"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
LONG_WORKFLOW = "vexpress_long_audio_low_memory"

# The files the workflows read from ComfyUI/input, and the shared samples that stand for them.
INPUT_FILES = {
    "vexpress_portrait.jpg": ("image", "short_case_tys/ref.jpg"),
    "vexpress_speech.mp3": ("audio", "short_case_tys/aud.mp3"),
    "vexpress_driving.mp4": ("video", "short_case_tys/gt.mp4"),
    "vexpress_speech_30s.mp3": ("audio", "short_case_AOC/long_aud.mp3"),
}


def files_of(kind):
    return [name for name, (content, _) in INPUT_FILES.items() if content == kind or (kind == "audio" and content == "video")]


# ComfyUI's own declarations of the core nodes the workflows use (input order as declared).
CORE_NODES = {
    "LoadImage": {
        "input": {"required": {"image": [files_of("image"), {"image_upload": True}]}},
        "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"],
    },
    "LoadAudio": {
        "input": {"required": {"audio": [files_of("audio"), {"audio_upload": True}]}},
        "output": ["AUDIO"], "output_name": ["AUDIO"],
    },
    "LoadVideo": {
        "input": {"required": {"file": ["COMBO", {"options": files_of("video"), "video_upload": True}]}},
        "output": ["VIDEO"], "output_name": ["VIDEO"],
    },
    "GetVideoComponents": {
        "input": {"required": {"video": ["VIDEO", {}]}},
        "output": ["IMAGE", "AUDIO", "FLOAT"], "output_name": ["images", "audio", "fps"],
    },
    "CreateVideo": {
        "input": {"required": {"images": ["IMAGE", {}], "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}]},
                  "optional": {"audio": ["AUDIO", {}]}},
        "output": ["VIDEO"], "output_name": ["VIDEO"],
    },
    "PreviewImage": {
        "input": {"required": {"images": ["IMAGE", {}]}},
        "output": [], "output_name": [], "output_node": True,
    },
    "SaveVideo": {
        "input": {"required": {"video": ["VIDEO", {}], "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                               "format": ["COMBO", {"options": ["auto", "mp4"], "default": "auto"}],
                               "codec": ["COMBO", {"options": ["auto", "h264"], "default": "auto"}]}},
        "output": [], "output_name": [], "output_node": True,
    },
}
UI_ONLY_NODES = {"Note", "MarkdownNote"}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models-v-express")
    make_tiny_models(root / MODEL_FOLDER)
    return root


@pytest.fixture(scope="module")
def definitions(model_root):
    """Every node's definition in ComfyUI's /object_info shape, with the model folder present."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "folder_paths", None)
        patch.setenv(runtime.MODEL_ROOT_ENV, str(model_root))
        defs = {node_id: NODES.schema.object_info(node) for node_id, node in BY_ID.items()}
    defs.update(CORE_NODES)
    return defs


def declared_inputs(definition):
    """[(name, kind, options, optional)] in declaration order."""
    spec = definition["input"]
    return [(name, value[0], value[1] if len(value) > 1 else {}, group == "optional")
            for group in ("required", "optional") for name, value in spec.get(group, {}).items()]


def is_widget(kind):
    return isinstance(kind, list) or kind in WIDGET_TYPES


def types_match(received: str, expected: str) -> bool:
    """ComfyUI's validate_node_input (non-strict): equal, or overlapping comma-separated sets."""
    if received == expected or "*" in (received, expected):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def widget_problem(kind, options, value) -> str | None:
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options["options"]
        return None if value in choices else f"{value!r} not in {choices}"
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{value!r} is not an INT"
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{value!r} is not a FLOAT"
    elif kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a BOOLEAN"
    elif kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a STRING"
    if "min" in options and value < options["min"]:
        return f"{value} < min {options['min']}"
    if "max" in options and value > options["max"]:
        return f"{value} > max {options['max']}"
    return None


def api_problems(workflow: dict, defs: dict) -> list[str]:
    """What ComfyUI's /prompt validation would reject, plus the pack's own rules."""
    problems = []
    for node_id, node in workflow.items():
        kind = node.get("class_type")
        if kind not in defs:
            problems.append(f"{node_id}: unknown node {kind}")
            continue
        declared = {name: (k, o, opt) for name, k, o, opt in declared_inputs(defs[kind])}
        for name, (k, _, optional) in declared.items():
            if not optional and name not in node["inputs"]:
                problems.append(f"{node_id} {kind}: required input {name} missing")
        for name, value in node["inputs"].items():
            if name not in declared:
                problems.append(f"{node_id} {kind}: unknown input {name}")
                continue
            k, options, _ = declared[name]
            if isinstance(value, list):
                source, slot = value
                if source not in workflow:
                    problems.append(f"{node_id}.{name}: links to missing node {source}")
                    continue
                outputs = defs[workflow[source]["class_type"]]["output"]
                if not 0 <= slot < len(outputs):
                    problems.append(f"{node_id}.{name}: output slot {slot} of {source} does not exist")
                elif not types_match(outputs[slot], "COMBO" if isinstance(k, list) else k):
                    problems.append(f"{node_id}.{name}: {outputs[slot]} linked into {k}")
            elif not is_widget(k):
                problems.append(f"{node_id}.{name}: {k} input needs a link, got {value!r}")
            else:
                problem = widget_problem(k, options, value)
                if problem:
                    problems.append(f"{node_id} {kind}.{name}: {problem}")
        if kind == "VExpressLoadModels" and node["inputs"].get("model") != MODEL_FOLDER:
            problems.append(f"{node_id}: model folder must be {MODEL_FOLDER!r}")
    if not any(defs[n["class_type"]].get("output_node") for n in workflow.values() if n["class_type"] in defs):
        problems.append("no output node")
    return problems


def extra_widget_values(options) -> list:
    """Values the frontend stores after a widget: the upload buttons and seed's control_after_generate."""
    if options.get("image_upload") or options.get("video_upload"):
        return ["image"]
    if options.get("audio_upload"):
        return [None, None]
    if options.get("control_after_generate"):
        return ["fixed"]
    return []


def ui_to_api(ui: dict, defs: dict) -> tuple[dict, list[str]]:
    """The API prompt the frontend would queue for a UI workflow, and the UI-level problems found."""
    problems, prompt = [], {}
    by_id = {node["id"]: node for node in ui["nodes"]}
    if len(by_id) != len(ui["nodes"]):
        problems.append("duplicate node ids")
    links = {link[0]: link for link in ui["links"]}
    for link_id, origin, origin_slot, target, target_slot, kind in ui["links"]:
        if origin not in by_id or target not in by_id:
            problems.append(f"link {link_id}: missing end")
            continue
        output = by_id[origin]["outputs"][origin_slot]
        target_input = by_id[target]["inputs"][target_slot]
        if link_id not in (output.get("links") or []) or target_input.get("link") != link_id:
            problems.append(f"link {link_id}: not recorded on both ends")
        if output["type"] != kind or not types_match(kind, target_input["type"]):
            problems.append(f"link {link_id}: {kind} from {output['type']} into {target_input['type']}")
    for node in ui["nodes"]:
        if node["type"] in UI_ONLY_NODES:
            continue
        kind = node["type"]
        if kind not in defs:
            problems.append(f"{node['id']}: missing node type {kind}")
            continue
        definition = defs[kind]
        declared = declared_inputs(definition)
        for slot, (output, expected, name) in enumerate(zip(node["outputs"], definition["output"], definition["output_name"])):
            if output["type"] != expected or output["name"] != name:
                problems.append(f"{node['id']} {kind}: output {slot} is {output['name']}:{output['type']}, declared {name}:{expected}")
        inputs = {entry["name"]: entry for entry in node.get("inputs", [])}
        values = list(node.get("widgets_values", []))
        api_inputs = {}
        for name, k, options, optional in declared:
            entry = inputs.pop(name, None)
            linked = entry is not None and entry.get("link") is not None
            if linked:
                origin, origin_slot = links[entry["link"]][1:3]
                api_inputs[name] = [str(origin), origin_slot]
                expected_type = "COMBO" if isinstance(k, list) else k
                if entry["type"] != expected_type:
                    problems.append(f"{node['id']} {kind}.{name}: socket type {entry['type']} != {expected_type}")
            elif not is_widget(k) and not optional:
                problems.append(f"{node['id']} {kind}: required input {name} is not connected")
            if is_widget(k):
                if not values:
                    problems.append(f"{node['id']} {kind}: no widget value for {name}")
                    continue
                value = values.pop(0)
                if not linked:
                    problem = widget_problem(k, options, value)
                    if problem:
                        problems.append(f"{node['id']} {kind}.{name}: {problem}")
                    api_inputs[name] = value
                extras = extra_widget_values(options)
                stored, values = values[:len(extras)], values[len(extras):]
                if options.get("control_after_generate"):
                    if stored[0] not in ("fixed", "increment", "decrement", "randomize"):
                        problems.append(f"{node['id']} {kind}.{name}: bad control_after_generate {stored}")
                elif stored != extras:
                    problems.append(f"{node['id']} {kind}.{name}: upload widget values {stored} != {extras}")
        if inputs:
            problems.append(f"{node['id']} {kind}: undeclared inputs {sorted(inputs)}")
        if values:
            problems.append(f"{node['id']} {kind}: {len(values)} widget values left over: {values}")
        prompt[str(node["id"])] = {"class_type": kind, "inputs": api_inputs}
    return prompt, problems


def load_workflow(name: str, api: bool) -> dict:
    return json.loads((WORKFLOWS / ("api" if api else "") / f"{name}.json").read_text())


def test_six_workflows_with_api_twins():
    assert len(NAMES) == 6
    assert sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_validates(name, definitions):
    workflow = load_workflow(name, api=True)
    assert api_problems(workflow, definitions) == []
    kinds = [node["class_type"] for node in workflow.values()]
    assert kinds.count("CreateVideo") == 1 and kinds.count("SaveVideo") == 1
    save = next(n for n in workflow.values() if n["class_type"] == "SaveVideo")
    create = workflow[save["inputs"]["video"][0]]
    assert create["class_type"] == "CreateVideo"
    sampler_id = create["inputs"]["images"][0]
    if workflow[sampler_id]["class_type"] == "VExpressPasteBack":  # full-frame workflows paste the crops back
        sampler_id = workflow[sampler_id]["inputs"]["images"][0]
    assert workflow[sampler_id]["class_type"] == "VExpressSampler"
    assert create["inputs"]["audio"] == [sampler_id, 1] and create["inputs"]["fps"] == [sampler_id, 2]


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_validates_and_matches_its_api_twin(name, definitions):
    ui = load_workflow(name, api=False)
    assert ui["version"] == 0.4 and ui["last_node_id"] >= max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] >= max(link[0] for link in ui["links"])
    prompt, problems = ui_to_api(ui, definitions)
    assert problems == []
    api = load_workflow(name, api=True)
    assert prompt == {node_id: {"class_type": n["class_type"], "inputs": n["inputs"]} for node_id, n in api.items()}


def test_validator_catches_mistakes(definitions):
    workflow = load_workflow("vexpress_photo_audio_fix_face", api=True)
    broken = copy.deepcopy(workflow)
    sampler = next(n for n in broken.values() if n["class_type"] == "VExpressSampler")
    sampler["inputs"]["steps"] = 0
    sampler["inputs"]["scheduler"] = "plms"
    sampler["inputs"]["kps"] = sampler["inputs"]["speech"]
    next(n for n in broken.values() if n["class_type"] == "VExpressLoadModels")["inputs"]["model"] = "other"
    problems = "\n".join(api_problems(broken, definitions))
    for expected in ("steps: 0 < min 1", "'plms' not in", "VEXPRESS_AUDIO linked into VEXPRESS_KPS", "model folder must be"):
        assert expected in problems
    ui = load_workflow("vexpress_photo_audio_fix_face", api=False)
    next(n for n in ui["nodes"] if n["type"] == "VExpressSampler")["widgets_values"].pop()
    assert any("no widget value" in p for p in ui_to_api(ui, definitions)[1])


# ------------------------------------------------------------------------------------------------
# Running the API workflows: V-Express nodes for real, ComfyUI's core nodes stood in for.


def decode_audio(path) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")
        pieces = [p.to_ndarray() for frame in container.decode(stream) for p in resampler.resample(frame)]
        rate = stream.rate
    return {"waveform": torch.from_numpy(np.concatenate(pieces, axis=1))[None], "sample_rate": int(rate)}


class CoreStandIns:
    """ComfyUI's LoadImage, LoadAudio, LoadVideo, GetVideoComponents, CreateVideo, PreviewImage and SaveVideo,
    returning the same types (IMAGE float [B,H,W,3], AUDIO dict, VIDEO, FLOAT fps, an mp4)."""

    def __init__(self, inputs: dict[str, Path], output_dir: Path):
        self.inputs, self.output_dir, self.saved, self.previewed = inputs, output_dir, [], []

    def LoadImage(self, image):
        from PIL import Image

        pixels = torch.from_numpy(np.array(Image.open(self.inputs[image]).convert("RGB"))).float()[None] / 255.0
        return pixels, torch.zeros(pixels.shape[:3])

    def LoadAudio(self, audio):
        return (decode_audio(self.inputs[audio]),)

    def LoadVideo(self, file):
        return (self.inputs[file],)

    def GetVideoComponents(self, video):
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            fps = Fraction(stream.average_rate)
        images = torch.from_numpy(np.stack(frames)).float() / 255.0
        return images, decode_audio(video), float(fps)

    def CreateVideo(self, images, fps, audio=None):
        return ({"images": images, "fps": fps, "audio": audio},)

    def PreviewImage(self, images):
        self.previewed.append(images)
        return ()

    def SaveVideo(self, video, filename_prefix, format, codec):
        audio = video["audio"]
        sound = None if audio is None else (audio["waveform"][0].mean(0).numpy(), audio["sample_rate"])
        path = self.output_dir / f"{filename_prefix.replace('/', '_')}.mp4"
        write_mp4([to_uint8(video["images"].numpy())], path, video["fps"], sound)
        self.saved.append(path)
        return ()


def execute(workflow: dict, core: CoreStandIns) -> dict:
    """Runs a prompt in dependency order; returns every node's outputs."""
    results, pending = {}, dict(workflow)
    while pending:
        ready = [i for i, n in pending.items() if all(v[0] in results for v in n["inputs"].values() if isinstance(v, list))]
        assert ready, "cycle in the workflow"
        for node_id in ready:
            node = pending.pop(node_id)
            kwargs = {k: (results[v[0]][v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
            if node["class_type"] in BY_ID:
                outcome = execute_node(BY_ID[node["class_type"]], kwargs)
                assert outcome.ok, f"{node_id} {node['class_type']}: {outcome.errors or outcome.exception_message}"
                results[node_id] = outcome.outputs
            else:
                results[node_id] = getattr(core, node["class_type"])(**kwargs)
    return results


def small(workflow: dict) -> dict:
    """The only overrides: 64x64 output and 2 steps (the model folder is pointed at by the fixture)."""
    workflow = copy.deepcopy(workflow)
    for node in workflow.values():
        if node["class_type"] in ("VExpressLoadReference", "VExpressFaceCrop"):
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "VExpressSampler":
            node["inputs"]["steps"] = 2
    return workflow


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_runs_on_tiny_model(name, model_root, samples_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "folder_paths", None)
    monkeypatch.setattr(runtime, "model_management", None)
    monkeypatch.setenv(runtime.MODEL_ROOT_ENV, str(model_root))
    workflow = small(load_workflow(name, api=True))
    core = CoreStandIns({name: samples_dir / sample for name, (_, sample) in INPUT_FILES.items()}, tmp_path)
    sampler_id = next(i for i, n in workflow.items() if n["class_type"] == "VExpressSampler")
    encode_id = next(i for i, n in workflow.items() if n["class_type"] == "VExpressAudioEncode")
    results = execute(workflow, core)
    speech, frame_count, _ = results[encode_id]
    fps = workflow[encode_id]["inputs"]["fps"]
    fps = results[fps[0]][fps[1]] if isinstance(fps, list) else fps  # dubbing: the video's fps
    if name == LONG_WORKFLOW:
        assert frame_count / fps > 30
    sampler_inputs = {k: (results[v[0]][v[1]] if isinstance(v, list) else v) for k, v in workflow[sampler_id]["inputs"].items()}
    assert len(sampler_inputs["kps"]) == frame_count and sampler_inputs["kps"].frame_size == (64, 64)
    options = {"window": sampler_inputs.pop("window_options", None), "memory": sampler_inputs.pop("memory_options", None)}
    settings = NODES.sampling.generation_settings(
        **{k: v for k, v in sampler_inputs.items() if k not in ("models", "kps", "previews")}, **options)
    assert (settings.width, settings.height, settings.steps, settings.fps) == (64, 64, 2, fps)
    images, audio, out_fps = results[sampler_id]
    assert images.shape == (frame_count, 64, 64, 3) and out_fps == fps
    assert abs(audio["waveform"].shape[-1] / audio["sample_rate"] - frame_count / fps) < 1e-3
    (saved,) = core.saved
    info = probe_video(saved)
    paste_back = [i for i, n in workflow.items() if n["class_type"] == "VExpressPasteBack"]
    size = (64, 64) if not paste_back else tuple(results[paste_back[0]][0].shape[2:0:-1])  # full frame: the original's
    assert size == ((64, 64) if not paste_back else (512, 512))
    assert (info["frames"], info["width"], info["height"], info["audio_streams"]) == (frame_count, *size, 1)
