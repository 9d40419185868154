"""`python training toy figures`: the pictures of the toy model, drawn with OpenCV.

talking picture   ground-truth frames above the toy model's generated frames for a held-out identity
                  with held-out babble and a moving head, and the two mouth-opening curves below;
training picture  per stage, the loss and the checkpoint figures (lip-sync r, PSNR gain over the
                  reference copy, centroid error) from the run's TensorBoard logs.
dub picture       a toy dub (dub.py) before and after, pasted with each region: the original video, the
                  lower-face and head pastes, and the truth speaking the new babble.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from vexpress_core.checkpoint import load_models
from vexpress_core.pipeline import GenerationSettings

from .evaluate import Case, case_scores
from .metrics import mouth_opening_measure

WHITE, BLACK, GREY = (255, 255, 255), (30, 30, 30), (170, 170, 170)
TRUTH_COLOUR, GENERATED_COLOUR = (40, 120, 220), (220, 80, 40)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _label(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45, colour=BLACK) -> None:
    cv2.putText(canvas, text, origin, FONT, scale, colour, 1, cv2.LINE_AA)


def plot(canvas: np.ndarray, box: tuple[int, int, int, int], series: list[tuple[np.ndarray, np.ndarray, tuple]],
         title: str, x_label: str, marks: list[float] = ()) -> None:
    """Line plots of (x, y, colour) series in box (x0, y0, x1, y1) of an RGB canvas, with a frame and ticks."""
    x0, y0, x1, y1 = box
    cv2.rectangle(canvas, (x0, y0), (x1, y1), GREY, 1)
    xs = np.concatenate([s[0] for s in series])
    ys = np.concatenate([s[1] for s in series])
    x_lo, x_hi = float(xs.min()), float(max(xs.max(), xs.min() + 1e-6))
    y_lo, y_hi = float(ys.min()), float(ys.max())
    pad = 0.08 * max(y_hi - y_lo, 1e-6)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_pixels(x, y):
        return (x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0), y1 - (y - y_lo) / (y_hi - y_lo) * (y1 - y0))

    for mark in marks:
        px, _ = to_pixels(mark, y_lo)
        cv2.line(canvas, (int(px), y0), (int(px), y1), GREY, 1)
    for x, y, colour in series:
        points = np.stack(to_pixels(np.asarray(x, float), np.asarray(y, float)), axis=-1)
        cv2.polylines(canvas, [np.round(points * 4).astype(np.int32)], False, colour, 2, cv2.LINE_AA, 2)
    _label(canvas, title, (x0 + 4, y0 - 6))
    _label(canvas, f"{y_hi:.3g}", (x1 + 4, y0 + 10), 0.35, GREY)
    _label(canvas, f"{y_lo:.3g}", (x1 + 4, y1), 0.35, GREY)
    _label(canvas, f"{x_label} {x_lo:.0f}-{x_hi:.0f}", (x0, y1 + 14), 0.35, GREY)


def talking_picture(models_dir: Path, out: Path, columns: int = 12, scale: int = 2) -> Path:
    case = Case("held-out id 1001, held-out babble, moving", 1001, "babble:1001", 1001, 6.0)
    score, generated, clip = case_scores(load_models(models_dir), case, GenerationSettings())
    picks = np.linspace(0, len(generated) - 1, columns).round().astype(int)
    side = clip.frames.shape[1] * scale

    def strip(frames):
        return np.concatenate([cv2.resize(frames[i], (side, side), interpolation=cv2.INTER_NEAREST) for i in picks], axis=1)

    width = side * columns
    canvas = np.full((2 * side + 250, width + 60, 3), 255, np.uint8)
    canvas[24:24 + side, :width] = strip(clip.frames)
    canvas[48 + side:48 + 2 * side, :width] = strip(generated)
    _label(canvas, "ground truth (toy world)", (4, 17))
    _label(canvas, f"toy V-Express, generated from ref.png + speech + V-Kps  (lip-sync r {score.lip_sync_r:.2f}, "
                   f"PSNR {score.psnr_db:.1f} dB, centroid error {score.centroid_px:.2f} px)", (4, 41 + side))
    frames = np.arange(len(generated)) / clip.fps
    truth = mouth_opening_measure(clip.frames[:len(generated)], clip.points[:len(generated)])
    made = mouth_opening_measure(generated, clip.points[:len(generated)])
    plot(canvas, (10, 2 * side + 90, width - 10, 2 * side + 220),
         [(frames, truth, TRUTH_COLOUR), (frames, made, GENERATED_COLOUR)],
         "mouth opening: ground truth (blue), generated (orange)", "seconds", marks=list(picks / clip.fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return out


def dub_picture(models_dir: Path, out: Path, columns: int = 6, side: int = 160) -> Path:
    import tempfile

    from .dub import REGIONS, SPEECH_A, SPEECH_B, toy_dub

    with tempfile.TemporaryDirectory() as work:
        dub = toy_dub(Path(work), models_dir)
    rows = [(f"before: the video, speaking babble {SPEECH_A}", dub.originals)]
    rows += [(f"after, --paste-region {region}: re-voiced with babble {SPEECH_B}", dub.pasted[region]) for region in REGIONS]
    rows.append((f"truth: the same head speaking babble {SPEECH_B}", dub.truth.frames))
    picks = np.linspace(0, len(dub.originals) - 1, columns + 2).round().astype(int)[1:-1]
    band = side + 26
    canvas = np.full((band * len(rows), side * columns, 3), 255, np.uint8)
    for index, (title, frames) in enumerate(rows):
        top = index * band
        _label(canvas, title, (4, top + 18))
        canvas[top + 26:top + band] = np.concatenate(
            [cv2.resize(frames[i], (side, side), interpolation=cv2.INTER_AREA) for i in picks], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return out


def scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of the TensorBoard event files under log_dir: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: tuple(np.array(v) for v in zip(*sorted(values))) for tag, values in found.items()}


def smoothed(values: np.ndarray, window: int = 25) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(np.pad(values, (window // 2, window - 1 - window // 2), mode="edge"), kernel, mode="valid")


def training_picture(runs: Path, out: Path) -> Path:
    """Loss per stage (one after the other on a global step axis) and the checkpoint figures."""
    offsets, loss_series, offset = [], [], 0
    for stage, colour in zip((1, 2, 3), ((60, 60, 200), (200, 120, 40), (40, 160, 60))):
        stage_scalars = scalars(runs / f"stage_{stage}" / "logs")
        if "loss" not in stage_scalars:
            continue
        steps, values = stage_scalars["loss"]
        loss_series.append((steps + offset, smoothed(values), colour))
        offset += int(steps.max())
        offsets.append(offset)
    evaluation = scalars(runs / "logs" / "eval")
    canvas = np.full((660, 760, 3), 255, np.uint8)
    plot(canvas, (20, 30, 700, 170), loss_series, "training loss per stage (1 blue, 2 orange, 3 green; smoothed)",
         "step", marks=offsets[:-1])
    panels = (("eval/lip_sync_r", "lip-sync r (held-out id, babble, moving head)", 230),
              ("eval/psnr_gain_db", "PSNR gain over the reference copy, dB", 380),
              ("eval/centroid_px", "face centroid error, px", 530))
    for tag, title, top in panels:
        if tag in evaluation:
            steps, values = evaluation[tag]
            plot(canvas, (20, top, 700, top + 100), [(steps, values, (200, 60, 60))], title, "step", marks=offsets[:-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python training toy figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="the toy model folder (for the talking picture)")
    parser.add_argument("--runs", type=Path, help="a `toy train` run's OUT/work/runs (for the training picture)")
    parser.add_argument("--talking-out", type=Path, default=Path("docs/images/toy_talking.png"))
    parser.add_argument("--training-out", type=Path, default=Path("training/toy_training.png"))
    parser.add_argument("--dub", action="store_true", help="draw the dub picture (with --models)")
    parser.add_argument("--dub-out", type=Path, default=Path("docs/images/toy_dub_regions.png"))
    args = parser.parse_args(argv)
    if args.dub and not args.models:
        parser.error("--dub needs --models")
    if args.models and args.dub:
        print(f"wrote {dub_picture(args.models, args.dub_out)}")
    elif args.models:
        print(f"wrote {talking_picture(args.models, args.talking_out)}")
    if args.runs:
        print(f"wrote {training_picture(args.runs, args.training_out)}")
    return 0
