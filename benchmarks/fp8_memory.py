"""Peak memory of fp8 (e4m3) against fp16 weights, with SD1.5-size random V-Express networks at 128x128.

    python benchmarks/fp8_memory.py WORK_DIR        # about 20 GB of disk in WORK_DIR, 10 GB of RAM, a quiet machine

Makes the SD1.5-size random model once (`python -m vexpress_core make-tiny-models WORK_DIR/fp32 --sd15`,
fp32 .bin), writes fp16 copies of its five V-Express files as .bin and as .safetensors, then runs one
generation per row, each in a fresh process: load the models, prepare the reference, encode the
speech, denoise and decode (`vexpress_core.bench.measure`), computing in fp16. It reports the
process's peak RSS (model loading included), the RSS once the models are loaded, and s/frame.

The rows pair each storage with the file format it loads best from: fp16 weights from fp16 .bin
files are used as they are (the file's own memory, counted once); fp8 weights are quantised as
they are read, one tensor at a time from .safetensors (from memory-mapped .bin files the whole file
stays resident while its network loads). The other two pairings are listed for completeness. The
goal of issue 19: fp8 (safetensors) at least 35% below fp16 (.bin).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULT_TAG = "FP8_MEMORY_RESULT "
# (weight storage, weight files); "dtype" keeps the weights in the compute dtype, fp16.
RUNS = (("dtype", "bin"), ("fp8_e4m3", "safetensors"), ("dtype", "safetensors"), ("fp8_e4m3", "bin"))
SHARED_FOLDERS = ("stable-diffusion-v1-5", "sd-vae-ft-mse", "wav2vec2-base-960h")


def peak_resident_mib() -> float:
    """This process's own high-water RSS (VmHWM: unlike getrusage's ru_maxrss, it does not inherit the
    peak of the parent the worker was forked from, which made the SD1.5 model in memory)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def resident_mib() -> float:
    with open("/proc/self/statm") as status:
        return int(status.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def weights_label(storage: str) -> str:
    return "fp16" if storage == "dtype" else storage


def fp16_copy(source: Path, target: Path, fmt: str) -> Path:
    """`source` with its five V-Express files as fp16 `fmt` files (one file in memory at a time)."""
    import torch
    from safetensors.torch import save_file

    from vexpress_core.checkpoint import WEIGHT_NAMES, read_state_dict, weight_file
    from vexpress_core.saving import cast_state

    if (target / "v-express").is_dir():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for folder in SHARED_FOLDERS:
        shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)
    weights = target / "v-express.partial"
    weights.mkdir(exist_ok=True)
    for name in WEIGHT_NAMES:
        tensors = cast_state(read_state_dict(weight_file(source / "v-express", name)), torch.float16)
        if fmt == "safetensors":
            save_file(tensors, str(weights / f"{name}.safetensors"))
        else:
            torch.save(tensors, weights / f"{name}.bin")
        del tensors
    weights.rename(target / "v-express")
    return target


def run_worker(args) -> None:
    import torch

    from vexpress_core.bench import measure
    from vexpress_core.checkpoint import load_models
    from vexpress_core.pipeline import GenerationSettings

    torch.set_num_threads(args.threads)
    models = load_models(args.models, dtype=torch.float16, weight_storage=args.storage)
    loaded = resident_mib()
    settings = GenerationSettings(width=args.size, height=args.size, steps=args.steps, deflicker=False)
    result = measure(models, settings, args.seconds, args.storage)
    print(RESULT_TAG + json.dumps({
        "storage": args.storage, "format": args.format, "loaded_mib": loaded,
        "peak_mib": peak_resident_mib(),
        "generation_peak_mib": result.peak_rss / 2**20, "per_frame": result.per_frame, "frames": result.frames,
    }), flush=True)


def worker(args, storage: str, fmt: str, models: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), str(args.work), "--worker", "--storage", storage,
               "--format", fmt, "--models", str(models), "--size", str(args.size), "--steps", str(args.steps),
               "--seconds", str(args.seconds), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{storage} from {fmt} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="folder for the SD1.5-size random models (about 20 GB)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=1.0, help="speech length (30 frames at 30 fps: two windows)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)

    from vexpress_core.tiny import make_tiny_models

    source = args.work / "fp32"
    if not (source / "v-express").is_dir():
        make_tiny_models(source, sd15=True)
    folders = {fmt: fp16_copy(source, args.work / f"fp16-{fmt}", fmt) for fmt in ("bin", "safetensors")}
    print(f"SD1.5-size random networks, {args.size}x{args.size}, {args.seconds:g} s of speech, {args.steps} steps, "
          f"computing in fp16, {args.threads} threads", flush=True)
    results = []
    for storage, fmt in RUNS:
        result = worker(args, storage, fmt, folders[fmt])
        results.append(result)
        print(f"  {weights_label(storage)} from {fmt}: peak {result['peak_mib']:.0f} MiB, loaded {result['loaded_mib']:.0f} MiB", flush=True)
    base = results[0]
    print()
    print("| weights | files | peak RSS MiB | RSS loaded MiB | peak vs fp16 (.bin) | s/frame |")
    print("|---|---|---|---|---|---|")
    for result in results:
        print(f"| {weights_label(result['storage'])} | {result['format']} | {result['peak_mib']:.0f} | {result['loaded_mib']:.0f} | "
              f"{result['peak_mib'] / base['peak_mib'] - 1:+.0%} | {result['per_frame']:.2f} |")


if __name__ == "__main__":
    main()
