"""Training: data preparation, samples, the stage table, the trainer (every stage, resume,
two processes), and that a checkpoint loads and generates.

Everything runs on the tiny random models at 64x64 with 1-second clips cut from the shared samples.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file

from vexpress_core.audio import (
    SAMPLE_RATE,
    audio_windows,
    encode_audio,
    frame_count,
    load_audio,
    load_audio_encoder,
    padded_audio_sequence,
)
from vexpress_core.checkpoint import WEIGHT_NAMES, CheckpointError, load_models, read_config
from vexpress_core.keypoints import draw_kps_image
from vexpress_core.models import VExpressUNet, reference_features
from vexpress_core.video import read_video_frames, write_mp4
from vexpress_training import prepare as prepare_module
from vexpress_training.clipdata import DataError, read_labels, read_manifest
from vexpress_training.config import ConfigError, TrainConfig, load_config
from vexpress_training.dataset import EpochSampler, TalkingFaceClips, flipped_points, window_and_reference, WindowSpec
from vexpress_training.initialise import checkpoint_networks, initial_networks
from vexpress_training.objective import DropoutRates, condition_keep, min_snr_weights, offset_noise, training_loss, training_scheduler
from vexpress_training.stages import apply_stage, trainable_names
from vexpress_training.train import cli as train_cli
from vexpress_training.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
GOOD_CASES = ("short_case_10", "short_case_tys", "short_case_AOC")
SIZE = 64
CLIP_SECONDS = 1.0
BAD_CLIP_FRAMES = 8
MARGIN = 8  # reference margin small enough for 1-second clips
# Shared overrides of every trainer run in these tests: tiny sizes, fp32 on the CPU, no workers.
TINY = ["resolution=64", "batch_size=1", "num_workers=0", "mixed_precision=no", f"reference_margin={MARGIN}", "report_to=none"]


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here, and the module's training runs, on one torch thread."""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir) -> Path:
    return tiny_model_dir


def cut_clip(source: Path, out: Path, num_frames: int | None = None, with_audio: bool = True, frames_fn=None) -> Path:
    """The first CLIP_SECONDS (or num_frames) of a sample video at SIZE x SIZE, with its soundtrack."""
    with av.open(str(source)) as container:
        fps = container.streams.video[0].average_rate
    count = num_frames or int(round(float(fps) * CLIP_SECONDS))
    frames = np.stack([cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                       for _, frame in zip(range(count), read_video_frames(source))])
    if frames_fn is not None:
        frames = frames_fn(frames)
    wave = load_audio(source)[: int(SAMPLE_RATE * count / float(fps))]
    return write_mp4(frames, out, fps, audio=(wave, SAMPLE_RATE) if with_audio else None)


@pytest.fixture(scope="module")
def videos(work, samples_dir) -> Path:
    folder = work / "videos"
    (folder / "bad").mkdir(parents=True)
    for case in GOOD_CASES:
        cut_clip(samples_dir / case / "gt.mp4", folder / f"{case}.mp4")
    source = samples_dir / GOOD_CASES[0] / "gt.mp4"
    cut_clip(source, folder / "bad" / "no_audio.mp4", BAD_CLIP_FRAMES, with_audio=False)
    cut_clip(source, folder / "bad" / "no_face.mp4", BAD_CLIP_FRAMES, frames_fn=lambda f: np.full_like(f, 128))
    cut_clip(source, folder / "bad" / "two_faces.mp4", BAD_CLIP_FRAMES, frames_fn=lambda f: np.concatenate([f, f], axis=2))
    (folder / "bad" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    return folder


@pytest.fixture(scope="module")
def prepared(work, videos, tiny_models) -> Path:
    data = work / "data"
    code = prepare_module.main(["--videos", str(videos), "--out", str(data), "--models", str(tiny_models),
                                "--resolution", str(SIZE), "--device", "cpu"])
    assert code == 0
    return data


def run_trainer(config: str, data: Path, models: Path, output: Path, *extra: str, sets: list[str] = ()) -> object:
    return train_main(["--config", str(CONFIGS / config), "--data", str(data), "--models", str(models),
                       "--output", str(output), *extra, "--set", *TINY, *sets])


def trainer_config(stage: int, **overrides) -> TrainConfig:
    values = dict(item.split("=") for item in TINY)
    values.update({key: str(value) for key, value in overrides.items()})
    return load_config(CONFIGS / f"stage_{stage}.yaml", values)


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder's five files, keyed as VExpressNet names them."""
    tensors = {}
    for name in WEIGHT_NAMES:
        network = "denoising_unet" if name == "motion_module" else name
        tensors.update({f"{network}.{key}": value for key, value in load_file(folder / f"{name}.safetensors").items()})
    return tensors


# ---------------------------------------------------------------------------------------------
# Data preparation


def test_prepare_skips_bad_clips_and_reports_why(prepared, videos):
    report = json.loads((prepared / "report.json").read_text())
    reasons = {Path(item["video"]).name: item["reason"] for item in report["skipped"]}
    assert reasons.keys() == {"no_audio.mp4", "no_face.mp4", "two_faces.mp4", "corrupt.mp4"}
    assert reasons["no_audio.mp4"].startswith("no audio")
    assert reasons["no_face.mp4"].startswith(f"no face in {BAD_CLIP_FRAMES} of {BAD_CLIP_FRAMES}")
    assert reasons["two_faces.mp4"].startswith("several faces")
    assert reasons["corrupt.mp4"].startswith("cannot read the video")
    resolution, clips = read_manifest(prepared)
    assert resolution == SIZE and sorted(clip.id for clip in clips) == sorted(GOOD_CASES)


def test_prepare_rerun_skips_done_clips(prepared, videos, tiny_models):
    before = {path: path.stat().st_mtime_ns for path in (prepared / "clips").rglob("*") if path.is_file()}
    report = prepare_module.prepare(videos, prepared, tiny_models, prepare_module.PrepareOptions(resolution=SIZE))
    assert sorted(Path(video).stem for video in report["already_done"]) == sorted(GOOD_CASES)
    assert report["prepared"] == []
    assert before == {path: path.stat().st_mtime_ns for path in (prepared / "clips").rglob("*") if path.is_file()}


def test_prepare_clear_errors(tmp_path, tiny_models, capsys):
    (tmp_path / "empty").mkdir()
    assert prepare_module.main(["--videos", str(tmp_path / "empty"), "--out", str(tmp_path / "d"), "--models", str(tiny_models)]) == 2
    assert "no videos in" in capsys.readouterr().err
    with pytest.raises(DataError, match="prepare the data first"):
        read_manifest(tmp_path / "d")


def test_prepared_labels_and_audio_match_the_clip(prepared, videos, tiny_models):
    _, clips = read_manifest(prepared)
    clip = next(clip for clip in clips if clip.id == GOOD_CASES[0])
    labels = read_labels(prepared / "clips" / clip.id)
    assert labels.landmarks.shape == (clip.num_frames, 5, 2) and labels.face_found.all()
    eyes, mouth = labels.landmarks[:, :2], labels.landmarks[:, 3:]
    assert (eyes[:, 0, 0] < eyes[:, 1, 0]).all() and (mouth[:, :, 1] > eyes[:, :, 1].max(axis=1, keepdims=True)).all()
    boxes = labels.mouth_boxes
    assert ((boxes[:, 0] <= mouth[:, 0, 0]) & (boxes[:, 2] >= mouth[:, 1, 0])).all()
    # Two wav2vec2 vectors per frame, exactly inference's interpolation of the clip's soundtrack.
    extractor, encoder = load_audio_encoder(tiny_models)
    wave = load_audio(videos / f"{clip.id}.mp4")[: round(clip.num_frames / clip.fps * SAMPLE_RATE)]
    hidden = encode_audio(wave, extractor, encoder)
    stored = np.load(prepared / "clips" / clip.id / "audio.npy")
    torch.testing.assert_close(torch.from_numpy(stored), padded_audio_sequence(hidden, clip.num_frames, 0), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Samples


def test_window_keeps_reference_margin():
    rng = np.random.default_rng(0)
    for length, spec in ((30, WindowSpec(4, 1, 8)), (40, WindowSpec(8, 2, 10)), (9, WindowSpec(1, 1, 8))):
        seen = set()
        for _ in range(300):
            frames, reference = window_and_reference(length, spec, rng)
            assert frames[0] >= 0 and frames[-1] < length and np.all(np.diff(frames) == spec.frame_stride)
            assert reference <= frames[0] - spec.reference_margin or reference >= frames[-1] + spec.reference_margin
            seen.add(int(frames[0]))
        assert len(seen) > 1


def test_sample_matches_inference_windows_and_flips_eyes(prepared, videos, tiny_models):
    config = trainer_config(3, num_frames=4, flip_rate=0)
    plain = TalkingFaceClips(prepared, config, latent_factor=8)
    flipped = TalkingFaceClips(prepared, trainer_config(3, num_frames=4, flip_rate=1), latent_factor=8)
    index = [clip.id for clip in plain.clips].index(GOOD_CASES[1])
    sample, mirror = plain[(index, 3)], flipped[(index, 3)]
    assert sample["frames"].shape == (3, 4, SIZE, SIZE) and sample["reference"].shape == (3, SIZE, SIZE)
    assert sample["kps_images"].shape == (3, 4, SIZE, SIZE) and sample["audio"].shape == (4, 10, 768)
    assert sample["lip_masks"].shape == (1, 4, SIZE // 8, SIZE // 8) and 0 < sample["lip_masks"].sum() < 4 * 64
    frame_ids = sample["frame_ids"].numpy()
    assert torch.equal(sample["frame_ids"], mirror["frame_ids"]) and torch.equal(mirror["frames"], sample["frames"].flip(-1))

    # Flipping mirrors the frames and swaps the eyes: the V-Kps drawing is that of the mirrored points.
    clip = plain.clips[index]
    landmarks = read_labels(prepared / "clips" / clip.id).landmarks[frame_ids]
    mirrored = flipped_points(landmarks, SIZE)
    assert np.allclose(mirrored[:, 0, 0], SIZE - 1 - landmarks[:, 1, 0]) and (mirrored[:, 0, 0] < mirrored[:, 1, 0]).all()
    expected = np.stack([draw_kps_image(SIZE, SIZE, points[:3]) for points in mirrored])
    assert torch.equal(mirror["kps_images"], torch.from_numpy(expected).permute(3, 0, 1, 2).float() / 255)
    assert torch.equal(mirror["lip_masks"], sample["lip_masks"].flip(-1))

    # Audio windows equal what inference feeds the audio projection for those frames.
    extractor, encoder = load_audio_encoder(tiny_models)
    wave = load_audio(videos / f"{clip.id}.mp4")[: round(clip.num_frames / clip.fps * SAMPLE_RATE)]
    windows = audio_windows(encode_audio(wave, extractor, encoder), clip.num_frames, config.audio_pad)
    torch.testing.assert_close(sample["audio"], windows[frame_ids], rtol=0, atol=0)


def test_sampler_shards_and_resumes_mid_epoch():
    full = [list(EpochSampler(10, 2, seed=5, num_replicas=2, rank=rank)) for rank in (0, 1)]
    assert len(full[0]) == len(full[1]) == 4 and not {k for k, _, _ in full[0]} & {k for k, _, _ in full[1]}
    sampler = EpochSampler(10, 2, seed=5, num_replicas=2, rank=1)
    sampler.set_epoch(0, skip_batches=1)
    assert list(sampler) == full[1][2:]
    sampler.set_epoch(1)
    assert list(sampler) != full[1] and {epoch for _, epoch, _ in sampler} == {1}


# ---------------------------------------------------------------------------------------------
# Conditional dropout and the stage table


def test_dropout_rates_hit_their_targets():
    rates = DropoutRates(reference=0.25, kps=0.1, audio=0.05, uncond=0.1)
    draws, frames = 40000, 4
    keep = condition_keep(draws, frames, rates, torch.Generator().manual_seed(0))
    # A sample with everything dropped is (up to a 1e-5 chance of independent drops) an all-off draw.
    all_off = (keep.reference.sum(1) == 0) & (keep.kps == 0) & (keep.audio == 0)
    conditioned = ~all_off
    tolerance = 0.01
    assert abs(all_off.float().mean() - rates.uncond) < tolerance
    assert abs(1 - keep.reference[conditioned].mean() - rates.reference) < tolerance
    assert abs(1 - keep.kps[conditioned].mean() - rates.kps) < tolerance
    assert abs(1 - keep.audio[conditioned].mean() - rates.audio) < tolerance
    # The reference is dropped per frame: within a clip some frames keep it and others do not.
    assert ((keep.reference.sum(1) > 0) & (keep.reference.sum(1) < frames)).float().mean() > 0.5


def spec_trainable(net, stage: int) -> set[str]:
    """The SPEC's stage table, written independently of training/stages.py: ReferenceNet parameters
    count when a gradient reaches them through the captured features (its zero-context text
    cross-attention is constant, so it is left out)."""
    # 16x16 latents leave 2x2 tokens in the mid block (one token would give attn1 q/k no gradient).
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    features = reference_features(net.reference_net, latents)
    torch.stack([feature.square().mean() for feature in features.values()]).sum().backward()
    reference = {f"reference_net.{name}" for name, p in net.reference_net.named_parameters()
                 if p.grad is not None and p.grad.abs().sum() > 0 and ".attn2." not in name}
    net.zero_grad()
    names = {name for name, _ in net.named_parameters()}
    unet = {name for name in names if name.startswith("denoising_unet.")}
    audio_attention = {name for name in unet if re.search(r"\.transformer_blocks\.\d+\.(attn2|norm2)\.", name)}
    motion = {name for name in unet if ".motion_modules." in name}
    guider = {name for name in names if name.startswith("v_kps_guider.")}
    projection = {name for name in names if name.startswith("audio_projection.")}
    return {
        1: reference | (unet - audio_attention - motion) | guider,
        2: projection | audio_attention | motion,
        3: reference | unet | guider | projection,
    }[stage]


def test_trainable_sets_equal_the_spec_table(tiny_models):
    net = checkpoint_networks(tiny_models, tiny_models / "v-express").float().requires_grad_(True)
    for stage in (1, 2, 3):
        assert set(trainable_names(net, stage)) == spec_trainable(net, stage), f"stage {stage}"
    assert all(name.startswith(("audio_projection.", "denoising_unet.")) for name in trainable_names(net, 2))


def test_stage_start_zeroes_audio_and_motion_outputs(tiny_models):
    net = checkpoint_networks(tiny_models, tiny_models / "v-express").float()
    apply_stage(net, 1, zero_outputs=True)
    outputs = [p for name, p in net.named_parameters()
               if re.search(r"attn2\.to_out\.|temporal_transformer\.proj_out\.", name) and name.startswith("denoising_unet.")]
    assert outputs and all(not p.any() and not p.requires_grad for p in outputs)


# ---------------------------------------------------------------------------------------------
# The trainer


@pytest.fixture(scope="module")
def stage_runs(work, prepared, tiny_models) -> dict[int, Path]:
    """Each stage, 3 steps from the tiny weights (stage 1 with TensorBoard, stage 2 with gradient checkpointing).

    At 128 px (data upscaled from 64) the mid block has 2x2 latent tokens: with a single token its
    attention queries would get no gradient and could not show that they train."""
    runs = {}
    for stage, sets in ((1, ["report_to=tensorboard"]), (2, ["num_frames=4"]), (3, ["num_frames=4", "gradient_checkpointing=false"])):
        output = work / f"stage_{stage}"
        result = run_trainer(f"stage_{stage}.yaml", prepared, tiny_models, output, "--init", str(tiny_models / "v-express"),
                             "--max-steps", "3", sets=["learning_rate=1e-4", "resolution=128", *sets])
        assert sorted(result.losses) == [1, 2, 3] and all(np.isfinite(list(result.losses.values())))
        assert result.checkpoint == output / "checkpoint-3"
        runs[stage] = output
    return runs


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_trains_exactly_its_parts(stage, stage_runs, tiny_models):
    start = checkpoint_networks(tiny_models, tiny_models / "v-express").float()
    trained = set(apply_stage(start, stage, zero_outputs=True))
    before = start.state_dict()
    after = weights_of(stage_runs[stage] / "checkpoint-3")
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == trained


def test_tensorboard_logs_loss_and_lr(stage_runs):
    events = list((stage_runs[1] / "logs").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    assert {"loss", "lr"} <= set(accumulator.Tags()["scalars"])


def test_stage3_checkpoint_loads_and_generates(stage_runs, tiny_models, videos, tmp_path):
    checkpoint = stage_runs[3] / "checkpoint-3"
    models = load_models(tiny_models, weights_dir=checkpoint)
    saved = weights_of(checkpoint)
    for network, module in (("denoising_unet", models.denoising_unet), ("audio_projection", models.audio_projection)):
        for key, value in module.state_dict().items():
            assert torch.equal(value, saved[f"{network}.{key}"]), key
    clip = videos / f"{GOOD_CASES[0]}.mp4"
    reference = tmp_path / "reference.png"
    cv2.imwrite(str(reference), cv2.cvtColor(next(read_video_frames(clip)), cv2.COLOR_RGB2BGR))
    out = tmp_path / "generated.mp4"
    from vexpress_core.cli import main as cli_main

    code = cli_main(["generate", "--models", str(tiny_models), "--weights", str(checkpoint), "--reference", str(reference),
                     "--audio", str(clip), "--width", str(SIZE), "--height", str(SIZE), "--fps", "6", "--steps", "2",
                     "--detector", "retinaface", "--device", "cpu", "--out", str(out)])
    assert code == 0
    assert len(list(read_video_frames(out))) == frame_count(len(load_audio(clip)), SAMPLE_RATE, 6)


def test_overfitting_one_batch_lowers_the_loss(prepared, tiny_models):
    """30 AdamW steps at lr 1e-4 on one fixed batch (same noise, timestep and dropout draw each step)."""
    config = trainer_config(3, num_frames=2, uncond_rate=0, reference_drop_rate=0, kps_drop_rate=0)
    net = checkpoint_networks(tiny_models, tiny_models / "v-express").float().train()
    apply_stage(net, 3, zero_outputs=False)
    vae = AutoencoderKL.from_pretrained(tiny_models / "sd-vae-ft-mse")
    batch = {key: value[None] for key, value in TalkingFaceClips(prepared, config, 8)[(0, 0)].items()}
    scheduler = training_scheduler()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for _ in range(30):
        loss = training_loss(net, vae, scheduler, batch, config, torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    print(f"overfit: loss {losses[0]:.4f} -> {losses[-1]:.4f} in 30 steps at lr 1e-4")
    assert losses[-1] < 0.2 * losses[0]


def test_resume_repeats_the_uninterrupted_run_bit_for_bit(work, prepared, tiny_models):
    """Shuffled data (3 clips, a new order every epoch), gradient accumulation 2: stop after step 2, resume to 4."""
    sets = ["num_frames=2", "gradient_accumulation_steps=2", "reference_drop_rate=0.5", "checkpointing_steps=2"]
    init = ("--init", str(tiny_models / "v-express"))
    whole = run_trainer("stage_2.yaml", prepared, tiny_models, work / "whole", *init, "--max-steps", "4", sets=sets)
    first = run_trainer("stage_2.yaml", prepared, tiny_models, work / "parts", *init, "--max-steps", "2", sets=sets)
    second = run_trainer("stage_2.yaml", prepared, tiny_models, work / "parts", "--resume", "--max-steps", "4", sets=sets)
    assert {**first.losses, **second.losses} == whole.losses
    assert sorted(whole.losses) == [1, 2, 3, 4]
    final, resumed = weights_of(work / "whole" / "checkpoint-4"), weights_of(work / "parts" / "checkpoint-4")
    assert all(torch.equal(final[key], resumed[key]) for key in final)


def test_resume_and_output_misuse_get_clear_errors(tmp_path, prepared, tiny_models):
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoint-1" / "trainer_state.json").write_text(json.dumps({"step": 1}))
    (run / "config.yaml").write_text(yaml.safe_dump(trainer_config(2).to_dict()))
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        run_trainer("stage_2.yaml", prepared, tiny_models, run)
    with pytest.raises(ConfigError, match="noise_offset: 0.05 -> 0.1"):
        run_trainer("stage_2.yaml", prepared, tiny_models, run, "--resume", "--max-steps", "5", sets=["noise_offset=0.1"])
    with pytest.raises(ConfigError, match="no finished checkpoint"):
        run_trainer("stage_2.yaml", prepared, tiny_models, tmp_path / "empty", "--resume")


def test_two_processes_train_with_gloo(work, prepared, tiny_models):
    """torchrun + ACCELERATE_USE_CPU: accelerate's multi-CPU (gloo) path, the same code as multi-GPU DDP."""
    output = work / "two_processes"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "training"), "train", "--config", str(CONFIGS / "stage_2.yaml"), "--data", str(prepared),
               "--models", str(tiny_models), "--output", str(output), "--init", str(tiny_models / "v-express"),
               "--max-steps", "2", "--set", *TINY, "num_frames=2"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stderr
    checkpoint = output / "checkpoint-2"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {path.name for path in checkpoint.iterdir()}
    load_models(tiny_models, weights_dir=checkpoint)


# ---------------------------------------------------------------------------------------------
# Configuration and initialisation


def test_min_snr_weights_and_offset_noise():
    scheduler = training_scheduler()
    gamma = 5.0
    timesteps = torch.tensor([0, 500, scheduler.config.num_train_timesteps - 1])
    weights = min_snr_weights(scheduler, timesteps, gamma)
    snr = scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps])
    assert scheduler.alphas_cumprod[-1] == 0  # zero terminal SNR
    torch.testing.assert_close(weights, (snr + 1).clamp(max=gamma) / (snr + 1))
    assert weights[-1] == 1 and weights[0] < 0.01
    latents = torch.zeros(64, 4, 2, 8, 8)
    noise = offset_noise(latents, 0.05, torch.Generator().manual_seed(0))
    offset = (noise - torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))) / 0.05
    constant = offset[:, :, :1, :1, :1]
    torch.testing.assert_close(offset, constant.expand_as(offset), rtol=0, atol=1e-4)  # one value per sample and channel
    assert 0.8 < constant.std() < 1.2


def test_config_errors_name_the_problem(tmp_path, prepared, tiny_models, capsys):
    code = train_cli(["--config", str(CONFIGS / "stage_1.yaml"), "--data", str(prepared), "--models", str(tiny_models),
                      "--output", str(tmp_path / "run"), "--set", "colour=red"])
    assert code == 2 and "unknown config key(s) colour in --set; valid keys: stage, resolution" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) colour .*valid keys: stage, resolution"):
        load_config(CONFIGS / "stage_1.yaml", {"colour": "red"})
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "stage_2.yaml").read_text() + "lip_weight: 2\n")
    with pytest.raises(ConfigError, match="unknown config key.*lip_weight.*in .*bad.yaml; valid keys: .*lip_loss_weight"):
        load_config(bad)
    with pytest.raises(ConfigError, match="num_frames must be 1"):
        load_config(CONFIGS / "stage_1.yaml", {"num_frames": "4"})
    with pytest.raises(ConfigError, match="kps_drop_rate must be in"):
        load_config(CONFIGS / "stage_2.yaml", {"kps_drop_rate": "1.5"})
    with pytest.raises(ConfigError, match="batch_size must be of type int"):
        load_config(CONFIGS / "stage_2.yaml", {"batch_size": "two"})
    assert load_config(CONFIGS / "stage_3.yaml", {"learning_rate": "1e-4"}).learning_rate == 1e-4


def test_every_stage_config_sets_every_key():
    keys = set(TrainConfig.__dataclass_fields__)
    for stage in (1, 2, 3):
        written = yaml.safe_load((CONFIGS / f"stage_{stage}.yaml").read_text())
        assert set(written) == keys and written["stage"] == stage


def test_initialise_from_sd_unet_and_animatediff(tmp_path, tiny_models):
    unet_config = read_config(tiny_models / "stable-diffusion-v1-5" / "unet" / "config.json")
    torch.manual_seed(1)
    sd_unet = UNet2DConditionModel.from_config(unet_config)
    sd_unet.save_pretrained(tmp_path / "sd" / "unet")
    motion = {k: v for k, v in VExpressUNet.from_unet2d_config(unet_config).state_dict().items() if "motion_modules." in k}
    torch.save({"state_dict": motion}, tmp_path / "mm_sd_v15_v2.ckpt")
    config = trainer_config(1, pretrained_unet=tmp_path / "sd", motion_module=tmp_path / "mm_sd_v15_v2.ckpt", audio_projection_depth=1)
    net = initial_networks(config, unet_config, 768, tiny_models, tiny_models / "v-express")
    sd_state = sd_unet.state_dict()
    reference = net.reference_net.state_dict()
    assert all(torch.equal(reference[key], value) for key, value in sd_state.items() if key in reference)
    unet = net.denoising_unet.state_dict()
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    for source, copy in (("attn1.to_q.weight", "attn1_5.to_q.weight"), ("norm1.weight", "norm1_5.weight")):
        assert torch.equal(unet[f"{block}.{copy}"], sd_state[f"{block}.{source}"])
    assert torch.equal(unet[f"{block}.attn2.to_k.weight"], sd_state[f"{block}.attn2.to_k.weight"])
    assert all(torch.equal(unet[key], value) for key, value in motion.items())

    torch.save({"state_dict": {"down_blocks.0.motion_modules.0.bogus": torch.zeros(1)}}, tmp_path / "wrong.ckpt")
    with pytest.raises(CheckpointError, match="missing"):
        initial_networks(trainer_config(1, motion_module=tmp_path / "wrong.ckpt"), unet_config, 768, tiny_models,
                         tiny_models / "v-express")
