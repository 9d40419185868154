"""How the two large networks (ReferenceNet, denoising UNet with its motion modules) keep their weights.

`dtype` keeps them in the compute dtype (the published way). `fp8_e4m3` stores every Linear and
Conv2d weight as float8 e4m3 with one float32 scale per output channel (the channel's largest
magnitude maps to e4m3's largest value, 448): a quarter of fp32's memory, half of fp16's. The
layers still compute in the model's dtype: a `torch.nn.utils.parametrize` parametrization turns
the stored weight back into `weight` (float8 x scale, in the dtype) whenever a layer reads it, so
only one layer's weight exists in full precision at a time. Biases, norms and the layers where
rounding errors count most for their size stay in the dtype (KEPT_LAYERS: the UNets' first and
last convolutions, the transformers' input/output projections and the down/up samplers, together
under a tenth of the weights; on the tiny fixture keeping them cuts the output error by a quarter).

Loading with `fp8_e4m3` quantises each tensor as it is read; from .safetensors files the tensors
are read one at a time, so neither the file nor a full-precision copy of a network is ever held.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from .host_memory import release_freed_host_memory
from .registry import Registry

FLOAT8 = getattr(torch, "float8_e4m3fn", None)
FLOAT8_MAX = 448.0
# Layers kept in the compute dtype, by the last part of their module path.
KEPT_LAYERS = ("conv_in", "conv_out", "proj_in", "proj_out")
KEPT_BLOCKS = ("downsamplers", "upsamplers")


@dataclass(frozen=True)
class WeightStorage:
    """`dtype`: what the large networks' Linear/Conv2d weights are stored as (None: the compute dtype)."""

    dtype: torch.dtype | None
    summary: str


WEIGHT_STORAGES: Registry[WeightStorage] = Registry("weight storage")
WEIGHT_STORAGES.register("dtype", WeightStorage(None, "weights in the compute dtype (published)"))
WEIGHT_STORAGES.register("fp8_e4m3", WeightStorage(FLOAT8, "float8 e4m3 weights with a per-channel scale, computing in the dtype"))


def check_float8(device: torch.device | str) -> None:
    """Raises a ValueError saying what is missing when this torch build or device cannot hold float8 weights."""
    if FLOAT8 is None:
        raise ValueError(f"fp8 weight storage needs torch.float8_e4m3fn, which this torch ({torch.__version__}) lacks: "
                         "install torch 2.1 or newer, or use --weight-storage dtype")
    try:
        torch.ones(1, device=device).to(FLOAT8).to(torch.float32)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"torch cannot convert float8_e4m3fn weights on {device} ({error}); "
                         "use --weight-storage dtype there") from error


class Float8Weight(nn.Module):
    """Parametrization: the stored float8 weight times its per-output-channel scale, in `dtype`."""

    def __init__(self, scale: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("scale", scale)
        self.dtype = dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        # In the compute dtype, in place: every e4m3 value is exact in fp16 and bf16, and each layer
        # call then makes one temporary of its weight's size (a float32 one would be twice that).
        return stored.to(self.dtype, copy=True).mul_(self.scale.to(self.dtype))


def quantised(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8 weight, float32 scale [out, 1, ...]) with weight ~= float8 * scale."""
    values = weight.to(torch.float32)
    peak = values.abs().amax(dim=tuple(range(1, values.dim())), keepdim=True)
    scale = (peak / FLOAT8_MAX).clamp_min(torch.finfo(torch.float32).tiny)  # an all-zero channel takes any scale
    return (values / scale).to(FLOAT8), scale


def stored_weight_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the weights stored as float8: every Linear and Conv2d except KEPT_LAYERS
    and those inside KEPT_BLOCKS."""
    def kept(name: str) -> bool:
        parts = name.split(".")
        return parts[-1] in KEPT_LAYERS or any(part in KEPT_BLOCKS for part in parts)

    return {f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d)) and not kept(name)}


def attach_scales(model: nn.Module, scales: Mapping[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """Makes each `key` (whose parameter already holds the float8 weight) read back as float8 x scale in `dtype`."""
    for key, scale in scales.items():
        module = model.get_submodule(key.rsplit(".", 1)[0])
        parametrize.register_parametrization(module, "weight", Float8Weight(scale, dtype), unsafe=True)
    return releasing_host_memory_per_block(model) if scales else model


def _release_on_host(module: nn.Module, inputs, output) -> None:
    weight = next(module.parameters(), None)
    if weight is not None and weight.device.type == "cpu":
        release_freed_host_memory()


def releasing_host_memory_per_block(model: nn.Module) -> nn.Module:
    """Hands freed host memory back after each part (ResNet, transformer, motion module, sampler) of
    every UNet block that runs on the CPU. Each float8 layer call expands its weight into a
    temporary; glibc's heap keeps a whole UNet call's worth of them resident otherwise (SD1.5 sizes
    at 128x128: a peak of 3495 MiB instead of 3159, for about 10% more time on the CPU)."""
    blocks = [*getattr(model, "down_blocks", ()), getattr(model, "mid_block", None), *getattr(model, "up_blocks", ())]
    for block in filter(None, blocks):
        for part in block.children():
            for module in part if isinstance(part, nn.ModuleList) else (part,):
                module.register_forward_hook(_release_on_host)
    return model


def store_float8(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Quantises an already-built network in place (models built in memory; loading quantises as it reads)."""
    scales = {}
    for key in sorted(stored_weight_keys(model)):
        module = model.get_submodule(key.rsplit(".", 1)[0])
        stored, scales[key] = quantised(module.weight.detach())
        module.weight = nn.Parameter(stored, requires_grad=False)
    return attach_scales(model, scales, dtype)


def stored_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """Each stored weight's dtype as held in memory (the parametrization's original), by state-dict key."""
    return {name.replace(".parametrizations.weight.original", ".weight"): tensor.dtype
            for name, tensor in model.named_parameters() if name.endswith(".parametrizations.weight.original")}


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class StreamedSafetensors(Mapping[str, torch.Tensor]):
    """A .safetensors file's tensors, each read from disk when asked for (plain reads, no memory map:
    what was read is freed with the tensor, so a file is never resident as a whole)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(size))
        header.pop("__metadata__", None)
        unknown = sorted({info["dtype"] for info in header.values()} - set(SAFETENSORS_DTYPES))
        if unknown:
            raise ValueError(f"{self.path}: tensors of unsupported dtypes {unknown}")
        self._data_start = 8 + size
        self._header = header

    def __getitem__(self, key: str) -> torch.Tensor:
        info = self._header[key]
        start, stop = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        if stop == start:
            return torch.empty(info["shape"], dtype=dtype)
        buffer = bytearray(stop - start)
        with open(self.path, "rb") as file:
            file.seek(self._data_start + start)
            if file.readinto(buffer) != len(buffer):
                raise ValueError(f"{self.path}: the file ends inside tensor {key}")
        return torch.frombuffer(buffer, dtype=dtype).reshape(info["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._header)

    def __len__(self) -> int:
        return len(self._header)
