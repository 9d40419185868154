"""Sampler benchmark: s/frame and peak memory of three paths on the same inputs, in one process.

  baseline     the published algorithm's costs with our kernels: one window per UNet call, latents
               moved to the host after every window, reference K/V recomputed for every frame and
               step, one frame per VAE decode;
  one window   our path with one window per UNet call;
  batched      our path with --window-batch windows per UNet call.

    python -m vexpress_core.bench                       # tiny random model on CPU, two lengths
    python -m vexpress_core.bench --sd15 --device cuda --dtype bf16 --size 512 --seconds 10 60 --context-frames 24

--sd15 builds the full SD1.5-size networks with random weights in memory (no files).
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .audio import synthetic_speech
from .checkpoint import load_models
from .dtypes import AUTO, DTYPES, resolved_dtype
from .keypoints import output_track
from .pipeline import GenerationSettings, decoded_chunks, denoise, encode_speech, prepare_reference, resolved_decode_chunk
from .tiny import make_tiny_models, random_models


def resident_bytes() -> int:
    with open("/proc/self/statm") as status:
        return int(status.read().split()[1]) * 4096


@contextmanager
def peak_rss(result: dict):
    """Samples the resident set size every 5 ms while the block runs; stores the peak in result['rss']."""
    done = threading.Event()
    peak = [resident_bytes()]

    def watch() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], resident_bytes())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        result["rss"] = max(peak[0], resident_bytes())


@dataclass
class Measurement:
    label: str
    frames: int
    seconds: float
    peak_rss: int
    peak_vram: int | None

    @property
    def per_frame(self) -> float:
        return self.seconds / self.frames

    def row(self) -> str:
        vram = f"{self.peak_vram / 2**20:9.0f}" if self.peak_vram is not None else "        -"
        return (f"{self.label:<26} {self.frames:>6} {self.per_frame:>9.3f} {self.seconds:>9.2f} "
                f"{self.peak_rss / 2**20:>9.0f} {vram}")


def portrait(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A neutral grey image and a centred face's keypoints; the content does not change the cost."""
    image = np.full((size, size, 3), 128, np.uint8)
    kps = np.array([[0.4, 0.45], [0.6, 0.45], [0.5, 0.58]], np.float32) * size
    return image, kps


def measure(models, settings: GenerationSettings, seconds: float, label: str) -> Measurement:
    image, kps = portrait(settings.width)
    reference = prepare_reference(models, image, settings.width, settings.height)
    speech = encode_speech(models, synthetic_speech(seconds), settings.fps)
    track = output_track(kps, None, settings.width, settings.height, speech.num_frames, "fix_face", fps=settings.fps)
    cuda = models.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    memory: dict = {}
    start = time.perf_counter()
    with peak_rss(memory):
        final = denoise(models, reference, speech, track, settings)
        for _ in decoded_chunks(models, final, resolved_decode_chunk(settings, models)):
            pass
        if cuda:
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    vram = torch.cuda.max_memory_allocated() if cuda else None
    return Measurement(label, speech.num_frames, elapsed, memory["rss"], vram)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="model directory (default: tiny random models made on the fly)")
    parser.add_argument("--sd15", action="store_true", help="full SD1.5-size networks with random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES.names(), default=None)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 2.0], help="audio lengths to run")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--context-frames", type=int, default=12)
    parser.add_argument("--context-overlap", type=int, default=4)
    parser.add_argument("--window-batch", type=int, default=4)
    args = parser.parse_args(argv)

    dtype = resolved_dtype(args.dtype or AUTO, args.device)
    if args.sd15:
        models = random_models(sd15=True, dtype=dtype, device=args.device)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            models = load_models(args.models or make_tiny_models(Path(tmp) / "models"), dtype=dtype, device=args.device)
    settings = GenerationSettings(width=args.size, height=args.size, steps=args.steps, context_frames=args.context_frames,
                                  context_overlap=args.context_overlap, deflicker=False)
    print(f"device {args.device}, dtype {dtype}, {args.size}x{args.size}, {args.steps} steps, "
          f"windows of {args.context_frames} overlapping by {args.context_overlap}, threads {torch.get_num_threads()}")
    measure(models, replace(settings, steps=1), min(args.seconds), "warm-up")
    print(f"{'path':<26} {'frames':>6} {'s/frame':>9} {'total s':>9} {'RSS MiB':>9} {'VRAM MiB':>9}")
    baseline_settings = replace(settings, window_batch=1, decode_chunk=1, cache_reference_kv=False, latents_on_host=True)
    for seconds in args.seconds:
        baseline = measure(models, baseline_settings, seconds, f"baseline, {seconds:g}s")
        single = measure(models, replace(settings, window_batch=1), seconds, f"one window, {seconds:g}s")
        batched = measure(models, replace(settings, window_batch=args.window_batch), seconds,
                          f"{args.window_batch} windows/batch, {seconds:g}s")
        for measurement in (baseline, single, batched):
            print(measurement.row())
        print(f"{'ratio one window / batched':<26} {single.seconds / batched.seconds:>6.2f}x")
        print(f"{'ratio baseline / batched':<26} {baseline.seconds / batched.seconds:>6.2f}x")


if __name__ == "__main__":
    main()
