"""Train one V-Express stage:

    python training train --config training/configs/stage_1.yaml --data DATA --models MODELS --output OUT \
        [--init CKPT] [--resume] [--max-steps N] [--set key=value ...]

Multi-GPU: `accelerate launch [--use_deepspeed --deepspeed_config_file training/configs/deepspeed_zero2.json]
--num_processes 8 training train ...`. What each stage trains is the table in training/stages.py.

Every `checkpointing_steps` steps and at the end, OUT/checkpoint-STEP/ receives the five weight
files in the published layout (safetensors; load them with `--weights OUT/checkpoint-STEP`) plus
the optimizer, scheduler and step needed by `--resume`, which continues at that step with the same
data order and random draws.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, GradientAccumulationPlugin, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vexpress_core.checkpoint import WEIGHT_NAMES, CheckpointError, read_config, read_state_dict, weight_file
from vexpress_core.saving import save_weights, split_states
from vexpress_core.dtypes import DTYPES

from .clipdata import DataError
from .config import ConfigError, TrainConfig, config_differences, load_config, parse_overrides, read_config_file
from .dataset import EpochSampler, TalkingFaceClips
from .initialise import checkpoint_networks, initial_networks
from .network import VExpressNet
from .objective import training_loss, training_scheduler
from .stages import PARTS, apply_stage, parameter_part, reference_idle_prefixes

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
RUN_CONFIG = "config.yaml"
# Keys a resumed run may change: they do not alter what an optimisation step computes.
RESUMABLE_CHANGES = ("max_train_steps", "checkpointing_steps", "checkpoints_total_limit", "num_workers", "report_to")
UNET_CONFIG = Path("stable-diffusion-v1-5") / "unet" / "config.json"
VAE_FOLDER = "sd-vae-ft-mse"
WAV2VEC2_CONFIG = Path("wav2vec2-base-960h") / "config.json"


@dataclass
class TrainResult:
    losses: dict[int, float]
    checkpoint: Path | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train one stage of V-Express.")
    parser.add_argument("--config", required=True, type=Path, help="training/configs/stage_{1,2,3}.yaml")
    parser.add_argument("--data", required=True, type=Path, help="folder written by `python training prepare`")
    parser.add_argument("--models", required=True, type=Path,
                        help="model directory in the published layout (UNet config, sd-vae-ft-mse, wav2vec2-base-960h)")
    parser.add_argument("--output", required=True, type=Path, help="run folder: checkpoints, logs, config.yaml")
    parser.add_argument("--init", type=Path, help="start from these five V-Express weight files: a previous stage's checkpoint-STEP "
                             "or the released v-express/ folder (ignored with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its latest checkpoint")
    parser.add_argument("--max-steps", type=int, help="override max_train_steps")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="override config keys")
    return parser.parse_args(argv)


def checkpoint_steps(output: Path) -> dict[int, Path]:
    """Finished checkpoints of a run folder by step."""
    found = {}
    for path in output.glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / TRAINER_STATE).is_file():
            found[int(match.group(1))] = path
    return found


def run_config(args: argparse.Namespace) -> TrainConfig:
    """The config file with --set and --max-steps applied, checked against the run folder's own
    config when resuming."""
    config = load_config(args.config, parse_overrides(args.set))
    if args.max_steps is not None:
        config = dataclasses.replace(config, max_train_steps=args.max_steps)
    saved = args.output / RUN_CONFIG
    if args.resume:
        if not checkpoint_steps(args.output):
            raise ConfigError(f"--resume: {args.output} holds no finished checkpoint-STEP folder to continue from")
        changed = config_differences(read_config_file(saved), config, RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(f"--resume with a different config than {saved}: {'; '.join(changed)}")
    elif checkpoint_steps(args.output):
        raise ConfigError(f"{args.output} already holds checkpoints; pass --resume to continue that run or choose another --output")
    return config


def model_file(models: Path, relative: Path | str) -> Path:
    path = models / relative
    if not path.exists():
        raise CheckpointError(f"{path} is missing: --models must be a model directory in the published layout")
    return path


def step_generator(seed: int, micro_step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one micro-batch on one process: a pure function of (seed, micro step, rank)."""
    state = np.random.SeedSequence([seed, micro_step, rank]).generate_state(1)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def optimizer_class(config: TrainConfig) -> type[torch.optim.Optimizer]:
    """bitsandbytes' 8-bit AdamW when asked for and installed, else torch AdamW."""
    if config.use_8bit_adam:
        try:
            import bitsandbytes
        except ImportError:
            logger.warning("use_8bit_adam: bitsandbytes is not installed, using torch AdamW (pip install bitsandbytes)")
        else:
            return bitsandbytes.optim.AdamW8bit
    return torch.optim.AdamW


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype of the frozen VAE: the mixed-precision compute dtype."""
    precision = accelerator.mixed_precision
    return DTYPES[precision] if precision in DTYPES else torch.float32


def load_weights(net: VExpressNet, folder: Path) -> None:
    """Load the five weight files of a checkpoint folder into `net`, strictly."""
    states = {name: read_state_dict(weight_file(folder, name)) for name in WEIGHT_NAMES}
    states["denoising_unet"].update(states.pop("motion_module"))
    for name, module in net.networks().items():
        module.load_state_dict(states[name], strict=True)


def deepspeed_half_precision(accelerator: Accelerator) -> bool:
    """DeepSpeed runs the whole model in fp16/bf16 and keeps float32 masters of the trained parameters only."""
    return accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.mixed_precision in ("fp16", "bf16")


def frozen_weights(accelerator: Accelerator, net: VExpressNet) -> dict[str, torch.Tensor]:
    """The main process's full-precision values of what DeepSpeed will cast and not train (frozen
    parameters, buffers), taken before `accelerator.prepare`; empty when nothing is cast. The engine
    replaces the model's tensors with cast copies, so these are the original tensors, not copies."""
    if not (deepspeed_half_precision(accelerator) and accelerator.is_main_process):
        return {}
    trained = {name for name, parameter in net.named_parameters() if parameter.requires_grad}
    return {name: tensor.detach() for name, tensor in net.state_dict().items() if name not in trained}


def full_precision_state(accelerator: Accelerator, net: VExpressNet, frozen: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict checkpoints hold. Under DeepSpeed fp16/bf16: the trained parameters' float32
    masters (gathered from every process, so every process calls this; kept by the main process) and
    the `frozen_weights`, not the engine's rounded copies, which the next stage's --init would inherit."""
    if not deepspeed_half_precision(accelerator):
        return net.state_dict()
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {}
    for name, parameter in net.named_parameters():
        if parameter.requires_grad:
            master = safe_get_full_fp32_param(parameter)
            if accelerator.is_main_process:
                masters[name] = master.cpu()
    return {**net.state_dict(), **frozen, **masters}


def network_states(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A VExpressNet state dict split per network: {"reference_net": {...}, "denoising_unet": {...}, ...}."""
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        network, _, inner = key.partition(".")
        states.setdefault(network, {})[inner] = value
    return states


def register_weight_hooks(accelerator: Accelerator, net: VExpressNet) -> None:
    """Make accelerate's save_state/load_state write and read the five published weight files
    (float32) instead of its own model file. Called before `accelerator.prepare(net)`."""
    frozen = frozen_weights(accelerator, net)

    def save_hook(models, weights, output_dir):
        state = full_precision_state(accelerator, accelerator.unwrap_model(models[0]), frozen)
        if accelerator.is_main_process:
            save_weights(split_states(network_states(state)), output_dir, dtype=torch.float32)
        if weights:
            weights.pop()

    def load_hook(models, input_dir):
        # DeepSpeed restores its own engine checkpoint (with the fp32 master weights).
        if accelerator.distributed_type != DistributedType.DEEPSPEED:
            load_weights(accelerator.unwrap_model(models.pop()), Path(input_dir))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator: Accelerator, output: Path, step: int, keep: int) -> Path:
    """OUT/checkpoint-STEP, written under a temporary name and renamed when complete."""
    final = output / f"checkpoint-{step}"
    partial = output / f"checkpoint-{step}.partial"
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / TRAINER_STATE).write_text(json.dumps({"step": step}))
        if final.exists():
            shutil.rmtree(final)
        partial.replace(final)
        if keep:
            for old in sorted(checkpoint_steps(output))[:-keep]:
                shutil.rmtree(checkpoint_steps(output)[old])
    accelerator.wait_for_everyone()
    return final


def trainable_summary(net: VExpressNet, stage: int) -> str:
    idle = reference_idle_prefixes(net.reference_net)
    counts = dict.fromkeys(PARTS, 0)
    for name, parameter in net.named_parameters():
        if parameter.requires_grad:
            counts[parameter_part(name, idle)] += parameter.numel()
    parts = ", ".join(f"{part} {count / 1e6:.2f}M" for part, count in counts.items() if count)
    return f"stage {stage} trains {sum(counts.values()) / 1e6:.2f}M parameters: {parts}"


def configure_deepspeed(accelerator: Accelerator, config: TrainConfig) -> None:
    """Fill what the DeepSpeed config leaves to us (the dataloader is sharded here, not by accelerate)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
        plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm


def main(argv: list[str] | None = None) -> TrainResult:
    args = parse_args(argv)
    config = run_config(args)
    output = args.output
    accelerator = Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        for unfinished in output.glob("checkpoint-*.partial"):
            shutil.rmtree(unfinished)
        if not args.resume:
            (output / RUN_CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    set_seed(config.seed)

    unet_config = read_config(model_file(args.models, UNET_CONFIG))
    audio_dim = json.loads(model_file(args.models, WAV2VEC2_CONFIG).read_text())["hidden_size"]
    vae = AutoencoderKL.from_pretrained(model_file(args.models, VAE_FOLDER), torch_dtype=weight_dtype(accelerator),
                                        local_files_only=True)
    vae = vae.requires_grad_(False).eval().to(accelerator.device)
    latent_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    resume_step, resume_dir = max(checkpoint_steps(output).items()) if args.resume else (0, None)
    if resume_dir is not None:
        net = checkpoint_networks(args.models, resume_dir).float().train()
    else:
        net = initial_networks(config, unet_config, audio_dim, args.models, args.init, latent_factor)
    if config.num_frames > net.denoising_unet.config.motion_max_len:
        raise ConfigError(f"num_frames {config.num_frames} exceeds the motion modules' length "
                          f"{net.denoising_unet.config.motion_max_len}")
    trained = apply_stage(net, config.stage, zero_outputs=resume_dir is None)
    logger.info(trainable_summary(net, config.stage))
    if config.gradient_checkpointing:
        net.reference_net.enable_gradient_checkpointing()
        net.denoising_unet.enable_gradient_checkpointing()
    parameters = [parameter for parameter in net.parameters() if parameter.requires_grad]
    optimizer = optimizer_class(config)(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )

    dataset = TalkingFaceClips(args.data, config, latent_factor)
    sampler = EpochSampler(len(dataset), config.batch_size, config.seed, accelerator.num_processes, accelerator.process_index)
    dataloader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                            pin_memory=accelerator.device.type == "cuda")
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )
    configure_deepspeed(accelerator, config)
    register_weight_hooks(accelerator, net)
    net, optimizer, lr_scheduler = accelerator.prepare(net, optimizer, lr_scheduler)

    global_step = resume_step
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        logger.info(f"resumed from {resume_dir}")
    accelerator.init_trackers(f"stage_{config.stage}", config={k: v for k, v in config.to_dict().items() if v is not None})
    logger.info(f"{len(dataset)} clips, {sampler.batches_per_epoch()} batches per epoch and process, "
                f"{len(trained)} trained tensors, {accelerator.num_processes} processes")

    noise_scheduler = training_scheduler()
    batches_per_epoch = sampler.batches_per_epoch()
    accumulation = config.gradient_accumulation_steps
    micro_step = global_step * accumulation
    losses: dict[int, float] = {}
    step_losses = []
    checkpoint = None
    progress = tqdm(total=config.max_train_steps, initial=global_step, desc=f"stage {config.stage}",
                    disable=not accelerator.is_local_main_process)
    while global_step < config.max_train_steps:
        epoch, skip = divmod(micro_step, batches_per_epoch)
        sampler.set_epoch(epoch, skip)
        for batch in dataloader:
            batch = {key: value.to(accelerator.device, non_blocking=True) for key, value in batch.items()}
            generator = step_generator(config.seed, micro_step, accelerator.process_index, accelerator.device)
            with accelerator.accumulate(net):
                loss = training_loss(net, vae, noise_scheduler, batch, config, generator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {global_step + 1}; lower learning_rate "
                                             "or use bf16 / fp32 mixed_precision")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            micro_step += 1
            step_losses.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            step_loss = accelerator.gather(torch.stack(step_losses).mean()[None]).mean().item()
            step_losses = []
            losses[global_step] = step_loss
            accelerator.log({"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            if global_step % config.checkpointing_steps == 0 or global_step == config.max_train_steps:
                checkpoint = save_checkpoint(accelerator, output, global_step, config.checkpoints_total_limit)
            if global_step >= config.max_train_steps:
                break
    progress.close()
    accelerator.end_training()
    return TrainResult(losses, checkpoint)


def cli(argv: list[str] | None = None) -> int:
    """The command line: errors in the config, data or weights print one clear line and exit 2."""
    try:
        main(argv)
    except (ConfigError, DataError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
