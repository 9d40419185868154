"""Speed options and presets against the published default, timed and scored on the toy V-Express.

Every row is one option changed from the published default (DDIM, 25 steps, guidance on every step),
or a preset; all rows run in the same process, interleaved within each repeat, on the same cases:
held-out toy identities (never trained on) speaking held-out babble and real speech, generated from
their reference picture, speech and true head track (training/toy/evaluate.py `case_scores`), and
scored against the toy world's ground truth (PSNR, lip-sync r, face centroid error).

    python benchmarks/presets.py                           # the toy model, held-out cases, 3 repeats
    python benchmarks/presets.py --models DIR --max-cases 1 --seconds 0.5 --steps 2 --repeats 1   # a quick check

`s/clip` is the Sampler's work per clip (pipeline.denoise and pipeline.decoded_generation: denoising,
decoding, deflicker: what the options change); `total s` adds the reference and speech encodings every run of a clip also needs
(in ComfyUI those are separate nodes, not re-run when only the sampler changes). The medians over
repeats are reported. The script prints a Markdown table and writes a time-against-PSNR picture
(one point per row, the presets marked) with OpenCV. `--steps` replaces every row's step count and
is only for checking that the script runs.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vexpress_core import pipeline  # noqa: E402
from vexpress_core.checkpoint import load_models  # noqa: E402
from vexpress_core.demo import TOY_MODEL_DIR, TOY_SIZE  # noqa: E402
from vexpress_core.pipeline import GenerationSettings  # noqa: E402
from vexpress_core.presets import DEFAULT_PRESET, PRESETS, preset_settings  # noqa: E402

SAMPLER = ("denoise", "decoded_generation")  # what the speed options change
TIMED = ("prepare_reference", "encode_speech", *SAMPLER)


@dataclass(frozen=True)
class Row:
    label: str
    changes: dict = field(default_factory=dict)  # GenerationSettings fields over the preset's
    preset: str = DEFAULT_PRESET
    weight_storage: str = "dtype"

    @property
    def is_preset(self) -> bool:
        return not self.changes and self.weight_storage == "dtype"

    def settings(self, steps: int | None) -> GenerationSettings:
        settings = preset_settings(self.preset, GenerationSettings(), **self.changes)
        return settings if steps is None else replace(settings, steps=steps)


ROWS = (
    Row("quality = published: DDIM 25, cfg always"),
    Row("DDIM 12 steps", dict(steps=12)),
    Row("DPM-Solver++ 2M, 12 steps", dict(scheduler="dpmpp", steps=12)),
    Row("UniPC, 12 steps", dict(scheduler="unipc", steps=12)),
    Row("UniPC, 8 steps", dict(scheduler="unipc", steps=8)),
    Row("guidance on the first 50% of steps", dict(guidance_end=0.5)),
    Row("guidance on the first 30% of steps", dict(guidance_end=0.3)),
    Row("deep cache, every 2 steps", dict(cache_interval=2)),
    Row("deep cache, every 3 steps", dict(cache_interval=3)),
    Row("deep cache, every 4 steps or change > 0.1", dict(cache_interval=4, cache_threshold=0.1)),
    Row("fp8 (e4m3) weights", weight_storage="fp8_e4m3"),
    *(Row(f"{name} preset", preset=name) for name in PRESETS.names() if name != DEFAULT_PRESET),
)


def toy_modules():
    """training/toy's evaluate and figures modules (the training folder imported as vexpress_training)."""
    spec = importlib.util.spec_from_file_location("_training_launcher", REPO / "training" / "__main__.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    package = launcher.training_package()
    return importlib.import_module(f"{package}.toy.evaluate"), importlib.import_module(f"{package}.toy.figures")


@contextlib.contextmanager
def time_spent() -> Iterator[dict[str, float]]:
    """Seconds spent in the pipeline functions of TIMED while the block runs (the orchestration
    calls them through the module, so wrapping the module's names sees every call)."""
    spent = dict.fromkeys(TIMED, 0.0)
    originals = {name: getattr(pipeline, name) for name in TIMED}

    def timed(name):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return call

    for name in TIMED:
        setattr(pipeline, name, timed(name))
    try:
        yield spent
    finally:
        for name, function in originals.items():
            setattr(pipeline, name, function)


@dataclass
class Result:
    row: Row
    sampler_seconds: list[float] = field(default_factory=list)  # per clip, every repeat
    total_seconds: list[float] = field(default_factory=list)
    scores: list = field(default_factory=list)  # per case, first repeat

    def mean(self, name: str) -> float:
        return float(np.mean([getattr(score, name) for score in self.scores]))

    @property
    def seconds(self) -> float:
        return statistics.median(self.sampler_seconds)


def chosen_cases(evaluate, which: str, max_cases: int | None, seconds: float | None) -> list:
    cases = evaluate.default_cases()
    if which != "all":
        cases = [case for case in cases if case.identity >= 1000]  # held-out identities
    if which == "real-speech":
        cases = [case for case in cases if not case.speech.startswith("babble:")]
    cases = cases[:max_cases] if max_cases else cases
    return [replace(case, seconds=seconds) for case in cases] if seconds else cases


def run(models_dir: Path, cases: list, rows: tuple[Row, ...], evaluate, repeats: int, steps: int | None,
        device: str) -> list[Result]:
    loaded = {}
    results = [Result(row) for row in rows]
    for repeat in range(repeats):
        for result in results:
            row = result.row
            if row.weight_storage not in loaded:
                loaded[row.weight_storage] = load_models(models_dir, device=device, weight_storage=row.weight_storage)
            for case in cases:
                with time_spent() as spent, contextlib.redirect_stderr(io.StringIO()):
                    score = evaluate.case_scores(loaded[row.weight_storage], case, row.settings(steps), TOY_SIZE)[0]
                result.sampler_seconds.append(sum(spent[name] for name in SAMPLER))
                result.total_seconds.append(sum(spent.values()))
                if repeat == 0:
                    result.scores.append(score)
            print(f"  repeat {repeat + 1}: {row.label}: {result.sampler_seconds[-1]:.2f} s/clip, "
                  f"PSNR {result.mean('psnr_db'):.2f} dB", flush=True)
    return results


def table(results: list[Result]) -> str:
    base = results[0]
    lines = ["| option | s/clip | total s | speed-up vs default | PSNR dB | ΔPSNR dB | lip-sync r | centroid px |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        name = f"**{result.row.label}**" if result.row.is_preset else result.row.label
        lines.append(f"| {name} | {result.seconds:.2f} | {statistics.median(result.total_seconds):.2f} | "
                     f"{base.seconds / result.seconds:.2f}x | {result.mean('psnr_db'):.2f} | "
                     f"{result.mean('psnr_db') - base.mean('psnr_db'):+.2f} | {result.mean('lip_sync_r'):.3f} | "
                     f"{result.mean('centroid_px'):.2f} |")
    return "\n".join(lines)


def picture(results: list[Result], out: Path, figures) -> Path:
    """PSNR against seconds per clip: a point per row, presets as filled squares with their names."""
    width, height, margin = 1040, 600, 70
    canvas = np.full((height, width, 3), 255, np.uint8)
    seconds = np.array([result.seconds for result in results])
    psnr = np.array([result.mean("psnr_db") for result in results])
    x_lo, x_hi = 0.0, float(seconds.max()) * 1.08
    pad = max(float(psnr.max() - psnr.min()), 0.5) * 0.15
    y_lo, y_hi = float(psnr.min()) - pad, float(psnr.max()) + pad
    x0, y0, x1, y1 = margin, 40, width - 330, height - margin

    def at(x: float, y: float) -> tuple[int, int]:
        return (int(round(x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0))), int(round(y1 - (y - y_lo) / (y_hi - y_lo) * (y1 - y0))))

    cv2.rectangle(canvas, (x0, y0), (x1, y1), figures.GREY, 1)
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = x_lo + fraction * (x_hi - x_lo)
        figures._label(canvas, f"{x:.1f}", (at(x, y_lo)[0] - 10, y1 + 16), 0.4, figures.GREY)
        y = y_lo + fraction * (y_hi - y_lo)
        figures._label(canvas, f"{y:.2f}", (x0 - 50, at(x_lo, y)[1] + 4), 0.4, figures.GREY)
    figures._label(canvas, "seconds per clip (sampler: denoise + decode)", (x0 + 140, height - 24))
    figures._label(canvas, "PSNR dB vs ground truth (held-out toy identities)", (x0, y0 - 14))
    for index, result in enumerate(results):
        point = at(result.seconds, result.mean("psnr_db"))
        if result.row.is_preset:
            cv2.rectangle(canvas, (point[0] - 6, point[1] - 6), (point[0] + 6, point[1] + 6), figures.GENERATED_COLOUR, -1)
            figures._label(canvas, result.row.preset, (point[0] + 9, point[1] - 8), 0.5, figures.GENERATED_COLOUR)
        else:
            cv2.circle(canvas, point, 5, figures.TRUTH_COLOUR, -1, cv2.LINE_AA)
            figures._label(canvas, str(index), (point[0] + 7, point[1] + 14), 0.4, figures.TRUTH_COLOUR)
        figures._label(canvas, f"{index}: {result.row.label}", (x1 + 12, y0 + 14 + 18 * index), 0.36,
                       figures.GENERATED_COLOUR if result.row.is_preset else figures.BLACK)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=TOY_MODEL_DIR, help="model folder (default: the bundled toy model)")
    parser.add_argument("--cases", choices=("held-out", "real-speech", "all"), default="held-out",
                        help="held-out identities (default), only those with real speech, or also the training identity")
    parser.add_argument("--max-cases", type=int, help="use only the first N cases")
    parser.add_argument("--seconds", type=float, help="cut every case to this many seconds")
    parser.add_argument("--steps", type=int, help="replace every row's step count (checking the script only)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row and case (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--picture", type=Path, default=REPO / "docs" / "images" / "speed_presets.png")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    evaluate, figures = toy_modules()
    cases = chosen_cases(evaluate, args.cases, args.max_cases, args.seconds)
    if not cases:
        parser.error(f"no cases for --cases {args.cases} (the real-speech case needs ../shared/samples)")
    print(f"models {args.models}, device {args.device}, {torch.get_num_threads()} threads, {args.repeats} repeats; cases: "
          + "; ".join(f"{case.name} ({case.seconds:g} s)" for case in cases), flush=True)
    results = run(args.models, cases, ROWS, evaluate, args.repeats, args.steps, args.device)
    print()
    print(table(results))
    print(f"\nwrote {picture(results, args.picture, figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
