"""Over-fit the tiny model to one real clip at 64x64 on the CPU, and print the PSNR of generated
frames against the clip's own frames before and after training.

    python training/examples/overfit_one_clip.py --work /tmp/overfit [--sample short_case_10] [--steps 400]

What it does, in order:
 1. makes the tiny random model directory (`vexpress_core.tiny`) and cuts the first `--frames`
    frames of `SAMPLES/<sample>/gt.mp4` to 64x64 with its soundtrack;
 2. prepares that one clip with `training prepare` (detection, landmarks, wav2vec2 vectors);
 3. fits the tiny VAE to the clip's frames (a random VAE cannot decode any picture, which would cap
    every PSNR near that of noise; the real model ships a trained VAE) and prints its
    reconstruction PSNR, the ceiling for generation;
 4. generates the clip from its first frame, its audio and its own landmarks with the random
    V-Express networks (PSNR "before"), trains stage 3 (everything) on the one clip, and generates
    again with the last checkpoint (PSNR "after").
This is a demonstration, not a test: a few minutes on two CPU cores.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def training_package():
    """`vexpress_training` as `python training ...` registers it when the pack is not installed."""
    spec = importlib.util.spec_from_file_location("vexpress_training_entry", REPO / "training" / "__main__.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    return importlib.import_module(entry.training_package())


import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from vexpress_core.audio import SAMPLE_RATE, load_audio  # noqa: E402
from vexpress_core.checkpoint import load_models  # noqa: E402
from vexpress_core.keypoints import KeypointTrack  # noqa: E402
from vexpress_core.pipeline import GenerationSettings, encode_speech, generate, prepare_reference  # noqa: E402
from vexpress_core.tiny import make_tiny_models  # noqa: E402
from vexpress_core.video import write_mp4  # noqa: E402

SIZE = 64


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (models, data, runs)")
    parser.add_argument("--samples", type=Path, default=REPO.parent / "shared" / "samples")
    parser.add_argument("--sample", default="short_case_10")
    parser.add_argument("--frames", type=int, default=48, help="clip length in frames")
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--sampling-steps", type=int, default=20)
    return parser.parse_args(argv)


def cut_clip(source: Path, out: Path, num_frames: int) -> tuple[Path, float]:
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = []
        for frame in container.decode(stream):
            frames.append(cv2.resize(frame.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA))
            if len(frames) == num_frames:
                break
    wave = load_audio(source)[: int(SAMPLE_RATE * len(frames) / fps)]
    return write_mp4(np.stack(frames), out, fps, audio=(wave, SAMPLE_RATE)), fps


def psnr(generated: np.ndarray, target: np.ndarray) -> float:
    error = np.mean((generated.astype(np.float64) - target.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / error))


def fit_vae(vae_dir: Path, frames: np.ndarray, steps: int) -> float:
    """Train the tiny VAE as an autoencoder on the clip's frames; return its reconstruction PSNR."""
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).train()
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = pixels[torch.randint(len(pixels), (8,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(posterior.mean).sample, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval().save_pretrained(vae_dir)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    return psnr(((decoded.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy(), frames)


def generated_psnr(models_dir: Path, weights: Path | None, frames: np.ndarray, landmarks: np.ndarray,
                   waveform: np.ndarray, fps: float, steps: int) -> float:
    """PSNR of the clip generated from its first frame, audio and landmarks, against its frames."""
    models = load_models(models_dir, weights_dir=weights)
    speech = encode_speech(models, waveform, fps)
    count = speech.num_frames
    track = KeypointTrack(landmarks[:count, :3].astype(np.float32), (SIZE, SIZE), fps)
    settings = GenerationSettings(width=SIZE, height=SIZE, fps=fps, steps=steps, deflicker=False)
    reference = prepare_reference(models, frames[0], SIZE, SIZE)
    generation = generate(models, reference, speech, track, settings)
    return psnr(generation.frames, frames[:count])


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    training_package()
    from vexpress_training.clipdata import CLIPS, read_frames, read_labels, read_manifest
    from vexpress_training.prepare import main as prepare
    from vexpress_training.train import main as train

    models = make_tiny_models(args.work / "model_ckpts")
    video, fps = cut_clip(args.samples / args.sample / "gt.mp4", args.work / "videos" / f"{args.sample}.mp4", args.frames)
    data = args.work / "data"
    if prepare(["--videos", str(video.parent), "--out", str(data), "--models", str(models),
                "--resolution", str(SIZE), "--device", "cpu"]) != 0:
        raise SystemExit("preparing the clip failed; see the messages above")
    _, (clip,) = read_manifest(data)
    clip_dir = data / CLIPS / clip.id
    labels = read_labels(clip_dir)
    frames = read_frames(clip_dir, labels.frame_offsets, np.arange(clip.num_frames))
    # The clip's own samples: exactly its frames' duration (the mp4's audio track runs a little longer).
    waveform = load_audio(video)[: math.ceil(clip.num_frames / clip.fps * SAMPLE_RATE)]

    ceiling = fit_vae(models / "sd-vae-ft-mse", frames, args.vae_steps)
    before = generated_psnr(models, None, frames, labels.landmarks, waveform, clip.fps, args.sampling_steps)
    result = train(["--config", str(REPO / "training" / "configs" / "stage_3.yaml"), "--data", str(data),
                    "--models", str(models), "--output", str(args.work / "run"), "--init", str(models / "v-express"),
                    "--max-steps", str(args.steps), "--set", "resolution=64", "num_workers=0", "mixed_precision=no",
                    "report_to=none", "use_8bit_adam=false", "reference_margin=8", f"learning_rate={args.learning_rate}",
                    f"checkpointing_steps={args.steps}"])
    after = generated_psnr(models, result.checkpoint, frames, labels.landmarks, waveform, clip.fps, args.sampling_steps)
    losses = list(result.losses.values())
    tenth = max(1, len(losses) // 10)
    print(f"clip: {args.sample}, {clip.num_frames} frames at {clip.fps:.2f} fps, {SIZE}x{SIZE}; "
          f"{args.steps} steps of stage 3 at learning rate {args.learning_rate}")
    print(f"training loss: first {tenth} steps {np.mean(losses[:tenth]):.4f}, last {tenth} steps {np.mean(losses[-tenth:]):.4f}")
    print(f"PSNR of the fitted VAE's reconstruction (the ceiling): {ceiling:.2f} dB")
    print(f"PSNR of generated frames vs the clip: before {before:.2f} dB, after {after:.2f} dB")


if __name__ == "__main__":
    main()
