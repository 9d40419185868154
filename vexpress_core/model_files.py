"""What a model folder's files claim, checked before any of them is read in full.

A model folder may come from anywhere (a download cut short, a copy of another model, a folder
made to do harm). Each file loading would read must be a regular file inside the folder (links
are followed, but not out of it), a config must be a small JSON object, a safetensors header must
describe tensors that lie inside the file without overlapping, and a torch zip archive must have
its directory and every record inside the file. All of this reads headers only, so it runs before
any detection, decoding or model loading (the CLI's first step, the node's input validation).
"""
from __future__ import annotations

import json
import math
import os
import stat
import struct
import zipfile
from pathlib import Path
from typing import Iterable

MAX_CONFIG_BYTES = 1 << 20  # SD1.5's UNet config is 1 KB; a config.json of megabytes is not one
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
SAFETENSORS_ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
SHOWN_PROBLEMS = 8


class CheckpointError(ValueError):
    """A model file is missing, unreadable or does not match the network."""


def link_problem(path: Path, folder: Path) -> str | None:
    """Why `path` may not be read as part of `folder`: it leads out of the folder (through a link of
    its own or of a parent inside the folder), or it is not a regular file; None when it may."""
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(Path(os.path.realpath(folder))):
        return (f"{path} is a link to {target}, outside {folder}: copy the file into the folder "
                "(links may only point inside the model folder)")
    mode = target.stat().st_mode
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file"
    return None


def config_problem(path: Path) -> str | None:
    """Why `path` is not a config.json: too large, not JSON, or not a JSON object."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        return f"{path} holds {size:,} bytes; a config.json is a few KB (at most {MAX_CONFIG_BYTES:,})"
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{path} is not valid JSON ({error}): an interrupted download? Fetch the file again"
    if not isinstance(config, dict):
        return f"{path} holds a JSON {type(config).__name__}, expected an object of settings"
    return None


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file declares, once its header is checked against the file:
    known dtypes, byte counts that match the shapes, tensors inside the file and not overlapping."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} holds {size} bytes, too few for a safetensors file: an interrupted download?")
        (header_bytes,) = struct.unpack("<Q", prefix)
        if header_bytes > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise CheckpointError(f"{path}: its header claims {header_bytes:,} bytes but the file holds {size:,}: "
                                  "an interrupted download?")
        try:
            header = json.loads(file.read(header_bytes))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    spans = sorted((_tensor_span(path, name, entry), name) for name, entry in header.items())
    data_bytes = size - 8 - header_bytes
    for ((_, end), name), ((start, _), following) in zip(spans, spans[1:]):
        if start < end:
            raise CheckpointError(f"{path}: tensors {name} and {following} overlap in the file")
    if spans and spans[-1][0][1] > data_bytes:
        raise CheckpointError(f"{path}: its header places tensor {spans[-1][1]} up to byte {spans[-1][0][1]:,} of the "
                              f"data, but the file holds {data_bytes:,} bytes of data: an interrupted download?")
    return {name: tuple(entry["shape"]) for name, entry in header.items()}


def _tensor_span(path: Path, name: str, entry) -> tuple[int, int]:
    """(start, end) of a header entry's bytes in the data section, once the entry is consistent."""
    if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_ITEM_BYTES:
        raise CheckpointError(f"{path}: tensor {name} has no known dtype in the header")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not _whole_numbers(shape) or not _whole_numbers(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise CheckpointError(f"{path}: tensor {name} has a malformed shape or data_offsets in the header")
    expected = math.prod(shape) * SAFETENSORS_ITEM_BYTES[entry["dtype"]]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(f"{path}: tensor {name} {entry['dtype']} {tuple(shape)} needs {expected:,} bytes, "
                              f"its header gives it {offsets[1] - offsets[0]:,}")
    return offsets[0], offsets[1]


def _whole_numbers(values) -> bool:
    return isinstance(values, list) and all(type(value) is int and value >= 0 for value in values)


def zip_problem(path: Path) -> str | None:
    """Why a torch.save zip archive cannot be whole: no readable directory (a cut-off download) or a
    record past the end of the file. Files in torch's legacy (non-zip) format are left to loading."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            legacy = file.read(2) == b"\x80\x02"  # the pickle protocol 2 opening of torch's legacy format
        return None if legacy else (f"{path} cannot be read: it is neither a torch zip archive nor a legacy torch "
                                    "file (an interrupted download?)")
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        return f"{path} cannot be read: its zip directory is broken ({error}; an interrupted download?)"
    for record in records:
        if record.header_offset + record.compress_size > size:
            return f"{path} cannot be read: record {record.filename} runs past the end of the file (an interrupted download?)"
    return None


def file_problems(path: Path, folder: Path) -> list[str]:
    """What is wrong with one file a model folder's loading reads (empty when nothing is)."""
    problem = link_problem(path, folder)
    if problem is None:
        if path.name.endswith(".json"):
            problem = config_problem(path)
        elif path.suffix == ".safetensors":
            try:
                safetensors_shapes(path)
            except CheckpointError as error:
                problem = str(error)
        elif path.suffix == ".bin":
            problem = zip_problem(path)
    return [problem] if problem else []


def check_files(files: Iterable[tuple[Path, Path]]) -> None:
    """Raises one CheckpointError listing every problem of the (file, folder it must stay in) pairs."""
    problems = [problem for path, folder in files for problem in file_problems(path, folder)]
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise CheckpointError("the model files cannot be used as they are:\n  " + "\n  ".join(problems[:SHOWN_PROBLEMS]) + more)

