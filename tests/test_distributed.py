"""Windows of a step spread over processes (gloo on CPU) give bit-identical latents."""
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vexpress_core.checkpoint import load_models
from vexpress_core.keypoints import output_track
from vexpress_core.pipeline import GenerationSettings, denoise, encode_speech, prepare_reference
from vexpress_core.audio import synthetic_speech
from vexpress_core.sampling import Shard, context_windows

SETTINGS = GenerationSettings(width=64, height=64, steps=2, context_frames=8, context_overlap=2, seed=3)
SECONDS = 0.8


def final_latents(model_dir: str) -> torch.Tensor:
    models = load_models(model_dir)
    image = np.full((64, 64, 3), 100, np.uint8)
    kps = np.array([[24, 28], [40, 28], [32, 38]], np.float32)
    reference = prepare_reference(models, image, 64, 64)
    speech = encode_speech(models, synthetic_speech(SECONDS), SETTINGS.fps)
    track = output_track(kps, None, 64, 64, speech.num_frames, "fix_face", fps=SETTINGS.fps)
    return denoise(models, reference, speech, track, SETTINGS)


def worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    torch.set_num_threads(1)  # the rounding of a few kernels depends on the thread count
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        assert Shard.from_process_group() == Shard(rank, world)
        latents = final_latents(model_dir)
        torch.save(latents, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_shards_partition_every_step():
    batches = range(7)
    owners = [[b for b in batches if Shard(rank, 3).owns(b)] for rank in range(3)]
    assert sorted(sum(owners, [])) == list(batches)
    assert all(owners)


def test_two_processes_match_one(tiny_model_dir, tmp_path):
    frames = int(SECONDS * SETTINGS.fps)
    assert len(context_windows(frames, SETTINGS.context_frames, SETTINGS.context_overlap)) >= 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = final_latents(str(tiny_model_dir))
    finally:
        torch.set_num_threads(threads)
    out = str(tmp_path / "latents")
    mp.spawn(worker, args=(2, free_port(), str(tiny_model_dir), out), nprocs=2, join=True)
    for rank in range(2):
        assert torch.equal(torch.load(f"{out}.{rank}", weights_only=True), single)
