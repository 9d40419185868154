"""`python training toy {render,vae,train,eval,figures}`: render a toy clip, fit the toy VAE, train the toy V-Express
from nothing, score a model, draw its figures."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vexpress_core.audio import SAMPLE_RATE, load_audio

from .speech import babble

DEFAULT_BABBLE_SECONDS = 6.0


def pose_seed(value: str) -> int | None:
    if value == "still":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pose takes 'still' or an integer seed, got {value!r}") from None


def positive(kind):
    def parse(value: str):
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {value}")
        return number
    return parse


def speech_of(args: argparse.Namespace):
    """16 kHz speech: the first --seconds of --audio (all of it by default), or seeded babble."""
    if args.audio is not None:
        wave = load_audio(args.audio)
        return wave[: int(args.seconds * SAMPLE_RATE)] if args.seconds else wave
    return babble(args.babble, args.seconds or DEFAULT_BABBLE_SECONDS)


def render_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python training toy render",
                                     description="Render one toy identity speaking: ref.png, gt.mp4, kps.npz, speech.wav.")
    parser.add_argument("--identity", type=int, required=True, help="identity seed (0-999 train, 1000 and above held out)")
    speech = parser.add_mutually_exclusive_group(required=True)
    speech.add_argument("--audio", type=Path, help="a speech file (any format ffmpeg/PyAV reads)")
    speech.add_argument("--babble", type=int, help="seed of synthetic babble")
    parser.add_argument("--seconds", type=positive(float), help=f"length: the first S seconds of --audio (default all), "
                                                                  f"or the babble's length (default {DEFAULT_BABBLE_SECONDS:g})")
    parser.add_argument("--pose", type=pose_seed, default=None, help="'still' (default) or the seed of a moving head")
    parser.add_argument("--size", type=positive(int), default=64, help="frame side in pixels (even, 64 and up)")
    parser.add_argument("--fps", type=positive(float), default=25.0, help="frames per second")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    if args.size % 2 or args.size < 64:
        parser.error(f"--size must be even and at least 64, got {args.size}")
    if args.audio is not None and not args.audio.is_file():
        parser.error(f"--audio {args.audio} is not a file")
    from .clips import render_clip, write_clip

    try:
        wave = speech_of(args)
    except (OSError, ValueError) as error:
        parser.error(f"--audio {args.audio}: {error}")
    if len(wave) < SAMPLE_RATE / args.fps:
        parser.error("the speech is shorter than one frame")
    paths = write_clip(render_clip(args.identity, wave, args.pose, args.size, args.fps), args.out)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def eval_command(argv: list[str]) -> int:
    from .evaluate import main as evaluate_main

    return evaluate_main(argv)


def train_command(argv: list[str]) -> int:
    from .recipe import main as recipe_main

    return recipe_main(argv)


def vae_command(argv: list[str]) -> int:
    from .model import vae_main

    return vae_main(argv)


def figures_command(argv: list[str]) -> int:
    from .figures import main as figures_main

    return figures_main(argv)


COMMANDS = {"render": render_command, "vae": vae_command, "train": train_command, "eval": eval_command, "figures": figures_command}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python training toy {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
