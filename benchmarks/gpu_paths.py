"""SD1.5-size random-weight V-Express on a CUDA GPU: s/frame and peak VRAM per dtype and mode.

    python benchmarks/gpu_paths.py --size 512 --seconds 2 --steps 8

For each dtype (fp16, bf16) and mode, one warm-up generation (the first CUDA calls, and for
`compile` the compilation, whose time is reported apart) and then one timed generation of the same
inputs: reference preparation, speech encoding, denoising (DDIM, guidance on every step) and
decoding, as `vexpress_core.bench.measure` counts them.

  eager      every network on the GPU, no compilation (the default path)
  compile    the UNet through torch.compile (falls back to eager, with a warning, where it cannot)
  low-vram   each network on the GPU only while its phase runs, latents in host memory (--low-vram)
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from vexpress_core.audio import synthetic_speech  # noqa: E402
from vexpress_core.bench import portrait  # noqa: E402
from vexpress_core.dtypes import DTYPES  # noqa: E402
from vexpress_core.offload import placed  # noqa: E402
from vexpress_core.orchestration import FramedReference, frames_phase, reference_phase, speech_phase, track_phase  # noqa: E402
from vexpress_core.pipeline import GenerationSettings  # noqa: E402
from vexpress_core.tiny import random_models  # noqa: E402

MODES = ("eager", "compile", "low-vram")


def generation(models, settings: GenerationSettings, seconds: float, low_vram: bool) -> int:
    """One whole generation (the frames are decoded and dropped); returns the frame count."""
    gpu, host = torch.device("cuda"), torch.device("cpu")

    def using(names):
        return placed(models, names, gpu, host if low_vram else gpu)

    image, kps = portrait(settings.width)
    reference = reference_phase(using, FramedReference(image, kps))
    speech = speech_phase(using, synthetic_speech(seconds), settings.fps)
    track = track_phase(reference, speech, None, "fix_face")
    return len(frames_phase(using, reference, speech, track, replace(settings, latents_on_host=low_vram)).frames)


def timed(models, settings: GenerationSettings, seconds: float, low_vram: bool) -> tuple[float, int, float]:
    """(seconds, frames, peak VRAM MiB) of one generation."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    frames = generation(models, settings, seconds, low_vram)
    torch.cuda.synchronize()
    return time.perf_counter() - start, frames, torch.cuda.max_memory_allocated() / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=2.0, help="speech length (60 frames at 30 fps: three windows)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES.names(), default=["fp16", "bf16"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark measures GPU paths")

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, SD1.5-size random weights, {args.size}x{args.size}, "
          f"{args.seconds:g} s of speech, {args.steps} DDIM steps, guidance 3.5", flush=True)
    rows = []
    for name in args.dtypes:
        models = random_models(sd15=True, dtype=DTYPES[name], device="cuda")
        for mode in args.modes:
            low_vram = mode == "low-vram"
            if low_vram:
                for network in models.networks().values():
                    network.to("cpu")
            settings = GenerationSettings(width=args.size, height=args.size, steps=args.steps, compile=mode == "compile")
            warm_up, _, _ = timed(models, replace(settings, steps=1), min(args.seconds, 1.0), low_vram)
            seconds, frames, vram = timed(models, settings, args.seconds, low_vram)
            rows.append((name, mode, seconds / frames, vram, frames, warm_up))
            print(f"  {name} {mode}: {seconds / frames:.3f} s/frame, peak VRAM {vram:.0f} MiB (warm-up {warm_up:.1f} s)", flush=True)
        del models
        torch.cuda.empty_cache()
    print()
    print("| dtype, mode | s/frame | peak VRAM MiB | frames | warm-up s |")
    print("|---|---|---|---|---|")
    for name, mode, per_frame, vram, frames, warm_up in rows:
        print(f"| {name}, {mode} | {per_frame:.3f} | {vram:.0f} | {frames} | {warm_up:.1f} |")


if __name__ == "__main__":
    main()
