"""Loading the published V-Express model directory, strictly.

Layout (a copy of Hugging Face `tk93/V-Express`'s `model_ckpts`):
    v-express/{denoising_unet,motion_module,reference_net,v_kps_guider,audio_projection}.{bin,safetensors}
    stable-diffusion-v1-5/unet/config.json
    sd-vae-ft-mse/            (diffusers AutoencoderKL)
    wav2vec2-base-960h/       (transformers Wav2Vec2Model + feature-extractor config)
    insightface_models/       (optional)

Before anything is read in full, every file is checked from its header (`model_files`: links
out of the folder, truncated or overlapping safetensors, cut-off zip archives, oversized configs).
Networks are built on the meta device (their buffers too), checked against the files' shapes and
only then filled: the checkpoint tensors are assigned in place, so the full ~2.25 B parameters
never exist twice in RAM, and a config asking for absurd sizes allocates nothing. A config may not
ask for more blocks than its weights hold. Every key and shape is checked; the one error names the
file, the counts and the first offending keys.
"""
from __future__ import annotations

import pickle
import zipfile
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from .audio import load_audio_encoder
from .config_checks import (
    POSITION_CODE_SUFFIX,
    SHOWN_KEYS,
    UNET_BLOCKS,
    VAE_BLOCKS,
    WAV2VEC2_BLOCKS,
    WAV2VEC2_PREFIX,
    check_block_counts,
    check_hidden_size,
    check_network_fits_file,
    check_shared_shapes,
    mismatch_report,
    network_on_meta,
    read_config,
)
from .host_memory import release_freed_host_memory
from .model_files import CheckpointError, check_files, safetensors_shapes
from .models import (
    REFERENCE_NET_ABSENT_KEYS,
    AudioProjection,
    VExpressUNet,
    VKpsGuider,
    build_reference_net,
    sinusoidal_position_code,
)
from .weight_storage import (WEIGHT_STORAGES, StreamedSafetensors, WeightStorage, attach_scales, check_float8, quantised,
                             stored_weight_keys)

WEIGHT_NAMES = ("reference_net", "denoising_unet", "motion_module", "v_kps_guider", "audio_projection")
MOTION_KEY = "motion_modules."


# Files of the two pretrained folders that loading reads: fixed files, then weights (first found
# wins, as diffusers and transformers choose them).
FOLDER_FILES = {
    "stable-diffusion-v1-5/unet": (("config.json",), ()),
    "sd-vae-ft-mse": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "wav2vec2-base-960h": (("config.json", "preprocessor_config.json"), ("model.safetensors", "pytorch_model.bin")),
}


@dataclass(frozen=True)
class ModelPaths:
    root: Path
    weights: dict[str, Path]
    unet_config: Path
    vae: Path
    wav2vec2: Path
    insightface: Path
    vae_weights: Path | None = None
    wav2vec2_weights: Path | None = None


@dataclass
class VExpressModels:
    reference_net: UNet2DConditionModel
    denoising_unet: VExpressUNet
    v_kps_guider: VKpsGuider
    audio_projection: AudioProjection
    vae: AutoencoderKL
    audio_encoder: Wav2Vec2Model
    feature_extractor: Wav2Vec2FeatureExtractor
    paths: ModelPaths
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def motion_length(self) -> int:
        """Frames one window may hold: the motion modules' position-code length."""
        return int(self.denoising_unet.config.motion_max_len)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the denoising UNet takes."""
        return int(self.denoising_unet.config.in_channels)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {
            "reference_net": self.reference_net,
            "denoising_unet": self.denoising_unet,
            "v_kps_guider": self.v_kps_guider,
            "audio_projection": self.audio_projection,
            "vae": self.vae,
            "audio_encoder": self.audio_encoder,
        }


def weight_file(folder: Path, name: str) -> Path | None:
    for suffix in (".safetensors", ".bin"):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def resolve_model_paths(model_dir: str | Path, weights_dir: str | Path | None = None) -> ModelPaths:
    """Locate every file of a model directory; `weights_dir` overrides where the five V-Express files live."""
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"model directory {root} does not exist (expected a copy of tk93/V-Express model_ckpts)")
    folder = Path(weights_dir).expanduser() if weights_dir else root / "v-express"
    weights: dict[str, Path] = {}
    missing = []
    for name in WEIGHT_NAMES:
        found = weight_file(folder, name)
        if found is None and name == "motion_module":
            continue  # denoising_unet may carry the motion keys itself
        if found is None:
            missing.append(f"{name}.bin|.safetensors")
        else:
            weights[name] = found
    pretrained = {}
    for folder_name, (fixed, weight_names) in FOLDER_FILES.items():
        missing += [str(Path(folder_name) / name) for name in fixed if not (root / folder_name / name).is_file()]
        if weight_names:
            pretrained[folder_name] = next((root / folder_name / name for name in weight_names
                                            if (root / folder_name / name).is_file()), None)
            if pretrained[folder_name] is None:
                missing.append(str(Path(folder_name) / "|".join(weight_names)))
    paths = ModelPaths(
        root=root,
        weights=weights,
        unet_config=root / "stable-diffusion-v1-5" / "unet" / "config.json",
        vae=root / "sd-vae-ft-mse",
        wav2vec2=root / "wav2vec2-base-960h",
        insightface=root / "insightface_models",
        vae_weights=pretrained["sd-vae-ft-mse"],
        wav2vec2_weights=pretrained["wav2vec2-base-960h"],
    )
    if missing:
        raise CheckpointError(f"model directory {root} is incomplete; missing: {', '.join(missing)} (in {folder} for the V-Express weights)")
    return paths


def checked_model_folder(model_dir: str | Path, weights_dir: str | Path | None = None) -> ModelPaths:
    """`resolve_model_paths`, once every file loading would read is checked from its header (see
    `model_files`): cheap enough to run before any other work."""
    paths = resolve_model_paths(model_dir, weights_dir)
    weights_folder = Path(weights_dir).expanduser() if weights_dir else paths.root
    files = [(path, weights_folder) for path in paths.weights.values()]
    files += [(path, paths.root) for path in (paths.unet_config, paths.vae / "config.json", paths.vae_weights,
                                              paths.wav2vec2 / "config.json", paths.wav2vec2 / "preprocessor_config.json",
                                              paths.wav2vec2_weights)]
    check_files(files)
    return paths


def declared_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a weights file without reading its data: a safetensors header, or a torch
    file's tensors memory-mapped."""
    if path.suffix == ".safetensors":
        return safetensors_shapes(path)
    return {key: tuple(tensor.shape) for key, tensor in read_state_dict(path).items()}


def read_state_dict(path: Path, streamed: bool = False) -> Mapping[str, torch.Tensor]:
    """Tensors of a `.bin` (torch.save, read with weights_only) or `.safetensors` file; with
    `streamed`, a .safetensors file's tensors are read one at a time when asked for."""
    try:
        if streamed and path.suffix == ".safetensors":
            return StreamedSafetensors(path)
        if path.suffix == ".safetensors":
            return load_file(str(path))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            # Files written with the legacy (non-zip) serialisation cannot be memory-mapped.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"{path}: cannot be read as a weights-only state dict ({type(error).__name__}: {error})") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return dict(state)


def check_position_codes(source: str, state: Mapping[str, torch.Tensor]) -> None:
    for key in state:
        if key.endswith(POSITION_CODE_SUFFIX):
            value = state[key]
            formula = sinusoidal_position_code(value.shape[1], value.shape[2])
            if not torch.allclose(value.float(), formula, atol=1e-3):
                raise CheckpointError(f"{source}: {key} is not the fixed sinusoidal position code")


# CPU kernels round differently on storage that is not aligned like a fresh allocation.
STORAGE_ALIGNMENT = 64


def usable_as_is(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` itself when it already has the device and dtype and sits at an aligned address (the
    file's own memory, counted once, instead of a second copy of every weight); else an aligned copy.
    torch.save aligns its records, but views into other files may sit at any offset."""
    if (tensor.device == torch.device(device) and tensor.dtype == dtype and tensor.is_contiguous()
            and tensor.data_ptr() % STORAGE_ALIGNMENT == 0):
        return tensor
    return tensor.to(device=device, dtype=dtype, memory_format=torch.contiguous_format, copy=True)


def assign_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype,
                   device: torch.device | str, ignored: Iterable[str] = (), built_from: Path | None = None,
                   storage: WeightStorage = WEIGHT_STORAGES["dtype"]) -> torch.nn.Module:
    """Strictly check `state` against `model` (built on meta), then assign it in place; position
    codes the file lacks are computed. With a float8 `storage`, its Linear/Conv2d weights are
    quantised one by one as they are assigned."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    report = mismatch_report(source, expected, state, ignored, built_from)
    if report:
        raise CheckpointError(report)
    check_position_codes(source, state)
    stored = stored_weight_keys(model) if storage.dtype is not None else set()
    converted, scales = {}, {}
    for key in expected:
        if key in state:
            # A position code is the formula by definition; the file's copy only had to be close to it.
            tensor = sinusoidal_position_code(*state[key].shape[1:]) if key.endswith(POSITION_CODE_SUFFIX) else state[key]
            if key in stored:
                converted[key], scale = quantised(tensor.to(device))
                scales[key] = scale
                del tensor
                release_freed_host_memory()  # the file's and full-precision copies, tensor by tensor
                continue
            # Position codes stay fp32 whatever the file holds, as the published buffers are.
            target = torch.float32 if key.endswith(POSITION_CODE_SUFFIX) else dtype
            converted[key] = usable_as_is(tensor, device, target if tensor.is_floating_point() else tensor.dtype)
    model.load_state_dict(converted, strict=False, assign=True)
    attach_scales(model, scales, dtype)
    for name, buffer in model.named_buffers():
        if buffer.device.type == "meta" and name.endswith(POSITION_CODE_SUFFIX):
            buffer = sinusoidal_position_code(*buffer.shape[1:])
        elif buffer.device.type == "meta":
            raise CheckpointError(f"{source}: buffer {name} was neither in the file nor computable")
        target = torch.float32 if name.endswith(POSITION_CODE_SUFFIX) else buffer.dtype
        model.get_submodule(name.rsplit(".", 1)[0]).register_buffer(name.rsplit(".", 1)[1], buffer.to(device, target))
    return model.eval().requires_grad_(False)


def guider_config(state: Mapping[str, torch.Tensor], source: str = "v_kps_guider") -> dict:
    """VKpsGuider config from tensor shapes: conv_in, then pairs of (same-width conv, stride-2 conv)."""
    try:
        channels = [state["conv_in.weight"].shape[0]]
        index = 1
        while f"blocks.{index}.weight" in state:
            channels.append(state[f"blocks.{index}.weight"].shape[0])
            index += 2
        return {
            "conditioning_embedding_channels": state["conv_out.weight"].shape[0],
            "conditioning_channels": state["conv_in.weight"].shape[1],
            "block_out_channels": tuple(channels),
        }
    except KeyError as error:
        raise CheckpointError(f"{source}: the V-Kps guider weights lack {error}") from error


def audio_projection_config(state: Mapping[str, torch.Tensor], source: str = "audio_projection", dim_head: int = 64) -> dict:
    """AudioProjection config from tensor shapes. The head split cannot be read from shapes: 64-wide heads."""
    try:
        _, num_queries, dim = state["latents"].shape
        max_seq_len, embedding_dim = state["pos_emb.weight"].shape
        depth = sum(1 for key in state if key.startswith("layers.") and key.endswith(".0.to_q.weight"))
        inner = state["layers.0.0.to_q.weight"].shape[0]
        return {
            "dim": dim,
            "depth": depth,
            "dim_head": dim_head,
            "heads": inner // dim_head,
            "num_queries": num_queries,
            "embedding_dim": embedding_dim,
            "output_dim": state["proj_out.weight"].shape[0],
            "ff_mult": state["layers.0.1.1.weight"].shape[0] // dim,
            "max_seq_len": max_seq_len,
        }
    except KeyError as error:
        raise CheckpointError(f"{source}: the audio projection weights lack {error}") from error


def denoising_state(paths: ModelPaths, streamed: bool = False) -> tuple[Mapping[str, torch.Tensor], str]:
    """Denoising UNet tensors from denoising_unet (+ motion_module when present), and a label for errors."""
    state = read_state_dict(paths.weights["denoising_unet"], streamed)
    label = str(paths.weights["denoising_unet"])
    if "motion_module" in paths.weights:
        motion = read_state_dict(paths.weights["motion_module"], streamed)
        stray = [k for k in motion if MOTION_KEY not in k]
        if stray:
            raise CheckpointError(f"{paths.weights['motion_module']}: {len(stray)} keys are not motion-module keys, e.g. {stray[:SHOWN_KEYS]}")
        # When denoising_unet also carries motion keys, the dedicated motion file is the one that counts.
        state = ChainMap(motion, state)
        label += f" + {paths.weights['motion_module']}"
    return state, label


def build_networks(unet_config: Mapping, guider_cfg: Mapping, projection_cfg: Mapping, motion_max_len: int = 32):
    """The four V-Express networks with empty (meta) parameters."""
    with init_empty_weights():
        return (
            build_reference_net(unet_config),
            VExpressUNet.from_unet2d_config(unet_config, motion_max_len=motion_max_len),
            VKpsGuider(**guider_cfg),
            AudioProjection(**projection_cfg),
        )


def motion_max_len(state: Mapping[str, torch.Tensor]) -> int:
    lengths = {state[k].shape[1] for k in state if k.endswith(POSITION_CODE_SUFFIX)}
    return lengths.pop() if len(lengths) == 1 else 32


def load_vexpress_networks(paths: ModelPaths, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                           storage: WeightStorage = WEIGHT_STORAGES["dtype"]):
    """(reference_net, denoising_unet, v_kps_guider, audio_projection), strictly loaded; the
    ReferenceNet and the UNet with their weights stored as `storage` says."""
    streamed = storage.dtype is not None
    unet_config = read_config(paths.unet_config)
    reference_state = read_state_dict(paths.weights["reference_net"], streamed)
    check_block_counts(unet_config, paths.unet_config, UNET_BLOCKS, reference_state, paths.weights["reference_net"])
    guider_state = read_state_dict(paths.weights["v_kps_guider"])
    projection_state = read_state_dict(paths.weights["audio_projection"])
    unet_state, unet_label = denoising_state(paths, streamed)
    guider_cfg = guider_config(guider_state, str(paths.weights["v_kps_guider"]))
    projection_cfg = audio_projection_config(projection_state, str(paths.weights["audio_projection"]))
    max_len = motion_max_len(unet_state)
    reference, unet, guider, projection = network_on_meta(
        lambda: build_networks(unet_config, guider_cfg, projection_cfg, max_len), paths.unet_config)
    reference = assign_weights(reference, reference_state, str(paths.weights["reference_net"]), dtype, device,
                               ignored=REFERENCE_NET_ABSENT_KEYS, built_from=paths.unet_config, storage=storage)
    del reference_state
    release_freed_host_memory()
    unet = assign_weights(unet, unet_state, unet_label, dtype, device, built_from=paths.unet_config, storage=storage)
    del unet_state
    release_freed_host_memory()
    guider = assign_weights(guider, guider_state, str(paths.weights["v_kps_guider"]), dtype, device)
    projection = assign_weights(projection, projection_state, str(paths.weights["audio_projection"]), dtype, device)
    return reference, unet, guider, projection


def load_models(model_dir: str | Path, weights_dir: str | Path | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", weight_storage: str = "dtype") -> VExpressModels:
    """Every network of a published-layout model directory, strictly checked, in `dtype` on `device`;
    `weight_storage` (a WEIGHT_STORAGES name) says how the ReferenceNet and the UNet keep their weights."""
    storage = WEIGHT_STORAGES[weight_storage]
    if storage.dtype is not None:
        check_float8(device)
    paths = checked_model_folder(model_dir, weights_dir)
    check_vae_config(paths)
    check_wav2vec2_config(paths)
    reference, unet, guider, projection = load_vexpress_networks(paths, dtype, device, storage)
    try:
        vae = AutoencoderKL.from_pretrained(paths.vae, torch_dtype=dtype, local_files_only=True).to(device).eval()
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{paths.vae_weights}: cannot be loaded as the VAE of {paths.vae} ({error})") from error
    extractor, encoder = load_audio_encoder(paths.wav2vec2, dtype, device)
    return VExpressModels(reference, unet, guider, projection, vae.requires_grad_(False), encoder.requires_grad_(False),
                          extractor, paths, dtype, torch.device(device))


def check_vae_config(paths: ModelPaths) -> None:
    """Raises unless the VAE's config describes a network its weights file can fill (nothing is allocated)."""
    config_path = paths.vae / "config.json"
    config = read_config(config_path)
    shapes = declared_shapes(paths.vae_weights)
    check_block_counts(config, config_path, VAE_BLOCKS, shapes, paths.vae_weights)
    network = network_on_meta(lambda: AutoencoderKL.from_config(config), config_path)
    check_shared_shapes(network, config_path, shapes, paths.vae_weights)
    check_network_fits_file(network, config_path, shapes, paths.vae_weights)


def check_wav2vec2_config(paths: ModelPaths) -> None:
    """Raises unless wav2vec2's config describes a network its weights file can fill (nothing is allocated)."""
    config_path = paths.wav2vec2 / "config.json"
    config = read_config(config_path)
    shapes = declared_shapes(paths.wav2vec2_weights)
    check_block_counts(config, config_path, WAV2VEC2_BLOCKS, shapes, paths.wav2vec2_weights)
    check_hidden_size(config, config_path, shapes, paths.wav2vec2_weights)
    network = network_on_meta(lambda: Wav2Vec2Model(Wav2Vec2Config.from_dict(config)), config_path)
    check_shared_shapes(network, config_path, shapes, paths.wav2vec2_weights, prefix=WAV2VEC2_PREFIX)
    check_network_fits_file(network, config_path, shapes, paths.wav2vec2_weights)


