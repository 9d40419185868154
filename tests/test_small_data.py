"""Training on a dataset smaller than one global batch: one prepared clip trains with the stage
configs' batch sizes, every draw of a clip is a different window, and resume stays exact."""
from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vexpress_core.audio import SAMPLE_RATE, load_audio
from vexpress_core.checkpoint import WEIGHT_NAMES
from vexpress_core.video import write_mp4
from vexpress_training import prepare as prepare_module
from vexpress_training.config import load_config
from vexpress_training.dataset import EpochSampler, TalkingFaceClips
from vexpress_training.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
SIZE = 64
CLIP_FRAMES = 24
TINY = ["resolution=64", "num_workers=0", "mixed_precision=no", "reference_margin=8", "report_to=none"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_one_clip_fills_every_global_batch_with_distinct_draws(caplog):
    with caplog.at_level(logging.WARNING, logger="vexpress_training.dataset"):
        ranks = [EpochSampler(1, 4, seed=3, num_replicas=2, rank=rank) for rank in (0, 1)]
    assert "only 1 usable clip(s) for a global batch of 8" in caplog.text
    keys = [list(sampler) for sampler in ranks]
    assert [len(k) for k in keys] == [4, 4] and ranks[0].batches_per_epoch() == 1
    assert {index for part in keys for index, _, _ in part} == {0}
    assert sorted(draw for part in keys for _, _, draw in part) == list(range(8))
    ranks[0].set_epoch(5)
    assert {epoch for _, epoch, _ in ranks[0]} == {5}


def test_few_clips_appear_equally_often_per_epoch():
    sampler = EpochSampler(3, 7, seed=0)
    keys = list(sampler)
    counts = np.bincount([index for index, _, _ in keys], minlength=3)
    assert len(keys) == 7 and counts.max() - counts.min() <= 1
    # Each (clip, draw) pair once: every key asks for a different window.
    assert len({(index, draw) for index, _, draw in keys}) == 7


def test_enough_clips_keep_the_one_draw_per_clip_order():
    keys = list(EpochSampler(10, 2, seed=5))
    assert len(keys) == 10 and {draw for _, _, draw in keys} == {0}
    generator = torch.Generator().manual_seed(5)
    assert [index for index, _, _ in keys] == torch.randperm(10, generator=generator).tolist()


def cut_clip(source: Path, out: Path) -> Path:
    """The first CLIP_FRAMES frames of a sample video at SIZE x SIZE, with its soundtrack."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = []
        for frame in container.decode(stream):
            frames.append(cv2.resize(frame.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA))
            if len(frames) == CLIP_FRAMES:
                break
    wave = load_audio(source)[: int(SAMPLE_RATE * CLIP_FRAMES / fps)]
    return write_mp4(np.stack(frames), out, fps, audio=(wave, SAMPLE_RATE))


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory, samples_dir, tiny_model_dir) -> Path:
    work = tmp_path_factory.mktemp("one-clip")
    (work / "videos").mkdir()
    cut_clip(samples_dir / "short_case_10" / "gt.mp4", work / "videos" / "clip.mp4")
    code = prepare_module.main(["--videos", str(work / "videos"), "--out", str(work / "data"), "--models",
                                str(tiny_model_dir), "--resolution", str(SIZE), "--device", "cpu"])
    assert code == 0
    return work / "data"


def test_draws_of_one_clip_are_different_windows(one_clip):
    config = load_config(CONFIGS / "stage_3.yaml", dict(item.split("=") for item in TINY + ["num_frames=2"]))
    dataset = TalkingFaceClips(one_clip, config, latent_factor=8)
    assert len(dataset) == 1
    first, second = dataset[(0, 0, 0)], dataset[(0, 0, 1)]
    assert not torch.equal(first["frame_ids"], second["frame_ids"]) or first["reference_id"] != second["reference_id"]
    # Draw 0 is the sample earlier versions drew for (clip, epoch).
    assert torch.equal(dataset[(0, 0)]["frames"], first["frames"])


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value for name in WEIGHT_NAMES
            for key, value in load_file(folder / f"{name}.safetensors").items()}


def test_one_clip_trains_with_the_stage_batch_size_and_resumes_exactly(one_clip, tiny_model_dir, tmp_path):
    """stage_1.yaml's batch of 8 from one clip; stop after step 1, resume to step 2."""
    assert load_config(CONFIGS / "stage_1.yaml").batch_size > 1

    def run(output: Path, *extra: str):
        return train_main(["--config", str(CONFIGS / "stage_1.yaml"), "--data", str(one_clip), "--models",
                           str(tiny_model_dir), "--output", str(output), *extra,
                           "--set", *TINY, "checkpointing_steps=1"])

    whole = run(tmp_path / "whole", "--max-steps", "2")
    first = run(tmp_path / "parts", "--max-steps", "1")
    second = run(tmp_path / "parts", "--resume", "--max-steps", "2")
    assert sorted(whole.losses) == [1, 2] and all(np.isfinite(list(whole.losses.values())))
    assert {**first.losses, **second.losses} == whole.losses
    final, resumed = weights_of(tmp_path / "whole" / "checkpoint-2"), weights_of(tmp_path / "parts" / "checkpoint-2")
    assert all(torch.equal(final[key], resumed[key]) for key in final)
