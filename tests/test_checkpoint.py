"""Strict loading of the published model files (issue 2).

* the SD1.5-size networks (built on the meta device) have exactly the keys and shapes of
  `reference/checkpoint_manifest.json`, grouped as the five released files, with SPEC's element counts;
* good directories load: a fresh `make_tiny_models` directory, the reference fixture in fp32/fp16/bf16,
  motion keys inside `denoising_unet.bin`, `.safetensors`, a `weights_dir` override, `convert_weights`
  output, position codes absent from the file;
* bad files fail with a `CheckpointError` that names the file and the problem, and nothing in
  them is executed.

The tiny directory is made once per module; each test builds a variant of it under its own tmp
path from hard links, writing only the files it changes.
"""
from __future__ import annotations

import builtins
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vexpress_core.checkpoint import (
    MOTION_KEY,
    POSITION_CODE_SUFFIX,
    WEIGHT_NAMES,
    CheckpointError,
    audio_projection_config,
    build_networks,
    guider_config,
    load_models,
    motion_max_len,
    read_state_dict,
)
from vexpress_core.models import sinusoidal_position_code
from vexpress_core.saving import convert_weights, split_weights
from vexpress_core.tiny import make_tiny_models

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
MANIFEST = REFERENCE / "checkpoint_manifest.json"
SD15_CONFIG = REFERENCE / "sd15_unet_config.json"

GUIDER_CFG = {"conditioning_embedding_channels": 320, "conditioning_channels": 3, "block_out_channels": (16, 32, 96, 256)}
PROJECTION_CFG = {"dim": 768, "depth": 4, "heads": 12, "num_queries": 5, "max_seq_len": 10}

# SPEC "Released files users download".
SPEC_ELEMENTS = {
    "reference_net": 859_520_324,
    "denoising_unet": 909_120_004,
    "motion_module": 454_417_600,
    "v_kps_guider": 1_086_480,
    "audio_projection": 29_524_224,
}
SPEC_POSITION_CODES = 42
SPEC_POSITION_CODE_VALUES = 1_208_320

NETWORK_NAMES = ("reference_net", "denoising_unet", "v_kps_guider", "audio_projection")


# --------------------------------------------------------------------------- helpers


def networks_of(models) -> dict[str, torch.nn.Module]:
    return {name: getattr(models, name) for name in NETWORK_NAMES}


def position_codes(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer for name, buffer in module.named_buffers() if name.endswith(POSITION_CODE_SUFFIX)}


def assert_position_codes_fixed(module: torch.nn.Module) -> None:
    codes = position_codes(module)
    assert len(codes) == SPEC_POSITION_CODES
    for name, code in codes.items():
        assert code.dtype == torch.float32, name
        assert code.device.type == "cpu", name
        torch.testing.assert_close(code, sinusoidal_position_code(code.shape[1], code.shape[2]), rtol=0, atol=1e-6, msg=name)


def assert_same_weights(actual: torch.nn.Module, expected: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
    actual_state, expected_state = actual.state_dict(), expected.state_dict()
    assert actual_state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        if dtype is not None and value.is_floating_point() and not key.endswith(POSITION_CODE_SUFFIX):
            value = value.to(dtype)
        assert torch.equal(actual_state[key], value), key


def read(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def variant(source: Path, target: Path, *, replace: dict | None = None, drop: tuple[str, ...] = (),
            drop_dirs: tuple[str, ...] = ()) -> Path:
    """A model directory at `target` made of hard links to `source`'s files (symbolic links out of a
    model folder are refused).

    `replace` maps a file name inside v-express/ to a state dict (written with torch.save), to bytes
    (written as they are) or to None (file left out); `drop` leaves out v-express files, `drop_dirs`
    leaves out top-level folders."""
    replace = dict(replace or {})
    for name in drop:
        replace[name] = None
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == "v-express" or entry.name in drop_dirs:
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, copy_function=os.link)
        else:
            os.link(entry, target / entry.name)
    weights = target / "v-express"
    weights.mkdir()
    for entry in (source / "v-express").iterdir():
        if entry.name not in replace:
            os.link(entry, weights / entry.name)
    for name, content in replace.items():
        if content is None:
            continue
        if isinstance(content, bytes):
            (weights / name).write_bytes(content)
        elif name.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in content.items()}, str(weights / name))
        else:
            torch.save(content, weights / name)
    return target


def load_error(model_dir: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_models(model_dir, **kwargs)
    assert isinstance(caught.value, ValueError)
    return str(caught.value)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_models(tmp_path_factory.mktemp("tiny") / "model_ckpts")


@pytest.fixture(scope="module")
def tiny_models(tiny_dir):
    return load_models(tiny_dir)


@pytest.fixture(scope="module")
def tiny_files(tiny_dir) -> dict[str, dict[str, torch.Tensor]]:
    return {name: read(tiny_dir / "v-express" / f"{name}.bin") for name in WEIGHT_NAMES}


@pytest.fixture(scope="module")
def sd15_built() -> dict:
    """What the full SD1.5-size networks built on meta hold (the networks themselves are not kept)."""
    config = json.loads(SD15_CONFIG.read_text())
    networks = dict(zip(NETWORK_NAMES, build_networks(config, GUIDER_CFG, PROJECTION_CFG)))
    files = split_weights(networks)
    return {
        "shapes": {name: {key: list(tensor.shape) for key, tensor in state.items()} for name, state in files.items()},
        "numel": {name: sum(tensor.numel() for tensor in state.values()) for name, state in files.items()},
        "materialised_parameters": [f"{name}.{key}" for name, network in networks.items()
                                    for key, parameter in network.named_parameters() if parameter.device.type != "meta"],
        "position_codes": position_codes(networks["denoising_unet"]),
        "motion_parameters": sum(parameter.numel() for key, parameter in networks["denoising_unet"].named_parameters()
                                 if MOTION_KEY in key),
    }


# --------------------------------------------------------------------------- 1. manifest


def manifest_groups() -> dict[str, dict[str, list[int]]]:
    manifest = json.loads(MANIFEST.read_text())
    groups = {}
    for heading, keys in manifest.items():
        name = heading.split(".bin", 1)[0]
        assert name in WEIGHT_NAMES, heading
        groups[name] = keys
    assert set(groups) == set(WEIGHT_NAMES)
    return groups


def test_manifest_headings_describe_the_file_groups():
    headings = list(json.loads(MANIFEST.read_text()))
    assert headings == [
        "reference_net.bin",
        "denoising_unet.bin (all keys except motion_modules.*)",
        "motion_module.bin (keys containing motion_modules.)",
        "v_kps_guider.bin",
        "audio_projection.bin",
    ]


def test_sd15_networks_match_manifest_exactly(sd15_built):
    groups = manifest_groups()
    assert set(sd15_built["shapes"]) == set(groups)
    for name, built in sd15_built["shapes"].items():
        expected = groups[name]
        assert sorted(set(built) - set(expected)) == [], f"{name}: keys not in the manifest"
        assert sorted(set(expected) - set(built)) == [], f"{name}: manifest keys not built"
        wrong = {key: (built[key], shape) for key, shape in expected.items() if built[key] != shape}
        assert wrong == {}, f"{name}: shapes differ"
    # the grouping rule: motion keys are exactly those containing "motion_modules."
    assert all(MOTION_KEY in key for key in groups["motion_module"])
    assert not any(MOTION_KEY in key for name in groups if name != "motion_module" for key in groups[name])
    # the published ReferenceNet has no conv_norm_out
    assert not any(key.startswith("conv_norm_out.") for key in groups["reference_net"])


def test_sd15_networks_are_built_without_storage(sd15_built):
    assert sd15_built["materialised_parameters"] == []
    codes = sd15_built["position_codes"]
    assert len(codes) == SPEC_POSITION_CODES
    for key, code in codes.items():  # fixed buffers are real, fp32 and the formula
        assert code.device.type == "cpu" and code.dtype == torch.float32 and code.shape[:2] == (1, 32), key
        assert torch.equal(code, sinusoidal_position_code(32, code.shape[2])), key


def test_element_counts_match_spec(sd15_built):
    groups = manifest_groups()
    for name, expected in SPEC_ELEMENTS.items():
        assert sum(math.prod(shape) for shape in groups[name].values()) == expected, f"manifest {name}"
        assert sd15_built["numel"][name] == expected, f"built {name}"
    codes = {k: v for k, v in groups["motion_module"].items() if k.endswith(POSITION_CODE_SUFFIX)}
    assert len(codes) == SPEC_POSITION_CODES
    assert sum(math.prod(shape) for shape in codes.values()) == SPEC_POSITION_CODE_VALUES
    assert sd15_built["motion_parameters"] == SPEC_ELEMENTS["motion_module"] - SPEC_POSITION_CODE_VALUES == 453_209_280


def test_configs_read_from_manifest_shapes_are_the_published_ones():
    groups = manifest_groups()

    def meta(keys):
        return {key: torch.empty(shape, device="meta") for key, shape in keys.items()}

    assert guider_config(meta(groups["v_kps_guider"])) == GUIDER_CFG
    projection = audio_projection_config(meta(groups["audio_projection"]))
    assert {key: projection[key] for key in PROJECTION_CFG} == PROJECTION_CFG
    assert projection["dim_head"] == 64 and projection["ff_mult"] == 4 and projection["output_dim"] == 768
    assert motion_max_len(meta(groups["motion_module"])) == 32


# --------------------------------------------------------------------------- 2. loading


def test_fresh_tiny_directory_loads(tiny_dir, tiny_models, tiny_files):
    assert tiny_models.dtype == torch.float32
    assert tiny_models.paths.weights == {name: tiny_dir / "v-express" / f"{name}.bin" for name in WEIGHT_NAMES}
    for name, network in tiny_models.networks().items():
        assert not network.training, name
        for key, parameter in network.named_parameters():
            assert parameter.dtype == torch.float32 and parameter.device.type == "cpu", f"{name}.{key}"
            assert not parameter.requires_grad, f"{name}.{key}"
    assert_position_codes_fixed(tiny_models.denoising_unet)
    unet_state = tiny_models.denoising_unet.state_dict()
    for name in ("denoising_unet", "motion_module"):
        for key, value in tiny_files[name].items():
            assert torch.equal(unet_state[key], value), key
    for name in ("reference_net", "v_kps_guider", "audio_projection"):
        state = getattr(tiny_models, name).state_dict()
        assert state.keys() == tiny_files[name].keys()
        for key, value in tiny_files[name].items():
            assert torch.equal(state[key], value), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fixture_directory_loads_in_dtype(fixture_dir, dtype):
    models = load_models(fixture_dir, dtype=dtype)
    assert models.dtype == dtype
    for name, network in models.networks().items():
        for key, parameter in network.named_parameters():
            assert parameter.dtype == dtype, f"{name}.{key} is {parameter.dtype}"
    assert_position_codes_fixed(models.denoising_unet)
    # values are the file's, cast
    reference_file = read(fixture_dir / "v-express" / "reference_net.bin")
    reference_state = models.reference_net.state_dict()
    assert reference_state.keys() == reference_file.keys()
    for key, value in reference_file.items():
        assert torch.equal(reference_state[key], value.to(dtype)), key
    unet_state = models.denoising_unet.state_dict()
    motion_file = read(fixture_dir / "v-express" / "motion_module.bin")
    for key, value in motion_file.items():
        # Position codes are the formula computed here: the fixture's copies differ from it by one
        # float32 ulp on CPUs whose sin/exp kernels round differently from the one that wrote them.
        expected = sinusoidal_position_code(*value.shape[1:]) if key.endswith(POSITION_CODE_SUFFIX) else value.to(dtype)
        assert torch.equal(unet_state[key], expected), key


def test_denoising_file_carrying_motion_keys_loads(tiny_dir, tiny_files, tiny_models, tmp_path):
    merged = {**tiny_files["denoising_unet"], **tiny_files["motion_module"]}
    root = variant(tiny_dir, tmp_path / "m", replace={"denoising_unet.bin": merged}, drop=("motion_module.bin",))
    models = load_models(root)
    assert "motion_module" not in models.paths.weights
    assert_same_weights(models.denoising_unet, tiny_models.denoising_unet)
    assert_position_codes_fixed(models.denoising_unet)


def test_safetensors_files_load(tiny_dir, tiny_files, tiny_models, tmp_path):
    replace = {f"{name}.safetensors": state for name, state in tiny_files.items()}
    # A diffusers-complete UNet export carries conv_norm_out, which the published ReferenceNet lacks: not an error.
    replace["reference_net.safetensors"] = {
        **tiny_files["reference_net"], "conv_norm_out.weight": torch.ones(32), "conv_norm_out.bias": torch.zeros(32),
    }
    root = variant(tiny_dir, tmp_path / "m", replace=replace, drop=tuple(f"{name}.bin" for name in WEIGHT_NAMES))
    models = load_models(root)
    assert models.paths.weights == {name: root / "v-express" / f"{name}.safetensors" for name in WEIGHT_NAMES}
    for name, network in networks_of(models).items():
        assert_same_weights(network, getattr(tiny_models, name))
    assert_position_codes_fixed(models.denoising_unet)


def test_weights_dir_override(tiny_dir, tiny_models, tmp_path):
    # the model directory's own v-express/ folder is empty; the weights live elsewhere
    root = variant(tiny_dir, tmp_path / "m", drop=tuple(f"{name}.bin" for name in WEIGHT_NAMES))
    elsewhere = tmp_path / "my weights"
    elsewhere.mkdir()
    for name in WEIGHT_NAMES:
        os.link(tiny_dir / "v-express" / f"{name}.bin", elsewhere / f"{name}.bin")
    message = load_error(root)
    assert "reference_net" in message and "denoising_unet" in message

    models = load_models(root, weights_dir=elsewhere)
    assert models.paths.weights == {name: elsewhere / f"{name}.bin" for name in WEIGHT_NAMES}
    for name, network in networks_of(models).items():
        assert_same_weights(network, getattr(tiny_models, name))


def test_convert_weights_to_fp16_safetensors(tiny_dir, tiny_files, tiny_models, tmp_path):
    logged = []
    written = convert_weights(tiny_dir, tmp_path / "fp16", dtype=torch.float16, log=logged.append)
    assert sorted(path.name for path in written) == sorted(f"{name}.safetensors" for name in WEIGHT_NAMES)
    assert sorted(os.listdir(tmp_path / "fp16")) == sorted(f"{name}.safetensors" for name in WEIGHT_NAMES)
    assert len(logged) == 5
    for name in WEIGHT_NAMES:
        converted = load_file(str(tmp_path / "fp16" / f"{name}.safetensors"))
        source = tiny_files[name]
        assert converted.keys() == source.keys(), name
        for key, value in source.items():
            expected = value if key.endswith(POSITION_CODE_SUFFIX) else value.to(torch.float16)
            assert converted[key].dtype == expected.dtype, key
            assert torch.equal(converted[key], expected), key

    models = load_models(tiny_dir, weights_dir=tmp_path / "fp16", dtype=torch.float16)
    for name, network in networks_of(models).items():
        assert_same_weights(network, getattr(tiny_models, name), dtype=torch.float16)
    assert_position_codes_fixed(models.denoising_unet)


def test_position_codes_missing_from_file_are_computed(tiny_dir, tiny_files, tiny_models, tmp_path):
    """Computed, and fp32 even when the networks load in fp16."""
    dtype = torch.float16
    motion = {k: v for k, v in tiny_files["motion_module"].items() if not k.endswith(POSITION_CODE_SUFFIX)}
    assert len(motion) == len(tiny_files["motion_module"]) - SPEC_POSITION_CODES
    root = variant(tiny_dir, tmp_path / "m", replace={"motion_module.bin": motion})
    models = load_models(root, dtype=dtype)
    assert_position_codes_fixed(models.denoising_unet)
    assert_same_weights(models.denoising_unet, tiny_models.denoising_unet, dtype=dtype)


# --------------------------------------------------------------------------- 3. bad files


@pytest.mark.parametrize("fraction", [0.5, 0.0, 0.999])
def test_truncated_bin(tiny_dir, tmp_path, fraction):
    data = (tiny_dir / "v-express" / "denoising_unet.bin").read_bytes()
    root = variant(tiny_dir, tmp_path / "m", replace={"denoising_unet.bin": data[: int(len(data) * fraction)]})
    message = load_error(root)
    assert str(root / "v-express" / "denoising_unet.bin") in message
    assert "cannot be read" in message


def test_truncated_safetensors(tiny_dir, tiny_files, tmp_path):
    path = tmp_path / "v_kps_guider.safetensors"
    save_file(tiny_files["v_kps_guider"], str(path))
    data = path.read_bytes()
    root = variant(tiny_dir, tmp_path / "m", replace={"v_kps_guider.safetensors": data[: len(data) // 2]},
                   drop=("v_kps_guider.bin",))
    message = load_error(root)
    assert str(root / "v-express" / "v_kps_guider.safetensors") in message


@pytest.mark.parametrize("name, key", [
    ("reference_net", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"),
    ("motion_module", "up_blocks.3.motion_modules.2.temporal_transformer.proj_out.bias"),
    ("v_kps_guider", "blocks.2.bias"),
    ("audio_projection", "layers.0.1.0.bias"),
])
def test_missing_key(tiny_dir, tiny_files, tmp_path, name, key):
    state = dict(tiny_files[name])
    del state[key]
    root = variant(tiny_dir, tmp_path / "m", replace={f"{name}.bin": state})
    message = load_error(root)
    assert str(root / "v-express" / f"{name}.bin") in message
    assert "1 missing" in message and key in message
    assert "unexpected" not in message and "wrong shape" not in message


def test_missing_key_read_for_the_config(tiny_dir, tiny_files, tmp_path):
    state = dict(tiny_files["audio_projection"])
    del state["latents"]
    root = variant(tiny_dir, tmp_path / "m", replace={"audio_projection.bin": state})
    message = load_error(root)
    assert "audio_projection" in message and "latents" in message


def test_wrong_shape(tiny_dir, tiny_files, tmp_path):
    key = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    state = dict(tiny_files["denoising_unet"])
    shape = tuple(state[key].shape)
    state[key] = torch.zeros(shape[0], shape[1] // 2)
    root = variant(tiny_dir, tmp_path / "m", replace={"denoising_unet.bin": state})
    message = load_error(root)
    assert str(root / "v-express" / "denoising_unet.bin") in message
    assert "1 wrong shape" in message
    assert f"{key} {(shape[0], shape[1] // 2)} != {shape}" in message
    assert "missing" not in message and "unexpected" not in message


def test_unexpected_key(tiny_dir, tiny_files, tmp_path):
    state = dict(tiny_files["v_kps_guider"])
    state["blocks.6.weight"] = torch.zeros(3)
    root = variant(tiny_dir, tmp_path / "m", replace={"v_kps_guider.bin": state})
    message = load_error(root)
    path = root / "v-express" / "v_kps_guider.bin"
    assert f"{path} does not match the network (17 tensors in file, 16 expected)" in message
    assert "1 unexpected: blocks.6.weight" in message
    assert "missing" not in message


def test_many_unexpected_keys_are_counted_and_listed(tiny_dir, tiny_files, tmp_path):
    state = dict(tiny_files["reference_net"])
    extras = [f"extra.{index:02d}.weight" for index in range(12)]
    for key in extras:
        state[key] = torch.zeros(1)
    root = variant(tiny_dir, tmp_path / "m", replace={"reference_net.bin": state})
    message = load_error(root)
    count = len(tiny_files["reference_net"])
    assert f"({count + 12} tensors in file, {count} expected)" in message
    assert "12 unexpected: " + ", ".join(extras[:8]) + " ... and 4 more" in message


def test_motion_file_with_non_motion_keys(tiny_dir, tiny_files, tmp_path):
    state = dict(tiny_files["motion_module"])
    state["conv_in.weight"] = tiny_files["denoising_unet"]["conv_in.weight"]
    root = variant(tiny_dir, tmp_path / "m", replace={"motion_module.bin": state})
    message = load_error(root)
    assert str(root / "v-express" / "motion_module.bin") in message and "conv_in.weight" in message


@pytest.mark.parametrize("change", ["shifted", "cos_sin_swapped"])
def test_position_code_not_the_formula(tiny_dir, tiny_files, tmp_path, change):
    state = dict(tiny_files["motion_module"])
    key = "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    pe = state[key]
    state[key] = {
        "shifted": torch.roll(pe, 1, dims=1),
        "cos_sin_swapped": pe.view(1, pe.shape[1], -1, 2).flip(-1).reshape(pe.shape),
    }[change]
    root = variant(tiny_dir, tmp_path / "m", replace={"motion_module.bin": state})
    message = load_error(root)
    assert "motion_module.bin" in message and key in message and "position code" in message


class SystemCall:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class ExecCall:
    """Unpickling this runs Python code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def malicious_bytes(kind: str, payload, tmp_path: Path) -> bytes:
    state = {"conv_in.weight": torch.zeros(2), "payload": payload}
    if kind == "plain":
        return pickle.dumps(state, protocol=2)
    path = tmp_path / "evil.bin"
    torch.save(state, path)
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.mark.parametrize("kind", ["torch_zip", "plain"])
@pytest.mark.parametrize("call", [SystemCall, ExecCall], ids=["os_system", "exec"])
def test_pickle_that_runs_code_is_refused(tiny_dir, tmp_path, kind, call):
    # the payload is real: unpickling it without weights_only does write a marker
    proof = tmp_path / "proof"
    proof_file = tmp_path / "proof.bin"
    proof_file.write_bytes(malicious_bytes(kind, call(proof), tmp_path))
    if kind == "plain":
        pickle.loads(proof_file.read_bytes())
    else:
        torch.load(proof_file, weights_only=False)
    assert proof.exists()

    marker = tmp_path / "MARKER"
    data = malicious_bytes(kind, call(marker), tmp_path)
    root = variant(tiny_dir, tmp_path / "m", replace={"denoising_unet.bin": data})
    message = load_error(root)
    assert str(root / "v-express" / "denoising_unet.bin") in message
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        read_state_dict(root / "v-express" / "denoising_unet.bin")
    assert not marker.exists()


@pytest.mark.parametrize("content", [[torch.zeros(1)], {"a": 1}, torch.zeros(3)], ids=["list", "int_value", "tensor"])
def test_not_a_state_dict_of_tensors(tmp_path, content):
    path = tmp_path / "x.bin"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="expected a state dict of tensors") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def test_missing_model_directory(tmp_path):
    message = load_error(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and "does not exist" in message


def test_missing_files_are_listed(tiny_dir, tmp_path):
    root = variant(tiny_dir, tmp_path / "m", drop=("reference_net.bin", "audio_projection.bin", "motion_module.bin"),
                   drop_dirs=("wav2vec2-base-960h",))
    message = load_error(root)
    assert str(root) in message
    assert "reference_net.bin" in message and "audio_projection.bin" in message
    assert str(Path("wav2vec2-base-960h") / "config.json") in message
    for present in ("denoising_unet", "v_kps_guider", "motion_module", "sd-vae-ft-mse", "stable-diffusion-v1-5"):
        assert present not in message.split("missing:", 1)[1].split("(in", 1)[0], present


def test_missing_unet_config_and_vae(tiny_dir, tmp_path):
    root = variant(tiny_dir, tmp_path / "m", drop_dirs=("stable-diffusion-v1-5", "sd-vae-ft-mse"))
    message = load_error(root)
    assert str(Path("stable-diffusion-v1-5") / "unet" / "config.json") in message
    assert str(Path("sd-vae-ft-mse") / "config.json") in message


def test_missing_motion_file_without_motion_keys(tiny_dir, tiny_files, tmp_path):
    root = variant(tiny_dir, tmp_path / "m", drop=("motion_module.bin",))
    message = load_error(root)
    expected_missing = len(tiny_files["motion_module"]) - SPEC_POSITION_CODES
    assert str(root / "v-express" / "denoising_unet.bin") in message
    assert f"{expected_missing} missing" in message and MOTION_KEY in message


# ---------------------------------------------------------------------------------------------
# Memory: weights already in the target dtype are not copied


def test_weights_in_the_target_dtype_and_aligned_are_used_without_a_copy():
    from vexpress_core.checkpoint import STORAGE_ALIGNMENT, usable_as_is

    weight = torch.randn(16, 16)
    assert weight.data_ptr() % STORAGE_ALIGNMENT == 0
    assert usable_as_is(weight, "cpu", torch.float32) is weight
    converted = usable_as_is(weight, "cpu", torch.float16)
    assert converted.dtype == torch.float16 and torch.equal(converted, weight.half())
    shifted = torch.randn(16 * 16 + 1)[1:].view(16, 16)
    assert shifted.data_ptr() % STORAGE_ALIGNMENT != 0
    copy = usable_as_is(shifted, "cpu", torch.float32)
    assert copy.data_ptr() % STORAGE_ALIGNMENT == 0 and torch.equal(copy, shifted)
    assert usable_as_is(weight.t(), "cpu", torch.float32).is_contiguous()


def test_loading_in_the_files_dtype_keeps_one_copy_of_the_weights(tiny_dir, tiny_models, monkeypatch):
    """fp32 `.bin` files (torch.save aligns its records) loaded in fp32: the networks' parameters are
    the tensors read from the files, one copy of the weights in memory instead of two, with the
    values of a copied load."""
    from vexpress_core import checkpoint

    read = {}

    def recording_read(path, *streamed):
        state = read_state_dict(path, *streamed)
        read.update({tensor.data_ptr(): path.name for tensor in state.values() if tensor.dtype == torch.float32})
        return state

    monkeypatch.setattr(checkpoint, "read_state_dict", recording_read)
    models = load_models(tiny_dir, dtype=torch.float32)
    parameters = list(models.denoising_unet.parameters()) + list(models.reference_net.parameters())
    assert read and all(parameter.data_ptr() in read for parameter in parameters)
    for name, network in networks_of(models).items():
        assert_same_weights(network, getattr(tiny_models, name), dtype=torch.float32)
