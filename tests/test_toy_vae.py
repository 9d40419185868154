"""`python training toy vae`: the toy VAE fitted as its own step, and `toy train --vae` taking it."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from diffusers import AutoencoderKL

from vexpress_training.toy.model import held_out_reconstruction, toy_vae
from vexpress_training.toy.recipe import Recipe, model_vae

from conftest import REPO


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "vae"
    command = [sys.executable, "training", "toy", "vae", str(out), "--steps", "60", "--batch", "4", "--seed", "3"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return out, result.stdout


def test_the_vae_step_writes_a_vae_that_learnt_toy_frames(fitted):
    out, stdout = fitted
    figures = json.loads((out / "fit.json").read_text())
    vae = AutoencoderKL.from_pretrained(out)
    assert vae.config.scaling_factor == pytest.approx(figures["scaling_factor"])
    assert (figures["steps"], figures["batch"], figures["latent_noise"], figures["seed"]) == (60, 4, 0.1, 3)
    torch.manual_seed(0)
    untrained = held_out_reconstruction(toy_vae(), 64, range(1000, 1008)).mean()
    learnt = held_out_reconstruction(vae, 64, range(1000, 1008)).mean()
    assert learnt > untrained + 2.0
    assert f"{figures['held_out_psnr_mean']:.2f} dB mean" in stdout


def test_toy_train_takes_the_fitted_vae_as_it_is(fitted):
    out, _ = fitted
    vae = model_vae(out, Recipe(), time.time())
    saved = AutoencoderKL.from_pretrained(out)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(vae.state_dict()[name], tensor), name


@pytest.mark.parametrize("command, message", [
    (["vae", "{out}", "--steps", "0"], "--steps and --batch must be positive"),
    (["vae", "{out}", "--size", "66"], "--size must be a multiple of 4"),
    (["train", "{out}", "--vae", "{missing}"], "no config.json there"),
])
def test_bad_arguments_stop_before_anything_is_written(tmp_path, command, message):
    argv = [part.format(out=tmp_path / "out", missing=tmp_path / "missing") for part in command]
    result = subprocess.run([sys.executable, "training", "toy", *argv], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()
