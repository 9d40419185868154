"""`python training toy eval --models DIR`: the toy V-Express's quality figures (see metrics.py) on
three cases, for the model and for untrained (random) networks of the same sizes.

Each case renders its ground truth, then generates it with the pack's own pipeline as a user would:
the reference picture (keypoints found by the default face detector), the speech, and the true
V-Kps track as the driving track (no_retarget), at the published defaults (25 DDIM steps, cfg 3.5,
reference/audio weights 0.95/3.0).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vexpress_core.audio import load_audio
from vexpress_core.checkpoint import VExpressModels, load_models
from vexpress_core.detectors import make_detector
from vexpress_core.keypoints import KeypointTrack
from vexpress_core.orchestration import framed_reference, frames_phase, reference_phase, speech_phase, track_phase, using_models
from vexpress_core.pipeline import GenerationSettings
from vexpress_core.tiny import randomised_zero_outputs

from .clips import Clip, render_clip
from .metrics import Scores, scores
from .speech import babble

REPO = Path(__file__).resolve().parents[2]
REAL_SPEECH = REPO.parent / "shared" / "samples" / "short_case_AOC" / "aud.mp3"


@dataclass(frozen=True)
class Case:
    name: str
    identity: int
    speech: str  # "babble:SEED" or a file path
    pose: int | None
    seconds: float

    def waveform(self) -> np.ndarray:
        kind, _, value = self.speech.partition(":")
        if kind == "babble":
            return babble(int(value), self.seconds)
        return load_audio(self.speech)[: int(self.seconds * 16000)]


def default_cases(real_speech: Path = REAL_SPEECH) -> list[Case]:
    cases = [Case("train id 3, train babble, still", 3, "babble:3", None, 6.0),
             Case("held-out id 1001, held-out babble, moving", 1001, "babble:1001", 1001, 6.0)]
    if real_speech.is_file():
        cases.append(Case(f"held-out id 1002, real speech ({real_speech.parent.name}), moving", 1002, str(real_speech), 1002, 4.5))
    return cases


def generate_case(models: VExpressModels, clip: Clip, settings: GenerationSettings, detector=None) -> np.ndarray:
    """The clip generated from its reference picture, speech and true track."""
    size = clip.frames.shape[1]
    settings = replace(settings, width=size, height=size, fps=clip.fps)
    using = using_models(models)
    framed = framed_reference(clip.reference, size, size, detector or make_detector("auto"))
    reference = reference_phase(using, framed)
    speech = speech_phase(using, clip.wave, clip.fps)
    driving = KeypointTrack(clip.points, (size, size), clip.fps)
    track = track_phase(reference, speech, driving, "no_retarget")
    return frames_phase(using, reference, speech, track, settings).frames


def case_scores(models: VExpressModels, case: Case, settings: GenerationSettings, size: int = 64) -> tuple[Scores, np.ndarray, Clip]:
    clip = render_clip(case.identity, case.waveform(), case.pose, size)
    generated = generate_case(models, clip, settings)
    detector_points = framed_reference(clip.reference, size, size, make_detector("auto")).keypoints
    return scores(generated, clip.frames, clip.points, clip.reference, detector_points, clip.opening, clip.fps), generated, clip


def untrained(models: VExpressModels, seed: int = 0) -> VExpressModels:
    """The same model with its four V-Express networks re-initialised at random (same architecture,
    every layer's own initialisation; zero-initialised outputs get small noise so conditions act)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    networks = {}
    for name in ("reference_net", "denoising_unet", "v_kps_guider", "audio_projection"):
        network = copy.deepcopy(getattr(models, name)).float()
        for module in network.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        randomised_zero_outputs(network, generator)
        networks[name] = network.to(models.dtype).eval().requires_grad_(False)
    return replace(models, **networks)


def table(rows: list[tuple[str, str, Scores]]) -> str:
    lines = ["| networks | case | lip-sync r | silence | centroid px | PSNR dB | ref-copy dB | gain dB |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {networks} | {case} | {score.row()} |" for networks, case, score in rows]
    return "\n".join(lines)


def evaluate(models_dir: Path, weights: Path | None = None, cases: list[Case] | None = None, steps: int = 25,
             include_untrained: bool = True) -> list[tuple[str, str, Scores]]:
    models = load_models(models_dir, weights)
    settings = GenerationSettings(steps=steps)
    rows = []
    candidates = [("trained", models)] + ([("untrained", untrained(models))] if include_untrained else [])
    for label, candidate in candidates:
        for case in cases or default_cases():
            with contextlib.redirect_stderr(io.StringIO()):
                score = case_scores(candidate, case, settings)[0]
            rows.append((label, case.name, score))
            print(f"| {label} | {case.name} | {score.row()} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python training toy eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="a model folder in the published layout (the toy model: "
                                                                    "vexpress_core/assets/toy_model)")
    parser.add_argument("--weights", type=Path, help="the five V-Express files from elsewhere (e.g. a checkpoint-STEP folder)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (the published default 25)")
    parser.add_argument("--no-untrained", action="store_true", help="skip the untrained-networks rows")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = evaluate(args.models, args.weights, steps=args.steps, include_untrained=not args.no_untrained)
    print()
    print(table(rows))
    return 0
