"""Side-by-side benchmark: the published V-Express pipeline against ours, same model, inputs and settings.

The published code is not part of this repository: fetch it (github tencent-ailab/V-Express) into a
folder outside the clone and give that folder as the first argument. It needs its own packages
(diffusers 0.29, transformers 4.41, omegaconf; see its requirements.txt), so it usually runs in its
own virtual environment: pass that interpreter with --published-python.

    python benchmarks/side_by_side.py /path/to/V-Express --published-python /path/to/venv/bin/python

Every run is a fresh subprocess, published and ours alternating, one run each per size by default.
Both load the same model folder (default: the tiny fixture ../shared/reference/vexpress-tiny), take
the same reference image (vexpress_core/assets/portrait.png), the same synthetic speech, the same
fixed keypoints (fix_face), DDIM, CFG 3.5, reference/audio weights 0.95/3.0, windows of 24
overlapping by 4, and the same initial noise seed. "generation" is everything from the reference
image, waveform and keypoints to the decoded frames (the published pipeline call plus its keypoint
drawing; for ours prepare_reference + encode_speech + generate, deflicker included), without model
loading. Both run on the CPU in fp32 unless --device and --dtype say otherwise (on a GPU the
published pipeline is moved there whole, ours with `load_models(device=...)`; peak VRAM is then
reported too). Peak RSS is the process's high-water mark (ru_maxrss), model loading included; the phase
columns are the highest RSS sampled (every 5 ms) while each phase ran.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "reference" / "vexpress-tiny"
PORTRAIT = REPO / "vexpress_core" / "assets" / "portrait.png"
PORTRAIT_KPS = REPO / "vexpress_core" / "assets" / "portrait_kps.json"
SAMPLE_RATE = 16000
RESULT_TAG = "SIDE_BY_SIDE_RESULT "


# ---------------------------------------------------------------- shared by both workers (numpy only)

def speech_waveform(num_frames: int, fps: float):
    """Deterministic speech-like audio just long enough for `num_frames` frames: int(duration * fps) == num_frames."""
    import numpy as np

    samples = int(math.ceil(num_frames / fps * SAMPLE_RATE)) + 8
    time_axis = np.arange(samples) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * time_axis)
    wave = envelope * (np.sin(2 * np.pi * 180 * time_axis) + 0.4 * np.sin(2 * np.pi * 720 * time_axis))
    wave += 0.05 * np.random.default_rng(0).standard_normal(samples)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def reference_inputs(size: int):
    """The portrait as an RGB PIL image of the output size, and its three keypoints at that size."""
    import numpy as np
    from PIL import Image

    record = json.loads(PORTRAIT_KPS.read_text())
    kps = np.asarray(record["kps"], np.float32) * (size / np.asarray(record["frame_size"], np.float32))
    image = Image.open(PORTRAIT).convert("RGB").resize((size, size), Image.BICUBIC)
    return image, kps


class Phases:
    """Wall time and sampled peak RSS per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.peak_mib: dict[str, float] = {}
        self._current: str | None = None
        self._peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @staticmethod
    def _resident() -> int:
        with open("/proc/self/statm") as status:
            return int(status.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._done.wait(0.005):
            self._peak = max(self._peak, self._resident())

    @contextmanager
    def phase(self, name: str):
        outer, outer_peak = self._current, self._peak
        self._current, self._peak = name, self._resident()
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu_start
            peak = max(self._peak, self._resident())
            self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), peak / 2**20)
            self._current, self._peak = outer, max(outer_peak, peak)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def emit(result: dict) -> None:
    import torch

    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_initialized():
        result["peak_vram_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(RESULT_TAG + json.dumps(result), flush=True)


TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


def finished(device) -> None:
    """Waits for the device's queued work, so a phase's time includes it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the published pipeline

def run_published(args) -> None:
    import importlib.util

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(args.published))
    from diffusers import AutoencoderKL, DDIMScheduler
    from modules import AudioProjection, UNet2DConditionModel, UNet3DConditionModel, VKpsGuider
    from omegaconf import OmegaConf
    from pipelines import VExpressPipeline
    from PIL import Image
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    # datasets/__init__ imports torchvision for training only; the drawing lives in datasets/utils.py.
    spec = importlib.util.spec_from_file_location("published_draw", args.published / "datasets" / "utils.py")
    drawing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drawing)

    phases = Phases()
    model = args.model
    dtype, device = torch_dtype(args.dtype), torch.device(args.device)
    with phases.phase("load"):
        config = OmegaConf.load(args.published / "inference_v2.yaml")
        unet_config = model / "stable-diffusion-v1-5" / "unet" / "config.json"
        weights = model / "v-express"
        vae = AutoencoderKL.from_pretrained(model / "sd-vae-ft-mse").to(dtype=dtype)
        audio_encoder = Wav2Vec2Model.from_pretrained(model / "wav2vec2-base-960h").to(dtype=dtype)
        # The published script loads Wav2Vec2Processor; the pipeline only calls its feature extractor,
        # which is what a model folder without tokenizer files (like the fixture's) provides.
        audio_processor = Wav2Vec2FeatureExtractor.from_pretrained(model / "wav2vec2-base-960h")
        reference_net = UNet2DConditionModel.from_config(unet_config).to(dtype=dtype)
        reference_net.load_state_dict(torch.load(weights / "reference_net.bin", map_location="cpu"), strict=False)
        denoising_unet = UNet3DConditionModel.from_config_2d(
            unet_config, unet_additional_kwargs=config.unet_additional_kwargs).to(dtype=dtype)
        denoising_unet.load_state_dict(torch.load(weights / "denoising_unet.bin", map_location="cpu"), strict=False)
        denoising_unet.load_state_dict(torch.load(weights / "motion_module.bin", map_location="cpu"), strict=False)
        guider_state = torch.load(weights / "v_kps_guider.bin", map_location="cpu")
        v_kps_guider = VKpsGuider(guider_state["conv_out.weight"].shape[0], block_out_channels=(16, 32, 96, 256))
        v_kps_guider.load_state_dict(guider_state)
        cross = denoising_unet.config.cross_attention_dim
        projection_state = torch.load(weights / "audio_projection.bin", map_location="cpu")
        # The published script fixes depth 4 and ff_mult 4 (the released model); read them for other models.
        depth = 1 + max(int(key.split(".")[1]) for key in projection_state if key.startswith("layers."))
        ff_mult = projection_state["layers.0.1.1.weight"].shape[0] // cross
        audio_projection = AudioProjection(
            dim=cross, depth=depth, dim_head=64, heads=12, num_queries=2 * args.num_pad + 1, embedding_dim=768,
            output_dim=cross, ff_mult=ff_mult, max_seq_len=2 * (2 * args.num_pad + 1))
        audio_projection.load_state_dict(projection_state)
        scheduler = DDIMScheduler(**OmegaConf.to_container(config.noise_scheduler_kwargs))
        pipeline = VExpressPipeline(
            vae=vae, reference_net=reference_net, denoising_unet=denoising_unet, v_kps_guider=v_kps_guider,
            audio_processor=audio_processor, audio_encoder=audio_encoder, audio_projection=audio_projection,
            scheduler=scheduler,
        ).to(dtype=dtype, device=device)
        pipeline.set_progress_bar_config(disable=True)

    # Time the pipeline's own stages by wrapping its methods on this instance (its code is unchanged).
    for method, label in (("prepare_reference_latent", "reference"), ("prepare_kps_feature", "v-kps"),
                          ("prepare_audio_embeddings", "audio"), ("decode_latents", "decode")):
        original = getattr(pipeline, method)

        def timed(*a, _original=original, _label=label, **k):
            with phases.phase(_label):
                return _original(*a, **k)

        setattr(pipeline, method, timed)

    image, kps = reference_inputs(args.size)
    waveform = torch.from_numpy(speech_waveform(args.frames, args.fps))
    num_frames = int(waveform.shape[0] / SAMPLE_RATE * args.fps)
    with phases.phase("generation"):
        with phases.phase("draw"):
            kps_images = [Image.fromarray(drawing.draw_kps_image(args.size, args.size, kps)) for _ in range(num_frames)]
        video = pipeline(
            reference_image=image, kps_images=kps_images, audio_waveform=waveform, width=args.size, height=args.size,
            video_length=num_frames, num_inference_steps=args.steps, guidance_scale=args.cfg,
            context_frames=args.context_frames, context_overlap=args.context_overlap,
            reference_attention_weight=args.reference_weight, audio_attention_weight=args.audio_weight,
            num_pad_audio_frames=args.num_pad, generator=torch.manual_seed(args.seed),
        )
        finished(device)
    phases.stop()
    others = sum(phases.seconds.get(name, 0.0) for name in ("draw", "reference", "v-kps", "audio", "decode"))
    phases.seconds["denoise"] = phases.seconds["generation"] - others  # the sampling loop is not a method
    emit({"impl": "published", "frames": int(video.shape[2]), "seconds": phases.seconds,
          "cpu_seconds": phases.cpu_seconds, "phase_peak_mib": phases.peak_mib})


# ---------------------------------------------------------------- ours

def run_ours(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from vexpress_core import pipeline as ours
    from vexpress_core.checkpoint import load_models
    from vexpress_core.keypoints import KeypointTrack

    phases = Phases()
    with phases.phase("load"):
        models = load_models(args.model, dtype=torch_dtype(args.dtype), device=args.device)
    settings = ours.GenerationSettings(
        width=args.size, height=args.size, fps=args.fps, steps=args.steps, guidance_scale=args.cfg,
        reference_weight=args.reference_weight, audio_weight=args.audio_weight, context_frames=args.context_frames,
        context_overlap=args.context_overlap, num_pad_audio_frames=args.num_pad, seed=args.seed,
        **parsed_options(args.option),
    )
    image, kps = reference_inputs(args.size)
    waveform = speech_waveform(args.frames, args.fps)
    # Stage timings by wrapping the pipeline module's functions (instrumentation only; chunks stay streamed).
    denoise, decoded_chunks = ours.denoise, ours.decoded_chunks

    def timed_denoise(*a, **k):
        with phases.phase("denoise"):
            return denoise(*a, **k)

    def timed_chunks(*a, **k):
        chunks = decoded_chunks(*a, **k)
        while True:
            with phases.phase("decode"):
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk

    ours.denoise, ours.decoded_chunks = timed_denoise, timed_chunks
    with phases.phase("generation"):
        with phases.phase("reference"):
            reference = ours.prepare_reference(models, np.asarray(image), args.size, args.size)
        with phases.phase("audio"):
            speech = ours.encode_speech(models, waveform, args.fps)
        track = KeypointTrack(np.repeat(kps[None], speech.num_frames, axis=0), (args.size, args.size), args.fps)
        generation = ours.generate(models, reference, speech, track, settings)
        finished(torch.device(args.device))
    phases.stop()
    emit({"impl": "ours", "frames": int(generation.frames.shape[0]), "seconds": phases.seconds, "cpu_seconds": phases.cpu_seconds,
          "phase_peak_mib": phases.peak_mib, "options": args.option})


def parsed_options(options: list[str]) -> dict:
    """NAME=VALUE GenerationSettings overrides; values are read as JSON where they parse, else as strings."""
    parsed = {}
    for option in options:
        name, _, value = option.partition("=")
        try:
            parsed[name] = json.loads(value)
        except json.JSONDecodeError:
            parsed[name] = value
    return parsed


# ---------------------------------------------------------------- driver

def worker_command(args, impl: str, size: int, options: list[str]) -> list[str]:
    python = args.published_python if impl == "published" else args.ours_python
    command = [python, str(Path(__file__).resolve()), "--worker", impl, str(args.published), "--model", str(args.model),
               "--size", str(size), "--frames", str(args.frames), "--steps", str(args.steps), "--threads", str(args.threads),
               "--cfg", str(args.cfg), "--seed", str(args.seed), "--device", args.device, "--dtype", args.dtype]
    for option in options:
        command += ["--option", option]
    return command


def run_worker(args, impl: str, size: int, options: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(worker_command(args, impl, size, options), env=env, capture_output=True, text=True,
                          cwd=args.published if impl == "published" else REPO)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{impl} run at {size}px failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def label(impl: str, options: list[str]) -> str:
    return impl if not options else f"{impl} ({', '.join(options)})"


def phase_text(result: dict) -> str:
    seconds = result["seconds"]
    parts = [f"{name} {seconds[name]:.1f}" for name in ("denoise", "decode", "v-kps", "audio", "reference") if name in seconds]
    return ", ".join(parts)


def memory_text(result: dict) -> str:
    peaks = result["phase_peak_mib"]
    return ", ".join(f"{name} {peaks[name]:.0f}" for name in ("load", "reference", "audio", "v-kps", "denoise", "decode") if name in peaks)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("published", type=Path, help="folder of the published V-Express checkout (outside this repository)")
    parser.add_argument("--published-python", default=sys.executable, help="interpreter with the published code's packages")
    parser.add_argument("--ours-python", default=sys.executable, help="interpreter with this project's packages")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder in the published layout")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--frames", type=int, default=84, help="video length (84 = 4 windows of 24 overlapping by 4)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cfg", type=float, default=3.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (both implementations run there)")
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per implementation and size (median reported)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                        help="also run ours with these GenerationSettings overrides, e.g. window_batch=4")
    parser.add_argument("--worker", choices=("published", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--option", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.published = args.published.resolve()
    args.model = args.model.resolve()
    args.fps, args.context_frames, args.context_overlap, args.num_pad = 30.0, 24, 4, 2
    args.reference_weight, args.audio_weight = 0.95, 3.0
    if args.worker == "published":
        return run_published(args)
    if args.worker == "ours":
        return run_ours(args)
    if not (args.published / "pipelines" / "v_express_pipeline.py").is_file():
        parser.error(f"{args.published} is not a published V-Express checkout (no pipelines/v_express_pipeline.py)")

    runs = [("published", [])] + [("ours", [])] + [("ours", variant.split(",")) for variant in args.variant]
    print(f"{args.frames} frames, {args.steps} steps, DDIM, cfg {args.cfg}, {args.dtype} on {args.device}, {args.threads} threads, "
          f"model {args.model}", flush=True)
    rows = []
    for size in args.sizes:
        results: dict[str, list[dict]] = {label(impl, options): [] for impl, options in runs}
        for repeat in range(args.repeats):
            for impl, options in runs:
                result = run_worker(args, impl, size, options)
                results[label(impl, options)].append(result)
                print(f"  {size}px run {repeat + 1}: {label(impl, options)}: generation {result['seconds']['generation']:.1f} s "
                      f"(CPU {result['cpu_seconds']['generation']:.1f} s; {phase_text(result)}), "
                      f"peak RSS {result['peak_rss_mib']:.0f} MiB ({memory_text(result)})", flush=True)
        rows.append((size, results))

    print()
    print("| size, steps | implementation | generation s | stages s | peak RSS MiB | peak by phase MiB | peak VRAM MiB | speed vs published | RSS vs published |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, results in rows:
        def median(name: str, key) -> float:
            return statistics.median(key(result) for result in results[name])

        base_time = median("published", lambda r: r["seconds"]["generation"])
        base_rss = median("published", lambda r: r["peak_rss_mib"])
        for name, runs_of in results.items():
            seconds = median(name, lambda r: r["seconds"]["generation"])
            rss = median(name, lambda r: r["peak_rss_mib"])
            middle = sorted(runs_of, key=lambda r: r["seconds"]["generation"])[len(runs_of) // 2]
            vram = f"{middle['peak_vram_mib']:.0f}" if "peak_vram_mib" in middle else "-"
            print(f"| {size}x{size}, {args.steps} | {name} | {seconds:.1f} | {phase_text(middle)} | {rss:.0f} | "
                  f"{memory_text(middle)} | {vram} | {base_time / seconds:.2f}x | {rss / base_rss:.2f} |")


if __name__ == "__main__":
    main()
