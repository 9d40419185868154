"""From a reference photo, speech and a keypoint track to video frames.

Per-frame conditioning (keypoint drawings, V-Kps features, audio tokens) is produced per context
window, and frames are decoded in chunks and streamed to the caller, so no network ever sees more
than one batch of windows and nothing per-frame is held for the whole video except the latents.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from .audio import SAMPLE_RATE, audio_windows_from_sequence, encode_audio, frame_count, padded_audio_sequence, validate_waveform
from .checkpoint import VExpressModels
from .frame_cache import DEFAULT_BUDGET_MB, FrameCache
from .host_memory import release_freed_host_memory
from .keypoints import KeypointTrack, draw_track
from .models import reference_features
from .sampling import (Cancelled, CompiledWithFallback, Conditions, GuidedDenoiser, Progress, Shard, accumulation_dtype,
                       check_context, context_windows, make_scheduler, sample)
from .settings import GenerationSettings
from .video import MedianDeflicker, VideoWriter, check_output_path, to_uint8


@dataclass
class Reference:
    """The reference photo at the output size, its latent and ReferenceNet features."""

    image: np.ndarray  # uint8 [H, W, 3]
    latents: torch.Tensor  # [1, 4, H/8, W/8]
    features: dict[str, torch.Tensor]


@dataclass
class Speech:
    """Speech at 16 kHz and its wav2vec2 encoding."""

    waveform: np.ndarray
    hidden: torch.Tensor  # [1, N, 768] float32
    num_frames: int
    fps: float

    @property
    def duration(self) -> float:
        return len(self.waveform) / SAMPLE_RATE


def resized_reference(image: np.ndarray | Image.Image, width: int, height: int) -> np.ndarray:
    """RGB uint8 [height, width, 3]; bicubic like the published script (which passes PIL the sizes swapped)."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    picture = picture.convert("RGB")
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.BICUBIC)
    return np.asarray(picture)


def image_to_model_range(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [-1, 1], laid out channels-last in memory as
    diffusers' VaeImageProcessor makes it (the VAE's convolutions round differently otherwise)."""
    pixels = (np.asarray(image).astype(np.float32) / 255.0)[None].transpose(0, 3, 1, 2)
    return torch.from_numpy(pixels) * 2.0 - 1.0


@torch.no_grad()
def prepare_reference(models: VExpressModels, image: np.ndarray | Image.Image, width: int, height: int) -> Reference:
    """Resize, VAE-encode (posterior mean x scaling factor) and run the ReferenceNet once."""
    picture = resized_reference(image, width, height)
    pixels = image_to_model_range(picture).to(models.device, models.vae.dtype)
    latents = models.vae.encode(pixels).latent_dist.mean * models.vae.config.scaling_factor
    features = reference_features(models.reference_net, latents.to(models.reference_net.dtype))
    return Reference(picture, latents, features)


def encode_speech(models: VExpressModels, waveform_16k: np.ndarray, fps: float, name: str = "audio") -> Speech:
    waveform = np.asarray(waveform_16k, dtype=np.float32)
    validate_waveform(waveform, SAMPLE_RATE, name)
    num_frames = frame_count(len(waveform), SAMPLE_RATE, fps)
    if num_frames < 1:
        raise ValueError(f"{name} is {len(waveform) / SAMPLE_RATE:.3f} s long: shorter than one frame at {fps} fps")
    hidden = encode_audio(waveform, models.feature_extractor, models.audio_encoder)
    release_freed_host_memory()
    return Speech(waveform, hidden, num_frames, fps)


def audio_token_source(models: VExpressModels, speech: Speech, num_pad: int,
                       budget_bytes: int = DEFAULT_BUDGET_MB * 2**20) -> FrameCache:
    """Audio tokens [n, T, D] of any frame range; each frame projected once per generation within the budget."""
    sequence = padded_audio_sequence(speech.hidden, speech.num_frames, num_pad).to(models.device)
    projection = models.audio_projection

    def tokens(start: int, stop: int) -> torch.Tensor:
        windows = audio_windows_from_sequence(sequence, torch.arange(start, stop), num_pad)
        return projection(windows.to(projection.dtype))

    return FrameCache(tokens, speech.num_frames, 0, budget_bytes)


def distinct_frames(frames: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The distinct frames in order of first appearance, and for every frame its index among them."""
    index_of: dict[bytes, int] = {}
    firsts: list[int] = []
    frame_of = []
    for position, frame in enumerate(frames):
        index = index_of.setdefault(frame.tobytes(), len(firsts))
        if index == len(firsts):
            firsts.append(position)
        frame_of.append(index)
    return (frames if len(firsts) == len(frames) else frames[firsts]), frame_of


def kps_feature_source(models: VExpressModels, track: KeypointTrack, width: int, height: int,
                       budget_bytes: int = DEFAULT_BUDGET_MB * 2**20) -> FrameCache:
    """V-Kps features [1, C, n, h, w] of any frame range; each frame drawn and run once per generation
    within the budget. Frames whose drawings are identical (a still face, fix_face) share one
    guider run: the guider treats frames independently, so the features are the same."""
    guider = models.v_kps_guider

    step = host_frames_per_call(width, height) if models.device.type != "cuda" else None

    def guided(drawings: np.ndarray) -> torch.Tensor:
        images = (torch.from_numpy(drawings).to(models.device, guider.dtype) / 255.0).permute(3, 0, 1, 2)[None]
        return guider(images.contiguous())  # a permuted input rounds differently with the batch size

    def features(start: int, stop: int) -> torch.Tensor:
        drawings = draw_track(track, width, height, start, stop)
        distinct, frame_of = distinct_frames(drawings)
        if step is None:
            unique = guided(distinct)
        else:
            unique = torch.cat([guided(distinct[first:first + step]) for first in range(0, len(distinct), step)], dim=2)
        return unique if len(distinct) == len(drawings) else unique[:, :, frame_of]

    return FrameCache(features, len(track), 2, budget_bytes)


def initial_latents(seed: int, num_frames: int, width: int, height: int, channels: int = 4,
                    scale_factor: int = 8, *, dtype: torch.dtype = torch.float32, encoder_layers: int = 0) -> torch.Tensor:
    """The published CLI's noise for `seed`: torch.randn on the CPU in the model's dtype, drawn
    after one torch.rand([]) per wav2vec2 encoder layer (see `published_noise_draws`). Drawn from
    a generator of its own; torch's global generator is left alone. Defaults: the published
    model's latent channels and VAE scale factor."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(encoder_layers):
        torch.rand([], generator=generator)
    return torch.randn([1, channels, num_frames, height // scale_factor, width // scale_factor],
                       generator=generator, dtype=dtype)


def published_noise_draws(models: VExpressModels) -> int:
    """How many draws the published CLI takes from its seeded generator before the noise: it seeds
    torch's global generator, encodes the audio, then draws the noise; with its pinned
    transformers (4.41.1) wav2vec2's encoder draws one torch.rand([]) per layer (the layer-drop
    check) even in eval mode - 12 for wav2vec2-base-960h."""
    return models.audio_encoder.config.num_hidden_layers


# Rough activation memory of one window in the denoising UNet, in multiples of one CFG-doubled
# window's latent-resolution tensor at the first block width (conservative for SD1.5 shapes).
WINDOW_ACTIVATION_FACTOR = 48
# The VAE decoder's working memory per latent pixel of a frame, per byte of its dtype: ComfyUI's
# estimate for SD's AutoencoderKL (comfy/sd.py, memory_used_decode).
DECODE_BYTES_PER_LATENT_PIXEL = 2178 * 64
GPU_MEMORY_SHARE = 0.6


# Off a GPU, frames per V-Kps guider call are limited to this many pixels: its activations are
# among the largest host allocations of a generation, and bigger batches only pay off for small frames.
HOST_PIXELS_PER_CALL = 4 * 128 * 128
GPU_DECODE_CHUNK = 8
# Off a GPU the VAE decodes one frame per call, as the published pipeline does: the same values
# (its convolutions round differently with other batch sizes) and the smallest peak memory
# (measured at 128x128, 84 frames: 52 MiB below 4 frames per call, for 0.3 s more).
HOST_DECODE_CHUNK = 1


def host_frames_per_call(width: int, height: int) -> int:
    return max(1, HOST_PIXELS_PER_CALL // (width * height))


def free_gpu_memory(device: torch.device) -> int:
    """Bytes new tensors can take on a CUDA device: free in the driver plus what torch's allocator
    holds unused (what ComfyUI counts as free)."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def window_memory(settings: GenerationSettings, models: VExpressModels, num_frames: int) -> int:
    """Bytes of the denoising UNet's activations for one window (conditional and unconditional)."""
    unet = models.denoising_unet
    latent_pixels = (settings.height // models.vae_scale_factor) * (settings.width // models.vae_scale_factor)
    window = min(settings.context_frames, num_frames)
    return 2 * window * latent_pixels * unet.config.block_out_channels[0] * unet.dtype.itemsize * WINDOW_ACTIVATION_FACTOR


def decode_frame_memory(settings: GenerationSettings, models: VExpressModels) -> int:
    """Bytes the VAE decoder works in per frame (per tile with `vae_tiling`)."""
    vae = models.vae
    latent_pixels = (settings.height // models.vae_scale_factor) * (settings.width // models.vae_scale_factor)
    if settings.vae_tiling:
        latent_pixels = min(latent_pixels, vae.tile_latent_min_size ** 2)
    return DECODE_BYTES_PER_LATENT_PIXEL * latent_pixels * vae.dtype.itemsize


def denoising_memory(settings: GenerationSettings, models: VExpressModels, num_frames: int) -> int:
    """Bytes denoising needs besides the weights: one UNet call's windows (one for "auto", which then
    takes what is free)."""
    windows = 1 if settings.window_batch == "auto" else settings.window_batch
    return windows * window_memory(settings, models, num_frames)


def decoding_memory(settings: GenerationSettings, models: VExpressModels) -> int:
    """Bytes decoding needs besides the weights: one VAE call's frames (one for "auto", which then
    takes what is free)."""
    frames = 1 if settings.decode_chunk == "auto" else settings.decode_chunk
    return frames * decode_frame_memory(settings, models)


def resolved_decode_chunk(settings: GenerationSettings, models: VExpressModels) -> int:
    """`decode_chunk`, with "auto" resolved: on a GPU as many frames (at most 8) as fit in a share of
    the free memory at this size, elsewhere 1."""
    if settings.decode_chunk != "auto":
        return settings.decode_chunk
    if models.device.type != "cuda":
        return HOST_DECODE_CHUNK
    fitting = int(free_gpu_memory(models.device) * GPU_MEMORY_SHARE // decode_frame_memory(settings, models))
    return max(1, min(GPU_DECODE_CHUNK, fitting))


def resolved_window_batch(settings: GenerationSettings, models: VExpressModels, num_frames: int) -> int:
    """`window_batch`, with "auto" resolved: on a GPU as many windows as fit in a share of the free
    memory; elsewhere 1 (on CPU batching windows is no faster and costs memory: issue 12's table)."""
    if settings.window_batch != "auto":
        return settings.window_batch
    if models.device.type != "cuda":
        return 1
    fitting = int(free_gpu_memory(models.device) * GPU_MEMORY_SHARE // window_memory(settings, models, num_frames))
    windows = len(context_windows(num_frames, settings.context_frames, settings.context_overlap))
    return max(1, min(windows, fitting))


def check_track(track: KeypointTrack, num_frames: int, width: int, height: int) -> None:
    if len(track) != num_frames:
        raise ValueError(f"keypoint track has {len(track)} frames, the audio needs {num_frames}; resample it (keypoints.output_track)")
    if tuple(track.frame_size) != (width, height):
        raise ValueError(f"keypoint track is in {track.frame_size} pixels, the output is {(width, height)}; scale it first")


def check_model_limits(models: VExpressModels, settings: GenerationSettings) -> None:
    """The settings against the loaded networks' own limits: motion length, VAE scale factor."""
    check_context(settings.context_frames, settings.context_overlap, models.motion_length)
    factor = models.vae_scale_factor
    for name in ("width", "height"):
        if getattr(settings, name) % factor:
            raise ValueError(f"{name} must be a multiple of {factor} (the VAE's scale factor), got {getattr(settings, name)}")


@torch.no_grad()
def denoise(models: VExpressModels, reference: Reference, speech: Speech, track: KeypointTrack,
            settings: GenerationSettings, latents: torch.Tensor | None = None,
            callback: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Final latents [1, 4, F, H/8, W/8] (in the UNet's dtype, at least float32; in host memory with `latents_on_host`, else on the
    models' device)."""
    width, height, num_frames = settings.width, settings.height, speech.num_frames
    check_track(track, num_frames, width, height)
    check_model_limits(models, settings)
    channels, factor = models.latent_channels, models.vae_scale_factor
    if latents is None:
        latents = initial_latents(settings.seed, num_frames, width, height, channels, factor,
                                  dtype=models.denoising_unet.dtype, encoder_layers=published_noise_draws(models))
    expected = (1, channels, num_frames, height // factor, width // factor)
    if tuple(latents.shape) != expected:
        raise ValueError(f"initial latents have shape {tuple(latents.shape)}, expected {expected}")
    budget = settings.conditioning_budget_mb * 2**20
    audio_tokens = audio_token_source(models, speech, settings.num_pad_audio_frames, budget)
    audio_tokens.fill()
    kps_features = kps_feature_source(models, track, width, height, budget - audio_tokens.kept_bytes)
    kps_features.fill()
    conditions = Conditions(reference.features, audio_tokens, kps_features)
    unet = CompiledWithFallback(models.denoising_unet) if settings.compile else models.denoising_unet
    denoiser = GuidedDenoiser(unet, conditions, settings.guidance_scale,
                              settings.reference_weight, settings.audio_weight, settings.cache_reference_kv,
                              guidance_interval=settings.speed.guidance_interval, cache=settings.speed.cache_policy)
    # A host generator, as published: the noise a scheduler adds (eta > 0) is then the seed's wherever
    # the latents are, and diffusers draws it for latents in host memory too (a CUDA generator cannot).
    generator = torch.Generator().manual_seed(settings.seed)
    latents = latents.to(accumulation_dtype(models.denoising_unet.dtype))
    if not settings.latents_on_host:
        latents = latents.to(models.device)
    shard = Shard.from_process_group()
    # Processes sizing window_batch="auto" by their own free memory would cut the windows into batches
    # differently and skip or repeat windows: all take the smallest.
    window_batch = shard.smallest(resolved_window_batch(settings, models, num_frames))
    final = sample(
        denoiser, latents, make_scheduler(settings.scheduler), settings.steps,
        context_frames=settings.context_frames, context_overlap=settings.context_overlap, blend=settings.blend,
        window_batch=window_batch, generator=generator, eta=settings.eta, callback=callback, cancel=cancel, shard=shard,
    )
    del denoiser, conditions, audio_tokens, kps_features
    release_freed_host_memory()
    return final


@torch.no_grad()
def decoded_chunks(models: VExpressModels, latents: torch.Tensor, chunk: int = 8,
                   cancel: Callable[[], bool] | None = None, tiled: bool = False) -> Iterator[torch.Tensor]:
    """Frames [n, 3, H, W] in [0, 1] (CPU; the VAE's dtype, at least float32), `chunk` frames per VAE call (spatially tiled
    with `tiled`, for large sizes on small GPUs); `cancel()` is checked before every call and
    raises `Cancelled`."""
    vae = models.vae
    frames = latents[0].permute(1, 0, 2, 3)
    for start in range(0, frames.shape[0], chunk):
        if cancel is not None and cancel():
            raise Cancelled(f"cancelled while decoding frame {start + 1}/{frames.shape[0]}")
        piece = (frames[start:start + chunk] * (1 / vae.config.scaling_factor)).to(vae.device, vae.dtype)
        images = vae.tiled_decode(piece).sample if tiled else vae.decode(piece).sample
        yield (images.to(accumulation_dtype(vae.dtype)) / 2 + 0.5).clamp(0, 1).cpu()


def frames_hwc(chunks: Iterator[torch.Tensor], deflicker: bool) -> Iterator[np.ndarray]:
    """uint8 [n, H, W, 3] chunks, optionally through the streaming 3x3x3 median filter."""
    uint8_chunks = (to_uint8(chunk.permute(0, 2, 3, 1).numpy()) for chunk in chunks)
    return MedianDeflicker().stream(uint8_chunks) if deflicker else uint8_chunks


def video_chunks(models: VExpressModels, latents: torch.Tensor, settings: GenerationSettings,
                 cancel: Callable[[], bool] | None = None) -> Iterator[np.ndarray]:
    """The output frames of final latents as uint8 [n, H, W, 3] chunks, decoded and deflickered as set."""
    decoded = decoded_chunks(models, latents, resolved_decode_chunk(settings, models), cancel, settings.vae_tiling)
    return frames_hwc(decoded, settings.deflicker)


@dataclass
class Generation:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    fps: float
    waveform: np.ndarray  # 16 kHz mono, cut to the video
    latents: torch.Tensor = field(repr=False)


def generate(models: VExpressModels, reference: Reference, speech: Speech, track: KeypointTrack,
             settings: GenerationSettings, latents: torch.Tensor | None = None,
             callback: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None) -> Generation:
    """The whole video in memory (what a ComfyUI IMAGE output needs)."""
    final = denoise(models, reference, speech, track, settings, latents, callback, cancel)
    return decoded_generation(models, final, speech, settings, cancel)


def decoded_generation(models: VExpressModels, final: torch.Tensor, speech: Speech, settings: GenerationSettings,
                       cancel: Callable[[], bool] | None = None) -> Generation:
    """The video of final latents in memory, with the speech cut to it."""
    frames = np.concatenate(list(video_chunks(models, final, settings, cancel)))
    samples = int(round(len(frames) / settings.fps * SAMPLE_RATE))
    return Generation(frames, settings.fps, speech.waveform[:samples], final)


def write_video(models: VExpressModels, reference: Reference, speech: Speech, track: KeypointTrack,
                settings: GenerationSettings, out_path: str | Path, latents: torch.Tensor | None = None,
                callback: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None) -> Path:
    """Generate and stream frames into an H.264 mp4 with the speech muxed; written atomically."""
    check_output_path(out_path)
    final = denoise(models, reference, speech, track, settings, latents, callback, cancel)
    return written_video(models, final, speech, settings, out_path, cancel)


def written_video(models: VExpressModels, final: torch.Tensor, speech: Speech, settings: GenerationSettings,
                  out_path: str | Path, cancel: Callable[[], bool] | None = None) -> Path:
    """The frames of final latents streamed into an H.264 mp4 with the speech muxed; written atomically."""
    with VideoWriter(out_path, settings.fps, audio=(speech.waveform, SAMPLE_RATE)) as writer:
        for chunk in video_chunks(models, final, settings, cancel):
            writer.write(chunk)
    return Path(out_path)


def with_overrides(settings: GenerationSettings, **changes) -> GenerationSettings:
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})
