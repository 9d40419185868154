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
from .keypoints import KeypointTrack, draw_track
from .models import reference_features
from .sampling import Cancelled, CompiledWithFallback, Conditions, GuidedDenoiser, Progress, blend_weights, check_context, context_windows, make_scheduler, sample
from .video import MedianDeflicker, VideoWriter, check_output_path, to_uint8



@dataclass(frozen=True)
class GenerationSettings:
    """Defaults are the published ones."""

    width: int = 512
    height: int = 512
    fps: float = 30.0
    steps: int = 25
    guidance_scale: float = 3.5
    reference_weight: float = 0.95
    audio_weight: float = 3.0
    context_frames: int = 24
    context_overlap: int = 4
    blend: str = "mean"
    scheduler: str = "ddim"
    seed: int = 42
    eta: float = 0.0
    num_pad_audio_frames: int = 2
    window_batch: int | str = "auto"
    decode_chunk: int | str = "auto"
    deflicker: bool = True
    cache_reference_kv: bool = True
    latents_on_host: bool = False
    compile: bool = False
    vae_tiling: bool = False
    conditioning_budget_mb: int = DEFAULT_BUDGET_MB

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 8 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.window_batch != "auto" and (not isinstance(self.window_batch, int) or self.window_batch < 1):
            raise ValueError(f"window_batch must be 'auto' or at least 1, got {self.window_batch!r}")
        if self.decode_chunk != "auto" and (not isinstance(self.decode_chunk, int) or self.decode_chunk < 1):
            raise ValueError(f"decode_chunk must be 'auto' or at least 1, got {self.decode_chunk!r}")
        if self.conditioning_budget_mb < 0:
            raise ValueError(f"conditioning_budget_mb must be 0 or more, got {self.conditioning_budget_mb}")
        check_context(self.context_frames, self.context_overlap)
        make_scheduler(self.scheduler)
        blend_weights(self.blend, 1)


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


def kps_feature_source(models: VExpressModels, track: KeypointTrack, width: int, height: int,
                       budget_bytes: int = DEFAULT_BUDGET_MB * 2**20) -> FrameCache:
    """V-Kps features [1, C, n, h, w] of any frame range; each frame drawn and run once per generation
    within the budget."""
    guider = models.v_kps_guider

    step = host_frames_per_call(width, height) if models.device.type != "cuda" else None

    def guided(start: int, stop: int) -> torch.Tensor:
        drawings = torch.from_numpy(draw_track(track, width, height, start, stop)).to(models.device)
        images = (drawings.to(guider.dtype) / 255.0).permute(3, 0, 1, 2)[None]
        return guider(images)

    def features(start: int, stop: int) -> torch.Tensor:
        if step is None:
            return guided(start, stop)
        return torch.cat([guided(first, min(first + step, stop)) for first in range(start, stop, step)], dim=2)

    return FrameCache(features, len(track), 2, budget_bytes)


def initial_latents(seed: int, num_frames: int, width: int, height: int, channels: int = 4) -> torch.Tensor:
    """The published noise: torch.randn on the CPU in fp32 from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn([1, channels, num_frames, height // 8, width // 8], generator=generator)


# Rough activation memory of one window in the denoising UNet, in multiples of one CFG-doubled
# window's latent-resolution tensor at the first block width (conservative for SD1.5 shapes).
WINDOW_ACTIVATION_FACTOR = 48
GPU_MEMORY_SHARE = 0.6


# Off a GPU, frames per pixel-space network call (V-Kps guider, VAE decoder) are limited to this many
# output pixels: their activations are the largest host allocations of a generation, and bigger
# batches only pay off for small frames (measured: 8 frames per decode is 3x the memory of 2 for
# ~20% less time at 128x128, and no faster than 4 at 256x256).
HOST_PIXELS_PER_CALL = 4 * 128 * 128
GPU_DECODE_CHUNK = 8


def host_frames_per_call(width: int, height: int) -> int:
    return max(1, HOST_PIXELS_PER_CALL // (width * height))


def resolved_decode_chunk(settings: GenerationSettings, models: VExpressModels) -> int:
    """`decode_chunk`, with "auto" resolved: 8 frames per VAE call on a GPU, by pixel count elsewhere."""
    if settings.decode_chunk != "auto":
        return settings.decode_chunk
    return GPU_DECODE_CHUNK if models.device.type == "cuda" else host_frames_per_call(settings.width, settings.height)


def resolved_window_batch(settings: GenerationSettings, models: VExpressModels, num_frames: int) -> int:
    """`window_batch`, with "auto" resolved: on a GPU as many windows as fit in a share of the free
    memory; elsewhere 1 (on CPU batching windows is no faster and costs memory: issue 12's table)."""
    if settings.window_batch != "auto":
        return settings.window_batch
    if models.device.type != "cuda":
        return 1
    unet = models.denoising_unet
    window = min(settings.context_frames, num_frames)
    per_window = (2 * window * (settings.height // 8) * (settings.width // 8) * unet.config.block_out_channels[0]
                  * unet.dtype.itemsize * WINDOW_ACTIVATION_FACTOR)
    free, _ = torch.cuda.mem_get_info(models.device)
    windows = len(context_windows(num_frames, settings.context_frames, settings.context_overlap))
    return max(1, min(windows, int(free * GPU_MEMORY_SHARE // per_window)))


def check_track(track: KeypointTrack, num_frames: int, width: int, height: int) -> None:
    if len(track) != num_frames:
        raise ValueError(f"keypoint track has {len(track)} frames, the audio needs {num_frames}; resample it (keypoints.output_track)")
    if tuple(track.frame_size) != (width, height):
        raise ValueError(f"keypoint track is in {track.frame_size} pixels, the output is {(width, height)}; scale it first")


@torch.no_grad()
def denoise(models: VExpressModels, reference: Reference, speech: Speech, track: KeypointTrack,
            settings: GenerationSettings, latents: torch.Tensor | None = None,
            callback: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Final latents [1, 4, F, H/8, W/8] (float32; in host memory with `latents_on_host`, else on the
    models' device)."""
    width, height, num_frames = settings.width, settings.height, speech.num_frames
    check_track(track, num_frames, width, height)
    if latents is None:
        latents = initial_latents(settings.seed, num_frames, width, height)
    expected = (1, models.denoising_unet.config.in_channels, num_frames, height // 8, width // 8)
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
                              settings.reference_weight, settings.audio_weight, settings.cache_reference_kv)
    generator = torch.Generator(device=models.device).manual_seed(settings.seed)
    latents = latents.to(torch.float32)
    if settings.latents_on_host:
        latents = latents.pin_memory() if models.device.type == "cuda" else latents
    else:
        latents = latents.to(models.device)
    return sample(
        denoiser, latents, make_scheduler(settings.scheduler), settings.steps,
        context_frames=settings.context_frames, context_overlap=settings.context_overlap, blend=settings.blend,
        window_batch=resolved_window_batch(settings, models, num_frames), generator=generator, eta=settings.eta, callback=callback, cancel=cancel,
    )


@torch.no_grad()
def decoded_chunks(models: VExpressModels, latents: torch.Tensor, chunk: int = 8,
                   cancel: Callable[[], bool] | None = None, tiled: bool = False) -> Iterator[torch.Tensor]:
    """Frames [n, 3, H, W] in [0, 1] (float32, CPU), `chunk` frames per VAE call (spatially tiled
    with `tiled`, for large sizes on small GPUs); `cancel()` is checked before every call and
    raises `Cancelled`."""
    vae = models.vae
    frames = latents[0].permute(1, 0, 2, 3)
    for start in range(0, frames.shape[0], chunk):
        if cancel is not None and cancel():
            raise Cancelled(f"cancelled while decoding frame {start + 1}/{frames.shape[0]}")
        piece = (frames[start:start + chunk] * (1 / vae.config.scaling_factor)).to(vae.device, vae.dtype)
        images = vae.tiled_decode(piece).sample if tiled else vae.decode(piece).sample
        yield (images / 2 + 0.5).clamp(0, 1).float().cpu()


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
    frames = np.concatenate(list(video_chunks(models, final, settings, cancel)))
    samples = int(round(len(frames) / settings.fps * SAMPLE_RATE))
    return Generation(frames, settings.fps, speech.waveform[:samples], final)


def write_video(models: VExpressModels, reference: Reference, speech: Speech, track: KeypointTrack,
                settings: GenerationSettings, out_path: str | Path, latents: torch.Tensor | None = None,
                callback: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None) -> Path:
    """Generate and stream frames into an H.264 mp4 with the speech muxed; written atomically."""
    check_output_path(out_path)
    final = denoise(models, reference, speech, track, settings, latents, callback, cancel)
    with VideoWriter(out_path, settings.fps, audio=(speech.waveform, SAMPLE_RATE)) as writer:
        for chunk in video_chunks(models, final, settings, cancel):
            writer.write(chunk)
    return Path(out_path)


def with_overrides(settings: GenerationSettings, **changes) -> GenerationSettings:
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})
