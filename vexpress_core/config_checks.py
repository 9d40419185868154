"""Checks of a pretrained folder's config against its weights, before anything is allocated: block
counts a config asks for against those its file holds, and the network built on the meta device
against the file's shapes."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from accelerate import init_empty_weights

from .model_files import CheckpointError, config_problem

POSITION_CODE_SUFFIX = "pos_encoder.pe"
SHOWN_KEYS = 8


def largest_count(value) -> int:
    """The largest whole number in a config value that is one or a (nested) list of them."""
    if type(value) is int:
        return value
    if isinstance(value, (list, tuple)) and value:
        return max(largest_count(item) for item in value)
    raise TypeError(f"expected a whole number or a list of them, got {value!r}")


# Config values that set how many blocks a network has, with how to read the largest count asked
# for and the file keys whose indices count the blocks there: a config may not ask for more blocks
# than its weights hold (building them, even on the meta device, costs time and memory).
UNET_BLOCKS = (
    ("block_out_channels", len, r"(?:^|\.)down_blocks\.(\d+)\."),
    ("layers_per_block", largest_count, r"(?:^|\.)down_blocks\.\d+\.resnets\.(\d+)\."),
    ("transformer_layers_per_block", largest_count, r"\.transformer_blocks\.(\d+)\."),
)
VAE_BLOCKS = (
    ("block_out_channels", len, r"^encoder\.down_blocks\.(\d+)\."),
    ("layers_per_block", largest_count, r"^encoder\.down_blocks\.\d+\.resnets\.(\d+)\."),
)
WAV2VEC2_WIDTH_KEY = "feature_projection.projection.weight"  # [hidden_size, last conv_dim]
WAV2VEC2_PREFIX = "wav2vec2."  # the published checkpoint is a Wav2Vec2ForCTC's
WAV2VEC2_BLOCKS = (
    ("num_hidden_layers", largest_count, r"(?:^|\.)encoder\.layers\.(\d+)\."),
    ("conv_dim", len, r"(?:^|\.)feature_extractor\.conv_layers\.(\d+)\."),
)


def read_config(path: Path) -> dict:
    """A config.json's settings, once it is known to be a small JSON object."""
    try:
        problem = config_problem(path)
    except OSError as error:
        raise CheckpointError(f"{path}: not a readable config.json ({error})") from error
    if problem:
        raise CheckpointError(problem)
    return json.loads(path.read_bytes())


def check_block_counts(config: Mapping, config_path: Path, blocks, keys: Iterable[str], weights_path: Path) -> None:
    """Raises when `config` asks for more blocks of some kind than the weights file holds."""
    keys = list(keys)
    for field_name, measure, pattern in blocks:
        if field_name not in config:
            continue
        try:
            asked = measure(config[field_name])
        except TypeError as error:
            raise CheckpointError(f"{config_path}: {field_name} is malformed ({error})") from error
        indices = [int(found.group(1)) for key in keys if (found := re.search(pattern, key))]
        held = max(indices) + 1 if indices else 0
        if asked > held:
            raise CheckpointError(f"{config_path}: {field_name} asks for {asked} blocks where {weights_path} holds "
                                  f"{held}: the config and the weights are not the same model")


def network_on_meta(build: Callable[[], torch.nn.Module], config_path: Path) -> torch.nn.Module:
    """`build()` with every parameter and buffer on the meta device (no memory); a config the
    constructor refuses becomes one CheckpointError naming it."""
    try:
        with init_empty_weights(include_buffers=True):
            return build()
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, RuntimeError) as error:
        raise CheckpointError(f"{config_path} describes a network that cannot be built ({type(error).__name__}: {error}): "
                              "is it the config of these weights?") from error


def check_shared_shapes(network: torch.nn.Module, config_path: Path, shapes: Mapping[str, tuple[int, ...]],
                        weights_path: Path, prefix: str = "") -> None:
    """Raises when a tensor the network and the file both name (the file's keys without `prefix`)
    has another shape in the file. Keys only one side names are left to the library's loading,
    which knows the renames between its versions."""
    found = {key.removeprefix(prefix): torch.empty(shape, device="meta") for key, shape in shapes.items()}
    expected = {key: tensor.shape for key, tensor in network.state_dict().items() if key in found}
    report = mismatch_report(str(weights_path), expected, {key: found[key] for key in expected}, built_from=config_path)
    if report:
        raise CheckpointError(report)


def check_network_fits_file(network: torch.nn.Module, config_path: Path, shapes: Mapping[str, tuple[int, ...]],
                            weights_path: Path) -> None:
    """Raises when the network a config describes holds more values than its weights file, before
    anything of that size is allocated."""
    needed = sum(tensor.numel() for tensor in network.state_dict().values())
    held = sum(math.prod(shape) for shape in shapes.values())
    if needed > held:
        raise CheckpointError(f"{config_path} describes a network of {needed:,} values but {weights_path} holds "
                              f"{held:,}: the config and the weights are not the same model")


def check_hidden_size(config: Mapping, config_path: Path, shapes: Mapping[str, tuple[int, ...]], weights_path: Path) -> None:
    """Raises unless wav2vec2's hidden_size is the width of its weights: Wav2Vec2Model allocates a
    vector of that size for real even when built on the meta device."""
    widths = {shape[0] for key, shape in shapes.items() if key.endswith(WAV2VEC2_WIDTH_KEY) and shape}
    if config.get("hidden_size") not in widths:
        raise CheckpointError(f"{config_path}: hidden_size {config.get('hidden_size')!r} is not the width of the weights "
                              f"in {weights_path} ({', '.join(map(str, sorted(widths))) or f'no {WAV2VEC2_WIDTH_KEY}'}): "
                              "the config and the weights are not the same model")


def mismatch_report(source: str, expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor], ignored: Iterable[str] = (),
                    built_from: Path | None = None) -> str | None:
    """A description of missing, unexpected and wrongly shaped keys, or None when everything matches.
    `built_from`: the config the network was sized by, named because it may be the wrong one."""
    ignored = set(ignored)
    missing = [k for k in expected if k not in found and not k.endswith(POSITION_CODE_SUFFIX)]
    unexpected = [k for k in found if k not in expected and k not in ignored]
    wrong = [
        f"{k} {tuple(found[k].shape)} != {tuple(shape)}"
        for k, shape in expected.items()
        if k in found and tuple(found[k].shape) != tuple(shape)
    ]
    if not (missing or unexpected or wrong):
        return None
    network = "the network" if built_from is None else f"the network built from {built_from}"
    parts = [f"{source} does not match {network} ({len(found)} tensors in file, {len(expected)} expected):"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" ... and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
            parts.append(f"  {len(items)} {label}: {', '.join(items[:SHOWN_KEYS])}{more}")
    return "\n".join(parts)
