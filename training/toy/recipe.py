"""`python training toy train OUT`: the toy V-Express from nothing, as a user would train one.

1. render training clips (identities and babble seeds below 1000, still and moving heads) as mp4s;
2. fit the VAE to toy frames (or take one fitted by `python training toy vae`, --vae) and write the model
   folder's configs, VAE and frozen wav2vec2;
3. `training prepare` the clips (the pack's face detector finds the landmarks);
4. `training train` stages 1, 2 and 3 (conditional dropout as configured in training/configs/toy_stage_*.yaml);
5. write OUT/model: the published layout, the five networks as fp16 safetensors;
6. print the quality figures of `python training toy eval`.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from vexpress_core.video import write_mp4

from .clips import render_clip
from .model import fit_vae, toy_vae, write_model_base
from .speech import SAMPLE_RATE, babble

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Recipe:
    clips: int = 120
    clip_seconds: float = 4.0
    moving_share: float = 0.7
    vae_steps: int = 1000
    stage_steps: tuple[int, int, int] = (1000, 600, 500)
    seed: int = 0
    size: int = 64
    fps: float = 25.0


def model_vae(fitted: Path | None, recipe: Recipe, started: float) -> AutoencoderKL:
    """The VAE fitted by `toy vae` when given, else one fitted here in `recipe.vae_steps` steps."""
    if fitted is not None:
        vae = AutoencoderKL.from_pretrained(fitted)
        step_log(f"VAE from {fitted} (scaling factor {vae.config.scaling_factor:.4f})", started)
        return vae
    vae = toy_vae()
    figures = fit_vae(vae, recipe.vae_steps, recipe.size, recipe.seed, log=lambda m: step_log(m, started))
    step_log(f"VAE fitted: held-out reconstruction {figures['psnr']:.2f} dB, scaling factor {figures['scaling_factor']:.4f}", started)
    return vae


def render_training_videos(out: Path, recipe: Recipe) -> Path:
    """One mp4 with speech per training clip: identity i, babble seed i, a moving head for most."""
    rng = np.random.default_rng([recipe.seed, 31])
    out.mkdir(parents=True, exist_ok=True)
    for index in range(recipe.clips):
        target = out / f"toy_{index:04d}.mp4"
        if target.exists():
            continue
        wave = babble(index, recipe.clip_seconds)
        pose = int(rng.integers(0, 1 << 30)) if rng.uniform() < recipe.moving_share else None
        clip = render_clip(index, wave, pose, recipe.size, recipe.fps)
        write_mp4(clip.frames, target, recipe.fps, audio=(wave, SAMPLE_RATE))
    return out


def step_log(message: str, started: float) -> None:
    print(f"[toy train {time.time() - started:7.1f} s] {message}", flush=True)


def prepared_data(videos: Path, data: Path, models: Path, size: int) -> Path:
    from ..prepare import main as prepare_main

    if prepare_main(["--videos", str(videos), "--out", str(data), "--models", str(models), "--crop", "center",
                     "--resolution", str(size)]) != 0:
        raise RuntimeError(f"training prepare failed; see {data / 'report.json'}")
    return data


def trained_stage(stage: int, steps: int, data: Path, models: Path, runs: Path, init: Path | None, seed: int) -> Path:
    """Run `training train` for one stage; returns its last checkpoint folder."""
    from ..train import main as train_main

    argv = ["--config", str(CONFIGS / f"toy_stage_{stage}.yaml"), "--data", str(data), "--models", str(models),
            "--output", str(runs / f"stage_{stage}"), "--max-steps", str(steps), "--set", f"seed={seed + stage}"]
    if init is not None:
        argv += ["--init", str(init)]
    result = train_main(argv)
    return result.checkpoint


def packaged_model(base: Path, checkpoint: Path, out: Path) -> Path:
    """The published layout with the checkpoint's five networks as fp16 safetensors."""
    from vexpress_core.checkpoint import WEIGHT_NAMES, read_state_dict, weight_file
    from vexpress_core.saving import save_weights

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    states = {name: read_state_dict(weight_file(checkpoint, name)) for name in WEIGHT_NAMES}
    save_weights(states, out / "v-express", dtype=torch.float16)
    return out


def stage_checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = []
    for path in run.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def log_checkpoint_figures(run: Path, models: Path, offset: int, writer, started: float) -> int:
    """Quality figures of every checkpoint of one stage run, on TensorBoard at global step offset + step."""
    from .evaluate import Case, case_scores
    from vexpress_core.checkpoint import load_models
    from vexpress_core.pipeline import GenerationSettings

    case = Case("held-out id 1001, held-out babble, moving", 1001, "babble:1001", 1001, 3.0)
    last = 0
    for step, checkpoint in stage_checkpoints(run):
        score = case_scores(load_models(models, checkpoint), case, GenerationSettings())[0]
        for name, value in (("lip_sync_r", score.lip_sync_r), ("centroid_px", score.centroid_px),
                            ("psnr_db", score.psnr_db), ("psnr_gain_db", score.psnr_db - score.baseline_psnr_db)):
            writer.add_scalar(f"eval/{name}", value, offset + step)
        step_log(f"{run.name} step {step}: lip-sync r {score.lip_sync_r:.3f}, centroid {score.centroid_px:.2f} px, "
                 f"PSNR {score.psnr_db:.2f} dB ({score.psnr_db - score.baseline_psnr_db:+.2f} over the reference copy)", started)
        last = step
    return offset + last


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python training toy train", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder: work/ (data, runs, logs) and model/ (the toy V-Express)")
    parser.add_argument("--clips", type=int, default=Recipe.clips, help="training clips (identities 0..clips-1)")
    parser.add_argument("--vae", type=Path, help="a VAE fitted beforehand by `python training toy vae DIR` (default: "
                                                 "fit one here, --vae-steps steps at batch 16)")
    parser.add_argument("--vae-steps", type=int, default=Recipe.vae_steps, help="steps of the VAE fitted here (without --vae)")
    parser.add_argument("--stage-steps", type=int, nargs=3, default=Recipe.stage_steps, metavar=("S1", "S2", "S3"))
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    args = parser.parse_args(argv)
    if args.vae is not None and not (args.vae / "config.json").is_file():
        parser.error(f"--vae {args.vae}: expected a folder written by `python training toy vae` (no config.json there)")
    recipe = Recipe(clips=args.clips, vae_steps=args.vae_steps, stage_steps=tuple(args.stage_steps), seed=args.seed)
    from torch.utils.tensorboard import SummaryWriter

    started = time.time()
    work = args.out / "work"
    torch.manual_seed(recipe.seed)
    videos = render_training_videos(work / "videos", recipe)
    step_log(f"rendered {recipe.clips} clips of {recipe.clip_seconds:g} s", started)
    base = work / "base_model"
    if not (base / "sd-vae-ft-mse" / "config.json").is_file():
        write_model_base(base, model_vae(args.vae, recipe, started), recipe.seed)
    data = prepared_data(videos, work / "data", base, recipe.size)
    step_log("prepared the clips", started)
    writer = SummaryWriter(str(work / "runs" / "logs" / "eval"))
    checkpoint, offset = None, 0
    for stage, steps in zip((1, 2, 3), recipe.stage_steps):
        checkpoint = trained_stage(stage, steps, data, base, work / "runs", checkpoint, recipe.seed)
        step_log(f"stage {stage} done: {checkpoint}", started)
        offset = log_checkpoint_figures(work / "runs" / f"stage_{stage}", base, offset, writer, started)
    writer.close()
    model = packaged_model(base, checkpoint, args.out / "model")
    step_log(f"wrote {model}", started)
    from .evaluate import evaluate, table

    rows = evaluate(model)
    step_log("done", started)
    print(table(rows))
    return 0
