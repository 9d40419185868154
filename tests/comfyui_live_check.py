"""Checks the pack against a real ComfyUI (not collected by pytest: CI has no ComfyUI).

    cd /path/to/ComfyUI && PYTHONPATH=$PWD python /path/to/pack/tests/comfyui_live_check.py \
        [--server http://127.0.0.1:8188] [--workflows]

1. Every node rendered with ComfyUI's own comfy_api io (comfy_node) serialises exactly as the pack's
   `object_info` (what tests/test_workflows.py validates the shipped workflows against), and
   comfy_entrypoint returns a ComfyExtension listing them.
2. Model management with ComfyUI's ModelPatcher / load_models_gpu / unload_all_models on the tiny
   models in ComfyUI/models/v-express/V-Express: loaded networks, eviction, reload, low-VRAM mode.
3. Server survival as ComfyUI's executor runs the node functions: cancel during Audio Encode, Load
   Reference and V-Kps Extract, then a valid run in the same process.
4. With --server: the live /object_info equals the pack's for every node; with --workflows the shipped
   API workflows are queued at 64x64, 2 steps (inputs vexpress_* in ComfyUI/input) and must succeed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

from comfy.cli_args import args  # noqa: E402  (ComfyUI's defaults: comfy.options leaves argv alone)

args.cpu = True
import comfy.model_management as mm  # noqa: E402
import folder_paths  # noqa: E402
from comfy_api.latest import ComfyExtension, io  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from comfyui_like import NODES, PACK, execute  # noqa: E402

BY_ID = NODES.nodes_by_id()
REPORT: list[str] = []


def check(condition: bool, what: str) -> None:
    REPORT.append(f"{'ok  ' if condition else 'FAIL'} {what}")
    print(REPORT[-1], flush=True)


def plain(value):
    return json.loads(json.dumps(value))


def schema_fidelity() -> None:
    for node_id, node in BY_ID.items():
        rendered = NODES.schema.comfy_node(node, io)
        info = {k: v for k, v in rendered.GET_NODE_INFO_V1().items() if k != "python_module"}
        check(plain(info) == plain(NODES.schema.object_info(node)), f"{node_id}: io.ComfyNode info == object_info")
    extension = asyncio.run(PACK.comfy_entrypoint())
    listed = asyncio.run(extension.get_node_list())
    check(isinstance(extension, ComfyExtension) and [n.GET_SCHEMA().node_id for n in listed] == list(BY_ID),
          "comfy_entrypoint returns a ComfyExtension listing every node")


def portrait():
    import numpy as np
    import torch
    from PIL import Image

    path = Path(folder_paths.get_input_directory()) / "vexpress_portrait.jpg"
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float()[None] / 255.0


def speech(seconds=0.5):
    import torch

    from vexpress_core.audio import load_audio

    wave = torch.from_numpy(load_audio(Path(folder_paths.get_input_directory()) / "vexpress_speech.mp3"))
    return {"waveform": wave[None, None, : int(16000 * seconds)], "sample_rate": 16000}


REFERENCE = dict(width=64, height=64, crop="center", face_margin=0.6, detector="retinaface", face_index=-1)


def model_management() -> None:
    for keep in ("gpu", "cpu"):
        (models,) = BY_ID["VExpressLoadModels"].run(model="V-Express", dtype="fp32", keep_idle_on=keep)
        check(all(type(p).__name__ == "ModelPatcher" for p in models.patchers.values()) and len(models.patchers) == 6,
              f"[{keep}] one comfy ModelPatcher per network")
        BY_ID["VExpressLoadReference"].run(models=models, image=portrait(), **REFERENCE)
        loaded = sorted(models.loaded_networks())
        expected = [] if keep == "cpu" else ["reference_net", "vae"]
        check(loaded == expected, f"[{keep}] after Load Reference ComfyUI holds {loaded}")
        held = [m for m in mm.loaded_models() if any(m is p for p in models.patchers.values())]
        check(len(held) == len(expected), f"[{keep}] model_management.loaded_models() lists them ({len(held)})")
        mm.unload_all_models()
        check(models.loaded_networks() == [], f"[{keep}] unload_all_models evicts every V-Express network")
        reference, _ = BY_ID["VExpressLoadReference"].run(models=models, image=portrait(), **REFERENCE)
        check(reference.width == 64, f"[{keep}] runs again after the eviction")
        mm.unload_all_models()


def survival() -> None:
    (models,) = BY_ID["VExpressLoadModels"].run(model="V-Express", dtype="fp32", keep_idle_on="gpu")
    driving = portrait().repeat(3, 1, 1, 1)
    cases = {
        "VExpressAudioEncode": dict(models=models, audio=speech(), fps=30.0),
        "VExpressLoadReference": dict(models=models, image=portrait(), **REFERENCE),
        "VExpressKpsExtract": dict(images=driving, fps=30.0, detector="retinaface", face_index=-1),
    }
    for node_id, inputs in cases.items():
        mm.interrupt_current_processing(True)
        outcome = execute(BY_ID[node_id], inputs, mm.InterruptProcessingException)
        check(outcome.interrupted, f"{node_id}: cancel stops it with ComfyUI's InterruptProcessingException")
        check(execute(BY_ID[node_id], inputs).ok, f"{node_id}: the next run in the same process succeeds")


def server(url: str, workflows: bool) -> None:
    live = json.load(urllib.request.urlopen(f"{url}/object_info"))
    for node_id, node in BY_ID.items():
        theirs = {k: v for k, v in live.get(node_id, {}).items() if k != "python_module"}
        check(theirs == plain(NODES.schema.object_info(node)), f"{node_id}: live /object_info == object_info")
    if not workflows:
        return
    for path in sorted((HERE.parent / "workflows" / "api").glob("*.json")):
        prompt = json.loads(path.read_text())
        for node in prompt.values():
            if node["class_type"] == "VExpressLoadReference":
                node["inputs"].update(width=64, height=64)
            if node["class_type"] == "VExpressSampler":
                node["inputs"]["steps"] = 2
        request = urllib.request.Request(f"{url}/prompt", json.dumps({"prompt": prompt}).encode(),
                                         {"Content-Type": "application/json"})
        prompt_id = json.load(urllib.request.urlopen(request))["prompt_id"]
        while True:
            history = json.load(urllib.request.urlopen(f"{url}/history/{prompt_id}"))
            if prompt_id in history:
                break
            time.sleep(2)
        entry = history[prompt_id]
        files = [item["filename"] for out in entry["outputs"].values() for items in out.values()
                 if isinstance(items, list) for item in items if isinstance(item, dict) and "filename" in item]
        check(entry["status"]["status_str"] == "success", f"{path.stem}: prompt {prompt_id} -> {files}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server")
    parser.add_argument("--workflows", action="store_true")
    options = parser.parse_args()
    schema_fidelity()
    model_management()
    survival()
    if options.server:
        server(options.server.rstrip("/"), options.workflows)
    failed = [line for line in REPORT if line.startswith("FAIL")]
    print(f"{len(REPORT) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
