"""Writing the five V-Express weight files in the published layout, and converting a folder's."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors.torch import save_file

from .checkpoint import MOTION_KEY, POSITION_CODE_SUFFIX, load_vexpress_networks, resolve_model_paths


def split_weights(networks: Mapping[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """The five published files' state dicts from the four networks (motion keys in their own file)."""
    return split_states({name: networks[name].state_dict()
                         for name in ("reference_net", "denoising_unet", "v_kps_guider", "audio_projection")})


def split_states(states: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """The five published files' state dicts from the four networks' state dicts."""
    unet_state = states["denoising_unet"]
    return {
        "reference_net": dict(states["reference_net"]),
        "denoising_unet": {k: v for k, v in unet_state.items() if MOTION_KEY not in k},
        "motion_module": {k: v for k, v in unet_state.items() if MOTION_KEY in k},
        "v_kps_guider": dict(states["v_kps_guider"]),
        "audio_projection": dict(states["audio_projection"]),
    }


def cast_state(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    def cast(key: str, tensor: torch.Tensor) -> torch.Tensor:
        keep = dtype is None or not tensor.is_floating_point() or key.endswith(POSITION_CODE_SUFFIX)
        return (tensor if keep else tensor.to(dtype)).detach().cpu().contiguous()

    return {key: cast(key, tensor) for key, tensor in state.items()}


def save_weights(states: Mapping[str, Mapping[str, torch.Tensor]], out_dir: str | Path, dtype: torch.dtype | None = None,
                 fmt: str = "safetensors") -> list[Path]:
    """Write the five files to `out_dir` as safetensors (or `.bin` via torch.save)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, state in states.items():
        target = out / f"{name}.{fmt if fmt == 'safetensors' else 'bin'}"
        tmp = target.with_name(target.name + ".tmp")
        tensors = cast_state(state, dtype)
        if fmt == "safetensors":
            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
        tmp.replace(target)
        written.append(target)
    return written


def convert_weights(src_dir: str | Path, dst_dir: str | Path, dtype: torch.dtype | None = None,
                    log: Callable[[str], None] = print) -> list[Path]:
    """Check the five V-Express files of `src_dir` strictly and write them to `dst_dir` as safetensors."""
    paths = resolve_model_paths(src_dir)
    networks = dict(zip(("reference_net", "denoising_unet", "v_kps_guider", "audio_projection"), load_vexpress_networks(paths)))
    written = save_weights(split_weights(networks), dst_dir, dtype)
    for path in written:
        log(f"wrote {path}")
    return written
