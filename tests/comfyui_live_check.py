"""Checks the pack against a real ComfyUI (not collected by pytest: CI has no ComfyUI).

    cd /path/to/ComfyUI && PYTHONPATH=$PWD python /path/to/pack/tests/comfyui_live_check.py \
        [--server http://127.0.0.1:8188] [--workflows] [--long-lived --server-pid PID]

1. Every node rendered with ComfyUI's own comfy_api io (comfy_node) serialises exactly as the pack's
   `object_info` (what tests/test_workflows.py validates the shipped workflows against), and
   comfy_entrypoint returns a ComfyExtension listing them.
2. Model management with ComfyUI's ModelPatcher / load_models_gpu / unload_all_models on the tiny
   models in ComfyUI/models/v-express/V-Express: loaded networks, eviction, reload, low-VRAM mode.
3. Server survival as ComfyUI's executor runs the node functions: cancel during Audio Encode, Load
   Reference and V-Kps Extract, then a valid run in the same process.
4. With --server: the live /object_info equals the pack's for every node; with --workflows the shipped
   API workflows are queued at 64x64, 2 steps (inputs vexpress_* in ComfyUI/input) and must succeed.
5. With --long-lived (a server started as `python main.py --cpu`, its process id as --server-pid, on
   this machine): 10 prompts back to back alternating settings and two model folders (V-Express and
   V-Express-b, tiny models of another seed, made here when missing) all succeed and the server's RSS
   after prompt 10 is within 5% of that after prompt 2; "Unload models" (POST /free) lowers it; then
   3 bad prompts (a width that is not a multiple of 8, a photo without a face, a model folder whose
   safetensors header claims more bytes than the file holds), each followed by a good one: every bad
   one fails with its message, every good one succeeds. The RSS figures are printed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import struct
import sys
import time
import urllib.error
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


def queue(url: str, prompt: dict) -> tuple[str, dict]:
    """Queues a prompt and waits for it: ("success" | "error", its history entry); a prompt refused
    by validation gives ("refused", the server's answer)."""
    request = urllib.request.Request(f"{url}/prompt", json.dumps({"prompt": prompt}).encode(),
                                     {"Content-Type": "application/json"})
    try:
        prompt_id = json.load(urllib.request.urlopen(request))["prompt_id"]
    except urllib.error.HTTPError as error:
        return "refused", json.loads(error.read())
    while True:
        history = json.load(urllib.request.urlopen(f"{url}/history/{prompt_id}"))
        if prompt_id in history:
            entry = history[prompt_id]
            return entry["status"]["status_str"], entry
        time.sleep(1)


def server_rss(pid: int) -> int:
    """Resident memory of the server process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")) * 1024


def fix_face_prompt(model: str, size: int, steps: int, seed: int, image: str = "vexpress_portrait.jpg") -> dict:
    """The shipped fix_face workflow, small, with the given model folder and settings."""
    prompt = json.loads((HERE.parent / "workflows" / "api" / "vexpress_photo_audio_fix_face.json").read_text())
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "VExpressLoadModels":
            inputs.update(model=model, dtype="fp32")
        elif node["class_type"] == "VExpressLoadReference":
            inputs.update(width=size, height=size, detector="retinaface")
        elif node["class_type"] == "VExpressSampler":
            inputs.update(steps=steps, seed=seed, previews=False)
        elif node["class_type"] == "LoadImage":
            inputs.update(image=image)
    return prompt


def error_text(outcome: tuple[str, dict]) -> str:
    return json.dumps(outcome[1])


def prepare_long_lived_inputs() -> None:
    """A second tiny model folder, a folder whose header lies, and a photo without a face."""
    from PIL import Image

    from vexpress_core.tiny import make_tiny_models

    root = Path(folder_paths.get_folder_paths("v-express")[0])
    if not (root / "V-Express-b").exists():
        make_tiny_models(root / "V-Express-b", seed=1)
    lying = root / "V-Express-header-lies"
    if not lying.exists():
        shutil.copytree(root / "V-Express", lying)
        weights = lying / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"
        weights.unlink(missing_ok=True)
        weights.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    Image.new("RGB", (256, 256), (128, 128, 128)).save(Path(folder_paths.get_input_directory()) / "vexpress_no_face.png")


def long_lived(url: str, pid: int) -> None:
    prepare_long_lived_inputs()
    rss = []
    for index in range(10):
        model = ("V-Express", "V-Express-b")[index % 2]
        size, steps = ((64, 1), (80, 2))[index // 2 % 2]
        outcome = queue(url, fix_face_prompt(model, size, steps, seed=index))
        rss.append(server_rss(pid))
        check(outcome[0] == "success", f"long-lived prompt {index + 1} ({model}, {size}x{size}, {steps} steps): "
                                       f"{outcome[0]}, server RSS {rss[-1] / 2**20:.1f} MiB")
    growth = rss[9] / rss[1] - 1
    check(abs(growth) <= 0.05, f"server RSS after prompt 10 vs after prompt 2: {growth:+.1%} "
                               f"({rss[1] / 2**20:.1f} -> {rss[9] / 2**20:.1f} MiB; allowed 5%)")
    request = urllib.request.Request(f"{url}/free", json.dumps({"unload_models": True, "free_memory": True}).encode(),
                                     {"Content-Type": "application/json"})
    urllib.request.urlopen(request)
    time.sleep(5)  # setting the flags wakes the prompt worker, which unloads, resets its caches and collects
    unloaded = server_rss(pid)
    check(unloaded < rss[9], f"Unload models: server RSS {rss[9] / 2**20:.1f} -> {unloaded / 2**20:.1f} MiB")
    bad = {
        "width 100": (fix_face_prompt("V-Express", 64, 1, 0), "multiple of 8"),
        "photo without a face": (fix_face_prompt("V-Express", 64, 1, 0, image="vexpress_no_face.png"), "no face found"),
        "safetensors header claiming 1 TB": (fix_face_prompt("V-Express-header-lies", 64, 1, 0), "claims"),
    }
    for node in bad["width 100"][0].values():
        if node["class_type"] == "VExpressLoadReference":
            node["inputs"]["width"] = 100
    for name, (prompt, message) in bad.items():
        outcome = queue(url, prompt)
        check(outcome[0] != "success" and message in error_text(outcome),
              f"bad prompt ({name}) fails with its message: {outcome[0]}")
        good = queue(url, fix_face_prompt("V-Express", 64, 1, 1))
        check(good[0] == "success", f"the good prompt after the bad one ({name}) succeeds")
    print(f"server RSS (MiB) after each of the 10 prompts: {', '.join(f'{value / 2**20:.1f}' for value in rss)}; "
          f"after Unload models: {unloaded / 2**20:.1f}; after the bad prompts: {server_rss(pid) / 2**20:.1f}")


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
    parser.add_argument("--long-lived", action="store_true", help="10 prompts, Unload models, 3 bad prompts (needs --server-pid)")
    parser.add_argument("--server-pid", type=int, help="process id of the ComfyUI server (for its RSS)")
    options = parser.parse_args()
    if options.long_lived and not (options.server and options.server_pid):
        parser.error("--long-lived needs --server and --server-pid")
    schema_fidelity()
    model_management()
    survival()
    if options.server:
        server(options.server.rstrip("/"), options.workflows)
    if options.long_lived:
        long_lived(options.server.rstrip("/"), options.server_pid)
    failed = [line for line in REPORT if line.startswith("FAIL")]
    print(f"{len(REPORT) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
