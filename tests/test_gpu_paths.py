"""The CUDA-only paths, run on the CPU (issue 23): ComfyUI's memory management, several GPUs,
CUDA's attention limits, memory-aware decoding, fp16, --novram, training under DeepSpeed.

No GPU is needed: `cuda_on_cpu.cuda_on_the_cpu` plays a CUDA device with the CPU, `fake_comfyui`
plays ComfyUI's model management, gloo processes play several GPUs (a "cuda:gloo" process group
rejects host tensors as NCCL does), and the meta device gives shapes at sizes no test could run.
Each test is numbered by the issue's item it checks.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import sys
import types

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from accelerate.utils import DistributedType
from diffusers.models.modeling_utils import ModelMixin

import multi_gpu_worker
import tiny_case
from comfyui_like import NODES, load_handle
from cuda_on_cpu import GPU, HOST, TOTAL_BYTES, cuda_on_the_cpu, placed_on
from fake_comfyui import FakeModelPatcher, comfy  # noqa: F401 (comfy: a fixture)
from vexpress_core import pipeline
from vexpress_core.audio import encode_audio, load_audio_encoder, normalised_input, synthetic_speech
from vexpress_core.checkpoint import WEIGHT_NAMES, load_models, read_state_dict, weight_file
from vexpress_core.frame_cache import FrameCache
from vexpress_core.models import VExpressUNet, build_reference_net, processor, reference_features
from vexpress_core.offload import DECODING_NETWORKS, DENOISING_NETWORKS
from vexpress_core.orchestration import FramedReference, reference_phase, track_phase
from vexpress_core.pipeline import audio_token_source, denoise, kps_feature_source
from vexpress_core.sampling import Conditions, GuidedDenoiser, context_windows
from vexpress_core.tiny import unet_config_for
from vexpress_training import train
from vexpress_training.initialise import checkpoint_networks
from vexpress_training.stages import apply_stage


pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = tiny_case.SETTINGS


@pytest.fixture(scope="module")
def job(tiny_model_dir):
    """The tiny models and the fixed 64x64 case."""
    models = load_models(tiny_model_dir)
    return (models, *tiny_case.make_case(models))


def final_latents(job, device: torch.device | None = None, **changes) -> torch.Tensor:
    """The job's final latents with `changes` to SETTINGS; with `device`, the models say they run there."""
    models, reference, speech, track = job
    models = dataclasses.replace(models, device=device) if device is not None else models
    return denoise(models, reference, speech, track, dataclasses.replace(SETTINGS, **changes))


# ------------------------------------------------------------------------------------------------
# 1, 5, 7. ComfyUI on a GPU: room for the working memory, decoding alone and by free memory, --novram

BY_ID = NODES.nodes_by_id()


@pytest.fixture()
def gpu_comfy(comfy, tiny_model_dir):
    """ComfyUI (faked) computing on a GPU (played by the CPU) with the tiny model folder; a test sets the
    card's size (`comfy.mm.vram_bytes`), and ComfyUI's free memory is what torch.cuda reports."""
    comfy.folder_paths.add_model_folder_path("v-express", str(tiny_model_dir.parent))
    comfy.mm.get_torch_device = lambda: GPU
    with cuda_on_the_cpu(lambda: comfy.mm.get_free_memory(GPU)):
        yield comfy


def load_on_gpu(tiny_model_dir, keep_idle_on: str):
    (handle,) = BY_ID["VExpressLoadModels"].run(model=tiny_model_dir.name, dtype="fp32", keep_idle_on=keep_idle_on)
    assert handle.load_device == GPU
    return handle


def sampler_inputs(handle, audio: dict | None = None, fps: float = 30.0) -> dict:
    """The Sampler's inputs for the fixed case (9 frames at 64x64, 3 windows of 4), or other speech."""
    picture, points = tiny_case.framed_reference()
    reference = reference_phase(handle.using, FramedReference(picture, points))
    speech, _, _ = BY_ID["VExpressAudioEncode"].run(models=handle, audio=audio or tiny_case.comfy_audio(), fps=fps)
    return dict(models=handle, reference=reference, speech=speech, kps=track_phase(reference, speech.speech, None, "fix_face"),
                steps=1, cfg=3.5, reference_weight=0.95, audio_weight=3.0, scheduler="ddim", seed=1, deflicker=False,
                window_options=SETTINGS.windows, previews=False)


def weights_bytes(handle, names) -> int:
    return sum(handle.patchers[name].model_size() for name in names)


def test_01_comfyui_makes_room_for_the_samplers_working_memory(gpu_comfy, tiny_model_dir):
    """An earlier node's model fills the GPU. The denoising phase asks ComfyUI for its working memory
    beside the weights, so that model is evicted, and window_batch="auto" is sized after the eviction."""
    mm = gpu_comfy.mm
    handle = load_on_gpu(tiny_model_dir, keep_idle_on="gpu")
    settings = SETTINGS
    window = pipeline.window_memory(settings, handle.models, tiny_case.FRAMES)
    earlier = FakeModelPatcher(torch.nn.Linear(2, 2), GPU, HOST, size=10 * window)
    mm.vram_bytes = weights_bytes(handle, handle.patchers) + earlier.model_size() + window // 2
    mm.load_models_gpu([earlier])
    inputs = sampler_inputs(handle)
    assert any(loaded.model is earlier for loaded in mm.current_loaded_models)
    calls = []
    handle.models.denoising_unet.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0] // 2))
    BY_ID["VExpressSampler"].run(**inputs)
    requests = dict(zip((tuple(p for p in call) for call, _ in mm.load_calls), mm.memory_requests))
    denoising = requests[tuple(handle.patchers[name] for name in DENOISING_NETWORKS)][0]
    decoding = requests[tuple(handle.patchers[name] for name in DECODING_NETWORKS)][0]
    assert denoising >= pipeline.denoising_memory(settings, handle.models, tiny_case.FRAMES) >= window
    assert decoding >= pipeline.decoding_memory(settings, handle.models) > 0
    assert all(loaded.model is not earlier for loaded in mm.current_loaded_models)
    assert calls == [3]  # all 3 windows in one call: sized by the memory free after the eviction


def test_05_low_vram_decodes_with_the_vae_alone_in_chunks_sized_by_free_memory(gpu_comfy, tiny_model_dir):
    mm = gpu_comfy.mm
    handle = load_on_gpu(tiny_model_dir, keep_idle_on="cpu")
    inputs = sampler_inputs(handle)
    settings = SETTINGS
    frame = pipeline.decode_frame_memory(settings, handle.models)
    mm.vram_bytes = weights_bytes(handle, DECODING_NETWORKS) + int(2.5 * frame / pipeline.GPU_MEMORY_SHARE)
    log = []
    models = handle.models
    models.denoising_unet.register_forward_pre_hook(lambda *_: log.append(("denoise", sorted(handle.loaded_networks()))))
    models.vae.decoder.register_forward_pre_hook(
        lambda _, args: log.append((f"decode {args[0].shape[0]}", sorted(handle.loaded_networks()))))
    images, _, _ = BY_ID["VExpressSampler"].run(**inputs)
    assert images.shape[0] == 9
    denoising = log[:-5]
    assert denoising and all(entry == ("denoise", sorted(DENOISING_NETWORKS)) for entry in denoising)
    assert log[-5:] == [("decode 2", ["vae"])] * 4 + [("decode 1", ["vae"])]  # 9 frames, 2 per call


def test_07_novram_networks_run_on_the_gpu(gpu_comfy, tiny_model_dir):
    """ComfyUI --novram reports our networks loaded (their patchers' device is the GPU) but moves none
    of their weights; they are moved for the phase, and back to host memory after it."""
    gpu_comfy.mm.novram, gpu_comfy.mm.vram_bytes = True, TOTAL_BYTES
    handle = load_on_gpu(tiny_model_dir, keep_idle_on="gpu")
    networks = handle.models.networks()
    with handle.using(DENOISING_NETWORKS) as models:
        assert models.device == GPU
        assert {name: placed_on(networks[name]) for name in DENOISING_NETWORKS} == dict.fromkeys(DENOISING_NETWORKS, GPU)
    assert {name: placed_on(networks[name]) for name in DENOISING_NETWORKS} == dict.fromkeys(DENOISING_NETWORKS, HOST)
    images, _, _ = BY_ID["VExpressSampler"].run(**sampler_inputs(handle))
    assert images.shape[0] == 9


# ------------------------------------------------------------------------------------------------
# 2, 3. Several GPUs: one window_batch for all processes, host tensors over an NCCL-like group


@pytest.fixture(scope="module")
def two_processes(tiny_model_dir, tmp_path_factory) -> list[dict]:
    """Each scenario of multi_gpu_worker.SCENARIOS run by two processes: per rank, latents or the error."""
    out = str(tmp_path_factory.mktemp("shards") / "latents")
    ports = multi_gpu_worker.free_ports(len(multi_gpu_worker.SCENARIOS))
    mp.spawn(multi_gpu_worker.denoise_in_each_process, args=(2, ports, str(tiny_model_dir), out), nprocs=2, join=True)
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]


def test_02_processes_sizing_window_batch_auto_differently_give_the_one_process_latents(job, two_processes):
    """Rank 0 has no free memory (1 window per call), rank 1 room for all 3: unagreed, the windows
    sharded by batch index miss one (its frames get 0/0)."""
    single = final_latents(job, window_batch=1)
    for rank in two_processes:
        assert torch.equal(rank["auto_window_batch"], single)


def test_03_low_vram_with_a_group_that_reduces_no_host_tensors(job, two_processes):
    """accelerate's multi-GPU group is NCCL-only: it rejects the host tensors --low-vram sums."""
    single = final_latents(job, window_batch=1)
    for rank in two_processes:
        result = rank["low_vram_over_nccl"]
        assert not isinstance(result, str), result
        assert torch.equal(result, single)


# ------------------------------------------------------------------------------------------------
# 4. Attention batches under CUDA's 65,535 grid limit

CUDA_BATCH_LIMIT = 65535  # the grid dimension CUDA's attention kernels put the batch on


def attention_batches(monkeypatch) -> list[int]:
    """Records the batch size of every scaled_dot_product_attention call."""
    batches = []
    original = F.scaled_dot_product_attention

    def recording(query, key, value, *args, **kwargs):
        batches.append(query.shape[0])
        return original(query, key, value, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return batches


@pytest.mark.parametrize("size, window_batch", [(512, 8), (1024, 16)])
def test_04_every_attention_batch_stays_under_cudas_limit_at_the_widget_limits(monkeypatch, size, window_batch):
    """The SD1.5-size UNet on the meta device, a CFG batch of `window_batch` windows at `size` pixels:
    512 x 8 windows is the smallest case over the limit, 1024 x 16 the widgets' largest. The motion
    modules' batch is 2 x windows x (H/8) x (W/8) whatever the frame count, so one frame per window
    keeps the meta run short (the spatial attentions' batch, 2 x windows x frames, is at most 1,024)."""
    config = unet_config_for(sd15=True)
    latent = size // 8
    with torch.device("meta"):
        unet, reference_net = VExpressUNet.from_unet2d_config(config).half(), build_reference_net(config).half()
        features = reference_features(reference_net, torch.zeros(1, 4, latent, latent, dtype=torch.float16))
        conditions = Conditions(features, lambda start, stop: torch.zeros(stop - start, 10, config["cross_attention_dim"]),
                                lambda start, stop: torch.zeros(1, config["block_out_channels"][0], stop - start, latent, latent))
        latents = torch.zeros(1, 4, window_batch, latent, latent)
        batches = attention_batches(monkeypatch)
        with torch.no_grad():
            prediction = GuidedDenoiser(unet, conditions, 3.5, 0.95, 3.0, cache_reference_kv=True)(
                latents, 999, context_windows(window_batch, 1, 0))
    assert prediction.shape == (window_batch, 4, 1, latent, latent)
    assert 2 * window_batch * latent * latent > CUDA_BATCH_LIMIT  # the case needs splitting
    assert max(batches) <= CUDA_BATCH_LIMIT


def test_04_attention_split_over_the_batch_gives_the_values_of_one_call(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(10, 2, 5, 8, generator=generator) for _ in range(3))
    whole = F.scaled_dot_product_attention(query, key, value)
    monkeypatch.setattr(processor, "MAX_ATTENTION_BATCH", 3)
    batches = attention_batches(monkeypatch)
    assert torch.equal(processor.attention_in_batch_chunks(query, key, value), whole)
    assert batches == [3, 3, 3, 1]


# ------------------------------------------------------------------------------------------------
# 6. Long speech through an fp16 wav2vec2


def loud_first_conv_encoder(model_dir, waveform, std: float = 400.0):
    """The tiny wav2vec2 with its first conv scaled so its outputs over `waveform` have standard
    deviation `std`: variances past fp16's largest value (65,504), as wav2vec2-base's can be."""
    extractor, encoder = load_audio_encoder(model_dir)
    conv = encoder.feature_extractor.conv_layers[0].conv
    with torch.no_grad():
        conv.weight.mul_(std / conv(normalised_input(waveform, extractor)[None, None]).std())
    return extractor, encoder


def test_06_fp16_encoder_with_chunks_matches_fp32(tiny_model_dir):
    """Chunks of 1 s, so the first GroupNorm takes the clip-wide statistics (the hook)."""
    waveform = synthetic_speech(3.0)
    extractor, encoder = loud_first_conv_encoder(tiny_model_dir, waveform)
    assert encoder.config.feat_extract_norm == "group"
    encoded = {dtype: encode_audio(waveform, extractor, copy.deepcopy(encoder).to(dtype), chunk_seconds=1.0,
                                   overlap_seconds=0.25) for dtype in (torch.float32, torch.float16)}
    half, full = encoded[torch.float16], encoded[torch.float32]
    assert torch.isfinite(half).all()
    # fp16 rounding alone: the single-pass fp16 encoding differs from fp32 by about 0.01 here.
    assert (half - full).abs().max().item() < 0.05


# ------------------------------------------------------------------------------------------------
# 8. Training: checkpoints under DeepSpeed fp16, gradient checkpointing with diffusers 0.30's API


class DeepSpeedFp16Accelerator:
    """What the weight hooks use of accelerate's Accelerator under DeepSpeed with fp16, one process."""

    distributed_type = DistributedType.DEEPSPEED
    mixed_precision = "fp16"
    is_main_process = True

    def __init__(self):
        self.save_hooks, self.load_hooks = [], []

    def register_save_state_pre_hook(self, hook):
        self.save_hooks.append(hook)

    def register_load_state_pre_hook(self, hook):
        self.load_hooks.append(hook)

    def unwrap_model(self, model):
        return model


def deepspeed_engine(monkeypatch, net) -> None:
    """What DeepSpeed's engine does to `net`: float32 masters of the trained parameters in its
    optimizer (`deepspeed.utils.safe_get_full_fp32_param`, None for the others), the model cast to fp16."""
    masters = {id(parameter): parameter.detach().clone() for parameter in net.parameters() if parameter.requires_grad}
    utils = types.ModuleType("deepspeed.utils")
    utils.safe_get_full_fp32_param = lambda parameter: masters.get(id(parameter))
    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(utils=utils))
    monkeypatch.setitem(sys.modules, "deepspeed.utils", utils)
    net.half()


def test_08_deepspeed_fp16_checkpoints_hold_the_float32_weights(tiny_model_dir, tmp_path, monkeypatch):
    """Stage 2 trains some networks and freezes others: the trained ones are saved from their
    masters, the frozen ones as they were before the engine cast them, not as fp16 rounds them."""
    net = checkpoint_networks(tiny_model_dir, tiny_model_dir / "v-express").float().train()
    apply_stage(net, 2, zero_outputs=False)
    expected = {key: value.clone() for key, value in net.state_dict().items()}
    assert any(not torch.equal(value.half().float(), value) for value in expected.values())
    accelerator = DeepSpeedFp16Accelerator()
    train.register_weight_hooks(accelerator, net)  # before accelerator.prepare, as train.main does
    deepspeed_engine(monkeypatch, net)
    (save_hook,) = accelerator.save_hooks
    save_hook([net], [], str(tmp_path))
    saved = {name: read_state_dict(weight_file(tmp_path, name)) for name in WEIGHT_NAMES}
    saved["denoising_unet"].update(saved.pop("motion_module"))
    for key, value in expected.items():
        network, _, inner = key.partition(".")
        assert torch.equal(saved[network][inner], value), key


# ------------------------------------------------------------------------------------------------
# Gradient checkpointing with diffusers 0.30's API


def enable_gradient_checkpointing_in_diffusers_030(self) -> None:
    """ModelMixin.enable_gradient_checkpointing as diffusers 0.30 (the requirements' floor) has it;
    0.30's ModelMixin itself has no `_set_gradient_checkpointing`, only its own models define one."""
    if not self._supports_gradient_checkpointing:
        raise ValueError(f"{self.__class__.__name__} does not support gradient checkpointing.")
    self.apply(functools.partial(self._set_gradient_checkpointing, value=True))


def unet_gradients(job, unet) -> list[torch.Tensor]:
    models, reference, speech, track = job
    conditions = Conditions(reference.features, audio_token_source(models, speech, 2),
                            kps_feature_source(models, track, tiny_case.SIZE, tiny_case.SIZE))
    latents = torch.randn(1, 4, speech.num_frames, 8, 8, generator=torch.Generator().manual_seed(1))
    GuidedDenoiser(unet, conditions, guidance_scale=1.0)(latents, torch.tensor(500), [list(range(4))]).square().mean().backward()
    return [parameter.grad for parameter in unet.parameters()]


def test_08_gradient_checkpointing_with_diffusers_030(job, monkeypatch):
    monkeypatch.setattr(ModelMixin, "enable_gradient_checkpointing", enable_gradient_checkpointing_in_diffusers_030)
    monkeypatch.delattr(ModelMixin, "_set_gradient_checkpointing", raising=False)
    plain, checkpointed = (copy.deepcopy(job[0].denoising_unet).train().requires_grad_(True) for _ in range(2))
    checkpointed.enable_gradient_checkpointing()
    assert checkpointed.is_gradient_checkpointing
    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    expected = unet_gradients(job, plain)
    assert not calls
    assert all(torch.equal(a, b) for a, b in zip(unet_gradients(job, checkpointed), expected))
    assert calls  # every resnet, spatial transformer and motion module recomputed in the backward pass


# ------------------------------------------------------------------------------------------------
# 9. Smaller: pinned host memory, torch.compile failing at compile() time, eta > 0 with host latents


class ComputedOnTheGpu(torch.Tensor):
    """Host values that report the GPU: what a V-Kps guider or audio projection on CUDA returns."""

    @property
    def device(self) -> torch.device:
        return GPU


def test_09_host_memory_is_never_pinned(job):
    """Pinned copies were re-packed into pageable tensors before any transfer (window stacking,
    `latents * init_noise_sigma`) and stayed locked in the CUDA host allocator for the process's life."""
    def compute(start, stop):
        return torch.arange(start, stop, dtype=torch.float32)[None].as_subclass(ComputedOnTheGpu)

    with cuda_on_the_cpu() as cuda:
        cache = FrameCache(compute, 20, frame_axis=1)
        cache.fill()
        assert torch.equal(cache(3, 18), torch.arange(3.0, 18.0)[None])
        final_latents(job, GPU, latents_on_host=True, window_batch=1)
    assert cuda.pinned == []


def test_09_eta_noise_with_host_latents_and_models_on_the_gpu(job):
    """The scheduler's noise comes from a host generator: a CUDA one cannot draw it for latents in
    host memory (diffusers raises), and the seed now gives the same noise on every device."""
    with cuda_on_the_cpu():
        on_gpu = final_latents(job, GPU, latents_on_host=True, window_batch=1, eta=0.7)
    assert torch.equal(on_gpu, final_latents(job, eta=0.7))
    assert not torch.equal(on_gpu, final_latents(job))


def test_09_compile_failing_before_any_call_falls_back_to_eager(job, monkeypatch):
    """torch.compile itself raises on some platforms and Pythons (not only when the first call compiles)."""
    def unsupported(module, **_):
        raise RuntimeError("torch.compile is not supported on this platform")

    monkeypatch.setattr(torch, "compile", unsupported)
    with pytest.warns(UserWarning, match="running VExpressUNet eagerly: torch.compile is not supported"):
        compiled = final_latents(job, compile=True)
    assert torch.equal(compiled, final_latents(job))


# ------------------------------------------------------------------------------------------------
# 10. fp16 end to end


def test_10_fp16_node_graph_matches_fp32(tiny_model_dir, monkeypatch):
    """fp16, what "auto" gives on CUDA, through the nodes on the CPU: reference, speech longer than an
    encoder chunk (chunks of 1 s stand in for 30 s; the first conv at wav2vec2-base's scale, see item
    6), denoising with guidance and decoding. Every stage stays finite and near the fp32 run."""
    monkeypatch.setattr(pipeline, "encode_audio", functools.partial(encode_audio, chunk_seconds=1.0, overlap_seconds=0.25))
    waveform = synthetic_speech(2.5)
    _, loud = loud_first_conv_encoder(tiny_model_dir, waveform)
    runs = {}
    for dtype in ("fp32", "fp16"):
        handle = load_handle(tiny_model_dir.parent, model=tiny_model_dir.name, dtype=dtype)
        handle.models.audio_encoder.load_state_dict(loud.state_dict())
        inputs = sampler_inputs(handle, {"waveform": torch.from_numpy(waveform)[None, None], "sample_rate": 16000}, fps=4.0)
        images, _, _ = BY_ID["VExpressSampler"].run(**inputs)
        runs[dtype] = inputs["reference"].reference.latents.float(), inputs["speech"].speech.hidden, images
    assert handle.dtype == torch.float16 and next(handle.models.denoising_unet.parameters()).dtype == torch.float16
    (reference, speech, images), (half_reference, half_speech, half_images) = runs["fp32"], runs["fp16"]
    assert all(torch.isfinite(values).all() for values in runs["fp16"])
    assert (half_reference - reference).abs().max().item() < 1e-2
    assert (half_speech - speech).abs().max().item() < 0.05
    # Guidance on the tiny random UNet amplifies rounding (single pixels move by up to 0.17 of the
    # range); on average fp16 frames stay within 0.03 (the fp16 speech bug gave 0.085).
    assert (half_images - images).abs().mean().item() < 0.03
