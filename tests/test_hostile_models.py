"""Hostile or broken model folders (issue 20, part 3): each gets one CheckpointError naming the
file, before any large allocation; the ComfyUI loader reports it and keeps serving.

Every case is a copy of the tiny model folder (hard links, so the original is never written) with
one thing changed. The memory cases run in a child process whose address space is capped, so a
loader that tried to allocate what a config asks for fails there instead of on the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyui_like import NODES, execute
from vexpress_core.checkpoint import CheckpointError, checked_model_folder, load_models
from vexpress_core.tiny import random_vae, random_wav2vec2

REPO = Path(__file__).resolve().parents[1]
BILLION = 10**9
UNET_CONFIG = Path("stable-diffusion-v1-5/unet/config.json")
VAE_CONFIG = Path("sd-vae-ft-mse/config.json")
VAE_WEIGHTS = Path("sd-vae-ft-mse/diffusion_pytorch_model.safetensors")
WAV2VEC2_CONFIG = Path("wav2vec2-base-960h/config.json")
WAV2VEC2_WEIGHTS = Path("wav2vec2-base-960h/model.safetensors")
REFERENCE_NET = Path("v-express/reference_net.bin")


def linked_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, copy_function=os.link)
    return target


def rewrite(path: Path, data: bytes) -> None:
    """New content for one file of a linked copy (unlinked first: the original keeps its bytes)."""
    path.unlink()
    path.write_bytes(data)


def edit_config(folder: Path, relative: Path, **changes) -> Path:
    config = json.loads((folder / relative).read_text())
    rewrite(folder / relative, json.dumps({**config, **changes}).encode())
    return folder


def load_error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_models(folder)
    return str(caught.value)


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


@pytest.fixture
def copy(tiny_model_dir, tmp_path) -> Path:
    return linked_copy(tiny_model_dir, tmp_path / "models")


# --------------------------------------------------------------------------- configs asking absurd sizes


def billion_channel_unet(folder: Path) -> Path:
    return edit_config(folder, UNET_CONFIG, block_out_channels=[BILLION] * 4)


def billion_channel_vae(folder: Path) -> Path:
    return edit_config(folder, VAE_CONFIG, block_out_channels=[BILLION] * 4)


def billion_wide_wav2vec2(folder: Path) -> Path:
    return edit_config(folder, WAV2VEC2_CONFIG, hidden_size=BILLION, intermediate_size=BILLION)


def million_layer_unet(folder: Path) -> Path:
    return edit_config(folder, UNET_CONFIG, layers_per_block=10**6)


def terabyte_tensor_header(folder: Path) -> Path:
    """A safetensors VAE whose header declares a 1 TB tensor in a file of a few hundred bytes."""
    header = {"encoder.conv_in.weight": {"dtype": "F32", "shape": [2**18, 2**20], "data_offsets": [0, 2**40]}}
    rewrite(folder / VAE_WEIGHTS, safetensors_bytes(header, bytes(64)))
    return folder


MEMORY_CASES = {  # case -> (folder builder, the file the message must name)
    "billion_channel_unet": (billion_channel_unet, UNET_CONFIG),
    "billion_channel_vae": (billion_channel_vae, VAE_CONFIG),
    "billion_wide_wav2vec2": (billion_wide_wav2vec2, WAV2VEC2_CONFIG),
    "million_layer_unet": (million_layer_unet, UNET_CONFIG),
    "terabyte_tensor_header": (terabyte_tensor_header, VAE_WEIGHTS),
}

# Loads a good folder first (imports and caches settle), caps the address space at 2 GiB above
# that, then loads each hostile folder and reports its error and how far the peak RSS rose.
MEMORY_PROBE = """
import json, resource, sys
from vexpress_core.checkpoint import load_models
good, cases = sys.argv[1], json.loads(sys.argv[2])
load_models(good)
size = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 2**31, size + 2**31))
report = {}
for name, folder in cases.items():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load_models(folder)
        outcome = ("loaded", "")
    except Exception as error:
        outcome = (type(error).__name__, str(error))
    report[name] = [*outcome, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024]
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def memory_report(tiny_model_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    cases = {name: str(build(linked_copy(tiny_model_dir, root / name)))
             for name, (build, _) in MEMORY_CASES.items()}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tiny_model_dir), json.dumps(cases)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"cases": json.loads(result.stdout.splitlines()[-1]), "folders": cases}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and caps RLIMIT_AS")
@pytest.mark.parametrize("case", MEMORY_CASES)
def test_a_config_or_header_asking_absurd_sizes_is_refused_before_allocating(case, memory_report, tiny_model_dir):
    kind, message, peak_rise = memory_report["cases"][case]
    folder = Path(memory_report["folders"][case])
    assert kind == "CheckpointError", message
    assert str(folder / MEMORY_CASES[case][1]) in message
    assert peak_rise <= 2 * folder_bytes(tiny_model_dir), f"peak RSS rose by {peak_rise:,} bytes"


# --------------------------------------------------------------------------- safetensors headers


def test_a_header_claiming_more_bytes_than_the_file_holds(copy):
    rewrite(copy / VAE_WEIGHTS, struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError) as caught:
        checked_model_folder(copy)
    assert str(copy / VAE_WEIGHTS) in str(caught.value) and "claims" in str(caught.value)


def test_a_tensor_past_the_end_of_the_data(copy):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [1000], "data_offsets": [16, 4016]}}
    rewrite(copy / VAE_WEIGHTS, safetensors_bytes(header, bytes(32)))
    message = load_error(copy)
    assert str(copy / VAE_WEIGHTS) in message and "tensor b" in message and "interrupted download" in message


def test_overlapping_tensors(copy):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    rewrite(copy / WAV2VEC2_WEIGHTS, safetensors_bytes(header, bytes(24)))
    message = load_error(copy)
    assert str(copy / WAV2VEC2_WEIGHTS) in message and "tensors a and b overlap" in message


def test_byte_counts_that_do_not_match_the_shape(copy):
    header = {"a": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 16]}}
    rewrite(copy / VAE_WEIGHTS, safetensors_bytes(header, bytes(16)))
    message = load_error(copy)
    assert str(copy / VAE_WEIGHTS) in message and "needs 4,000,000 bytes" in message


# --------------------------------------------------------------------------- links


def test_a_file_linked_out_of_the_folder(copy, tmp_path):
    outside = tmp_path / "elsewhere.bin"
    shutil.copy(copy / REFERENCE_NET, outside)
    (copy / REFERENCE_NET).unlink()
    (copy / REFERENCE_NET).symlink_to(outside)
    message = load_error(copy)
    assert f"{copy / REFERENCE_NET} is a link to {outside}, outside {copy}" in message


def test_a_folder_linked_out_of_the_folder(copy, tmp_path):
    outside = shutil.copytree(copy / "wav2vec2-base-960h", tmp_path / "shared-wav2vec2")
    shutil.rmtree(copy / "wav2vec2-base-960h")
    (copy / "wav2vec2-base-960h").symlink_to(outside, target_is_directory=True)
    message = load_error(copy)
    assert str(copy / WAV2VEC2_CONFIG) in message and str(copy / WAV2VEC2_WEIGHTS) in message and "outside" in message


def test_links_inside_the_folder_and_a_linked_model_folder_load(copy, tmp_path):
    (copy / "store").mkdir()
    os.replace(copy / REFERENCE_NET, copy / "store" / "reference_net.bin")
    (copy / REFERENCE_NET).symlink_to(Path("..") / "store" / "reference_net.bin")
    linked = tmp_path / "linked-models"
    linked.symlink_to(copy, target_is_directory=True)
    assert load_models(linked).paths.weights["reference_net"] == linked / REFERENCE_NET


# --------------------------------------------------------------------------- truncated downloads


@pytest.mark.parametrize("relative", [VAE_WEIGHTS, WAV2VEC2_WEIGHTS, REFERENCE_NET, WAV2VEC2_CONFIG],
                         ids=["vae", "wav2vec2", "reference_net", "wav2vec2_config"])
def test_a_truncated_download(copy, relative):
    data = (copy / relative).read_bytes()
    rewrite(copy / relative, data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError) as caught:
        checked_model_folder(copy)
    assert str(copy / relative) in str(caught.value)
    assert "interrupted download" in str(caught.value)


# --------------------------------------------------------------------------- right names, another model's shapes


def test_v_express_weights_under_another_models_config(copy):
    message = load_error(edit_config(copy, UNET_CONFIG, block_out_channels=[64, 64, 128, 128]))
    assert str(copy / REFERENCE_NET) in message and f"built from {copy / UNET_CONFIG}" in message
    assert "wrong shape" in message and "conv_in.weight (32, 4, 3, 3) != (64, 4, 3, 3)" in message


def replace_weights(folder: Path, relative: Path, state: dict) -> None:
    (folder / relative).unlink()
    save_file({key: value.contiguous() for key, value in state.items()}, str(folder / relative))


def test_another_vaes_weights(copy):
    other = random_vae()
    other.decoder.conv_out = torch.nn.Conv2d(32, 6, 3, padding=1)  # same names, one shape differs
    replace_weights(copy, VAE_WEIGHTS, other.state_dict())
    message = load_error(copy)
    assert str(copy / VAE_WEIGHTS) in message and "decoder.conv_out" in message


def test_another_wav2vec2s_weights(copy):
    other = random_wav2vec2()
    other.encoder.layers[0].feed_forward.intermediate_dense = torch.nn.Linear(768, 512)
    other.encoder.layers[0].feed_forward.output_dense = torch.nn.Linear(512, 768)
    replace_weights(copy, WAV2VEC2_WEIGHTS, other.state_dict())
    message = load_error(copy)
    assert str(copy / "wav2vec2-base-960h") in message and "intermediate_dense" in message


def test_wav2vec2_weights_missing_some_tensors(copy):
    """transformers alone would fill them with random values and only warn."""
    state = {key: value for key, value in random_wav2vec2().state_dict().items() if "layer_norm" not in key}
    replace_weights(copy, WAV2VEC2_WEIGHTS, {**state, "lm_head.weight": torch.zeros(32, 768)})  # a CTC head, unused
    message = load_error(copy)
    assert str(copy / "wav2vec2-base-960h") in message and "encoder.layer_norm.weight" in message


def test_weights_that_cannot_fill_the_network(copy):
    state = {key: value for key, value in random_wav2vec2().state_dict().items() if ".feed_forward." not in key}
    replace_weights(copy, WAV2VEC2_WEIGHTS, state)
    message = load_error(copy)
    assert f"{copy / WAV2VEC2_CONFIG} describes a network of" in message
    assert f"{copy / WAV2VEC2_WEIGHTS} holds" in message and "not the same model" in message


# --------------------------------------------------------------------------- in ComfyUI


def test_the_loader_node_reports_hostile_folders_and_keeps_serving(tiny_model_dir, tmp_path, monkeypatch):
    root = tmp_path / "v-express-models"
    root.mkdir()
    linked_copy(tiny_model_dir, root / "V-Express")
    terabyte_tensor_header(linked_copy(tiny_model_dir, root / "header-lies"))
    billion_channel_unet(linked_copy(tiny_model_dir, root / "absurd-config"))
    monkeypatch.setenv(NODES.runtime.MODEL_ROOT_ENV, str(root))
    monkeypatch.setattr(NODES.runtime, "folder_paths", None)
    loader = NODES.nodes_by_id()["VExpressLoadModels"]

    def run(model: str):
        return execute(loader, {"model": model, "dtype": "fp32", "keep_idle_on": "gpu"})

    refused = run("header-lies")  # noticed by input validation, before the prompt runs
    assert not refused.ok and str(root / "header-lies" / VAE_WEIGHTS) in refused.errors[0]
    failed = run("absurd-config")  # noticed while loading, before anything of that size exists
    assert failed.exception_type == "vexpress_core.model_files.CheckpointError"
    assert str(root / "absurd-config" / UNET_CONFIG) in failed.exception_message
    assert run("V-Express").ok
