"""Two processes denoising one video, as `accelerate launch` runs the CLI on two GPUs, played by CPU
processes (tests/test_gpu_paths.py, items 2 and 3). A module of its own, so that spawned processes
import only what they run."""
from __future__ import annotations

import dataclasses
import socket

import torch
import torch.distributed as dist

import tiny_case
from cuda_on_cpu import GPU, cuda_on_the_cpu
from vexpress_core.checkpoint import load_models
from vexpress_core.pipeline import denoise


@dataclasses.dataclass(frozen=True)
class Scenario:
    backend: str
    free_bytes: tuple[int, int]  # free GPU memory of rank 0 and rank 1
    memory: dict


SCENARIOS = {
    # Each process sizes window_batch="auto" from its own free memory: no room on rank 0, plenty on rank 1.
    "auto_window_batch": Scenario("gloo", (0, 2**40), {}),
    # --low-vram (latents in host memory) with a default group that, like NCCL, reduces no host tensors.
    "low_vram_over_nccl": Scenario("cuda:gloo", (8 * 2**30, 8 * 2**30), {"latents_on_host": True, "window_batch": 1}),
}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def denoise_in_each_process(rank: int, world: int, ports: list[int], model_dir: str, out: str) -> None:
    """Every scenario's final latents on this process (or the error it raised), saved to `out`.RANK."""
    torch.set_num_threads(1)  # the rounding of a few kernels depends on the thread count
    models = load_models(model_dir)
    case = tiny_case.make_case(models)
    results = {}
    for port, (name, scenario) in zip(ports, SCENARIOS.items()):
        dist.init_process_group(scenario.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        try:
            with cuda_on_the_cpu(scenario.free_bytes[rank]):
                settings = dataclasses.replace(tiny_case.SETTINGS, **scenario.memory)
                results[name] = denoise(dataclasses.replace(models, device=GPU), *case, settings)
        except RuntimeError as error:
            results[name] = f"{type(error).__name__}: {error}"
        finally:
            dist.destroy_process_group()
    torch.save(results, f"{out}.{rank}")
