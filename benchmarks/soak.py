"""Soak run (not part of CI): a long generation through the command line, checked end to end.

    python benchmarks/soak.py                      # 3 minutes of speech against a 20-second run
    python benchmarks/soak.py --seconds 600 --work /tmp/soak

Both runs are `python -m vexpress_core generate` in a fresh process on the same inputs: the tiny
random-weight models (`make_tiny_models`), the packaged portrait, synthetic speech
(`audio.synthetic_speech`, the long run's first seconds for the short one), 64x64, one step, on the
CPU. Each run must finish and write an mp4 that decodes to the end with exactly int(seconds x fps)
frames and an audio track that ends within one frame of the last frame's end; the long run's peak
RSS (the process's high-water mark, model loading included) must stay within 5% of the short run's.
The figures are printed; the exit status is 1 when a check fails.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vexpress_core.audio import SAMPLE_RATE, synthetic_speech  # noqa: E402
from vexpress_core.demo import ASSETS_DIR  # noqa: E402

FPS = 30
RSS_TOLERANCE = 0.05


@dataclass(frozen=True)
class Run:
    seconds: float
    wall_seconds: float
    peak_rss_bytes: int
    frames_expected: int
    frames_decoded: int
    video_end: float  # end of the last frame, in seconds
    audio_end: float  # end of the decoded soundtrack, in seconds

    @property
    def sync_error(self) -> float:
        return abs(self.audio_end - self.video_end)


def write_speech(path: Path, seconds: float) -> Path:
    import soundfile

    soundfile.write(path, synthetic_speech(seconds), SAMPLE_RATE, subtype="FLOAT")
    return path


def generate_command(models: Path, speech: Path, out: Path, size: int) -> list[str]:
    return [sys.executable, "-m", "vexpress_core", "generate", "--models", str(models),
            "--reference", str(ASSETS_DIR / "portrait.png"), "--audio", str(speech),
            "--width", str(size), "--height", str(size), "--steps", "1", "--fps", str(FPS), "--device", "cpu",
            "--out", str(out)]


def run_and_measure(command: list[str], log: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one command in its own process; raises when it fails."""
    started = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {process.returncode}; see {log}")
    return time.perf_counter() - started, usage.ru_maxrss * 1024  # Linux reports KiB


def decoded_ends(path: Path) -> tuple[int, float, float]:
    """(frames decoded, end of the last frame, end of the soundtrack) of an mp4, in seconds, after
    decoding both streams to the end. The soundtrack's end is where its last packet ends: AAC pads
    its last frame of 1024 samples, and the file records how much of it to play."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames, video_end = 0, 0.0
        for frame in container.decode(video):
            frames += 1
            video_end = max(video_end, float((frame.pts + frame.duration) * video.time_base))
    with av.open(str(path)) as container:
        sound = container.streams.audio[0]
        for _ in container.decode(sound):
            pass
    with av.open(str(path)) as container:
        sound = container.streams.audio[0]
        audio_end = max(float((packet.pts + packet.duration) * sound.time_base)
                        for packet in container.demux(sound) if packet.size)
    return frames, video_end, audio_end


def soak(work: Path, seconds: float, size: int) -> Run:
    from vexpress_core.tiny import make_tiny_models

    models = work / "models"
    if not models.exists():
        make_tiny_models(models)
    speech = write_speech(work / f"speech_{seconds:g}s.wav", seconds)
    out = work / f"soak_{seconds:g}s.mp4"
    wall, peak = run_and_measure(generate_command(models, speech, out, size), work / f"soak_{seconds:g}s.log")
    frames, video_end, audio_end = decoded_ends(out)
    return Run(seconds, wall, peak, int(seconds * FPS), frames, video_end, audio_end)


def report(run: Run) -> str:
    return (f"{run.seconds:6.0f} s of speech: {run.wall_seconds:7.1f} s wall, peak RSS {run.peak_rss_bytes / 2**20:7.1f} MiB, "
            f"frames {run.frames_decoded}/{run.frames_expected}, last frame ends {run.video_end:.3f} s, "
            f"audio ends {run.audio_end:.3f} s (off by {run.sync_error * 1000:.1f} ms)")


def failures(run: Run) -> list[str]:
    problems = []
    if run.frames_decoded != run.frames_expected:
        problems.append(f"{run.seconds:g} s: {run.frames_decoded} frames decoded, {run.frames_expected} expected")
    if run.sync_error > 1 / FPS:
        problems.append(f"{run.seconds:g} s: audio and video ends are {run.sync_error * 1000:.1f} ms apart "
                        f"(more than one frame, {1000 / FPS:.1f} ms)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="speech length of the long run")
    parser.add_argument("--baseline-seconds", type=float, default=20.0, help="speech length of the short run")
    parser.add_argument("--size", type=int, default=64, help="output width and height")
    parser.add_argument("--work", type=Path, help="folder for the models, inputs, videos and logs (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        short = soak(work, args.baseline_seconds, args.size)
        print(report(short), flush=True)
        long = soak(work, args.seconds, args.size)
        print(report(long), flush=True)
    growth = long.peak_rss_bytes / short.peak_rss_bytes - 1
    print(f"peak RSS of the {long.seconds:g} s run vs the {short.seconds:g} s run: {growth:+.1%} "
          f"(allowed +{RSS_TOLERANCE:.0%})")
    problems = failures(short) + failures(long)
    if growth > RSS_TOLERANCE:
        problems.append(f"peak RSS grew by {growth:.1%} from {short.seconds:g} s to {long.seconds:g} s of speech")
    for problem in problems:
        print(f"FAILED: {problem}")
    print("soak: all checks passed" if not problems else f"soak: {len(problems)} check(s) failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
