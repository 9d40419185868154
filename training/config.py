"""Training configuration: one flat set of keys, read from a stage YAML and `--set key=value` overrides.

Every key is a field of `TrainConfig`; the YAML files in `training/configs/` list them all with the
reasons for their values. Unknown keys, wrong types and out-of-range values raise `ConfigError`
naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from vexpress_core.sampling import MAX_CONTEXT_FRAMES

STAGES = (1, 2, 3)
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
REPORT_TO = ("tensorboard", "none")
# The published motion modules' length, checked before a model is loaded; train.py checks the UNet's own.
MAX_MOTION_FRAMES = MAX_CONTEXT_FRAMES


class ConfigError(ValueError):
    """A configuration key, value or file is not usable."""


@dataclass(frozen=True)
class TrainConfig:
    # Which row of the stage table (training/stages.py) applies.
    stage: int = 3
    # Data.
    resolution: int = 512
    num_frames: int = 8
    frame_stride: int = 1
    reference_margin: int = 30
    flip_rate: float = 0.5
    audio_pad: int = 2
    batch_size: int = 1
    num_workers: int = 4
    # Conditional dropout. `uncond_rate` drops every condition of a sample (the CFG branch); the
    # other rates apply to the remaining samples, independently per condition.
    reference_drop_rate: float = 0.0
    kps_drop_rate: float = 0.0
    audio_drop_rate: float = 0.0
    uncond_rate: float = 0.1
    # Loss.
    lip_loss_weight: float = 1.0
    snr_gamma: float = 5.0
    noise_offset: float = 0.05
    # Optimisation.
    learning_rate: float = 1.0e-6
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1.0e-2
    adam_epsilon: float = 1.0e-8
    use_8bit_adam: bool = True
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = False
    max_train_steps: int = 100000
    checkpointing_steps: int = 5000
    checkpoints_total_limit: int = 0
    seed: int = 42
    report_to: str = "tensorboard"
    # Initialisation (used when the networks do not come from --init, or to override parts of it).
    pretrained_unet: str | None = None
    motion_module: str | None = None
    audio_projection_depth: int = 4

    def __post_init__(self) -> None:
        for problem in config_problems(self):
            raise ConfigError(problem)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def valid_keys() -> list[str]:
    return [field.name for field in fields(TrainConfig)]


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _in_unit_interval(name: str, value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"{name} must be in [0, 1], got {value}"


def config_problems(config: TrainConfig) -> list[str]:
    """Human-readable problems with the values of `config` (empty when it is usable)."""
    problems = []
    if config.stage not in STAGES:
        problems.append(f"stage must be one of {STAGES}, got {config.stage}")
    if not 1 <= config.num_frames <= MAX_MOTION_FRAMES:
        problems.append(f"num_frames must be in 1..{MAX_MOTION_FRAMES} (the motion modules' window), got {config.num_frames}")
    if config.stage == 1 and config.num_frames != 1:
        problems.append(f"stage 1 trains single frames: num_frames must be 1, got {config.num_frames}")
    for name in ("flip_rate", "reference_drop_rate", "kps_drop_rate", "audio_drop_rate", "uncond_rate"):
        problems.append(_in_unit_interval(name, getattr(config, name)))
    positive = ("resolution", "frame_stride", "batch_size", "gradient_accumulation_steps", "max_train_steps",
                "checkpointing_steps", "learning_rate", "audio_projection_depth")
    problems += [f"{name} must be positive, got {getattr(config, name)}" for name in positive if getattr(config, name) <= 0]
    non_negative = ("reference_margin", "audio_pad", "num_workers", "lr_warmup_steps", "noise_offset", "snr_gamma",
                    "adam_weight_decay", "max_grad_norm", "checkpoints_total_limit")
    problems += [f"{name} must be >= 0, got {getattr(config, name)}" for name in non_negative if getattr(config, name) < 0]
    if config.lip_loss_weight < 1.0:
        problems.append(f"lip_loss_weight must be >= 1 (1 = no extra weight on the mouth), got {config.lip_loss_weight}")
    for name, allowed in (("mixed_precision", MIXED_PRECISION), ("lr_scheduler", LR_SCHEDULERS), ("report_to", REPORT_TO)):
        if getattr(config, name) not in allowed:
            problems.append(f"{name} must be one of {', '.join(allowed)}; got {getattr(config, name)!r}")
    return [problem for problem in problems if problem]


def _coerced(name: str, value: Any, kind: Any) -> Any:
    """`value` as the type of field `name` (YAML may read 1e-6 as a string, `--set` gives strings)."""
    optional = isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)
    base = next(arg for arg in typing.get_args(kind) if arg is not type(None)) if optional else kind
    if value is None or (optional and isinstance(value, str) and value.lower() in ("null", "none", "")):
        if optional:
            return None
        raise ConfigError(f"{name} needs a value of type {base.__name__}, got null")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be of type {base.__name__}, got {value!r}") from None


def unknown_key_error(keys: Iterable[str], source: str) -> ConfigError:
    return ConfigError(f"unknown config key(s) {', '.join(sorted(keys))} in {source}; valid keys: {', '.join(valid_keys())}")


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """`["key=value", ...]` as a dict; raises on items without '='."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (see training/configs/stage_1.yaml, stage_2.yaml, stage_3.yaml)")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path} must hold a mapping of key: value, found {type(values).__name__}")
    return dict(values)


def build_config(values: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """A checked TrainConfig from raw key/values (strings or YAML scalars)."""
    kinds = _field_types()
    unknown = set(values) - set(kinds)
    if unknown:
        raise unknown_key_error(unknown, source)
    return TrainConfig(**{name: _coerced(name, value, kinds[name]) for name, value in values.items()})


def load_config(path: str | Path, overrides: Mapping[str, str] | None = None) -> TrainConfig:
    """The config of a YAML file with `overrides` applied on top."""
    values = read_config_file(path)
    unknown = set(values) - set(valid_keys())
    if unknown:
        raise unknown_key_error(unknown, str(path))
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(valid_keys())
    if unknown:
        raise unknown_key_error(unknown, "--set")
    return build_config({**values, **overrides}, source=str(path))


def config_differences(saved: Mapping[str, Any], current: TrainConfig, ignored: Iterable[str]) -> list[str]:
    """`key: saved -> current` for every key that differs, except `ignored` ones."""
    ignored = set(ignored)
    now = current.to_dict()
    return [f"{key}: {saved.get(key)!r} -> {now[key]!r}" for key in now if key not in ignored and saved.get(key) != now[key]]
