"""Command line: `python -m vexpress_core {generate,demo,extract-kps,preview-kps,convert,make-tiny-models,download}`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from .demo import model_directory
from .dtypes import AUTO, DTYPES, resolved_dtype
from .detectors import DETECTORS, MissingBackend
from .keypoints import DEFAULT_SMOOTH, RESAMPLE_MODES, RETARGET_MODES
from .orchestration import CROP_MODES, DEFAULT_CROP, DEFAULT_FACE_MARGIN
from .cli_common import check_track_options, check_weight_storage, checked_device, progress_bar, read_image, settings_from
from .presets import DEFAULT_PRESET, PRESETS
from .sampling import BLEND_WEIGHTS, MAX_CONTEXT_FRAMES, SCHEDULERS
from .weight_storage import WEIGHT_STORAGES


def window_batch_value(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of windows >= 1, got {text!r}")
    return int(text)


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    from .pipeline import GenerationSettings

    defaults = GenerationSettings()
    parser.add_argument("--width", type=int, default=defaults.width, help="output width, a multiple of 8")
    parser.add_argument("--height", type=int, default=defaults.height, help="output height, a multiple of 8")
    parser.add_argument("--fps", type=float, help=f"frames per second (default {defaults.fps:g}; with --dub the video's)")
    parser.add_argument("--preset", choices=PRESETS.names(), default=DEFAULT_PRESET,
                        help="; ".join(f"{name}: {PRESETS[name].summary}" for name in PRESETS.names()).replace("%", "%%")
                             + ". Sets --scheduler, --steps, --guidance-interval and the --cache options; those given "
                               "explicitly win (docs/speed-presets.md)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the preset's; quality: 25)")
    parser.add_argument("--guidance", type=float, default=defaults.guidance_scale, help="classifier-free guidance scale")
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("START", "END"),
                        help="guide only the steps in [START, END) as fractions of the steps (0 1 = every step, published); "
                             "the others run the conditional half alone, half the UNet work (default: the preset's)")
    parser.add_argument("--cache-interval", type=int,
                        help="deep-feature cache: a full UNet pass at most every N steps, the shallow blocks only in "
                             "between (1 = no cache; default: the preset's)")
    parser.add_argument("--cache-threshold", type=float,
                        help="with --cache-interval: refresh early when the shallow features changed by more than this "
                             "relative amount, e.g. 0.1 (0 = by interval only; default: the preset's)")
    parser.add_argument("--reference-weight", type=float, default=defaults.reference_weight, help="0.9-1.0 recommended")
    parser.add_argument("--audio-weight", type=float, default=defaults.audio_weight, help="1.0-3.0 recommended")
    parser.add_argument("--context-frames", type=int, default=defaults.context_frames, help=f"frames per window, at most {MAX_CONTEXT_FRAMES} (the published motion modules)")
    parser.add_argument("--context-overlap", type=int, default=defaults.context_overlap)
    parser.add_argument("--blend", choices=BLEND_WEIGHTS.names(), default=defaults.blend, help="how overlapping windows are fused")
    parser.add_argument("--window-batch", type=window_batch_value, default="auto",
                        help="windows denoised together: a count (more = more memory), or auto (by free GPU memory; 1 on CPU)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--scheduler", choices=SCHEDULERS.names(),
                        help="ddim (published), dpmpp (DPM-Solver++ 2M), euler, unipc (UniPC) (default: the preset's)")
    parser.add_argument("--deflicker", action=argparse.BooleanOptionalAction, default=True, help="3x3x3 median filter")
    parser.add_argument("--dtype", choices=(AUTO, *DTYPES.names()), default=AUTO)
    parser.add_argument("--weight-storage", choices=WEIGHT_STORAGES.names(), default="dtype",
                        help="fp8_e4m3: keep the ReferenceNet's and UNet's weights as float8 (half of fp16's memory), "
                             "computing in --dtype; read .safetensors weights for the lowest peak")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--vae-tiling", action="store_true", help="decode in spatial tiles (large sizes, small GPUs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (falls back to eager on failure)")
    parser.add_argument("--low-vram", action="store_true",
                        help="keep each network on the GPU only while it runs and the latents in host memory")


def add_track_options(parser: argparse.ArgumentParser) -> None:
    """The reference crop and where the head motion comes from (generate, preview-kps)."""
    driving = parser.add_mutually_exclusive_group()
    driving.add_argument("--kps", help="keypoint track: published kps.pth, or .npz/.json from extract-kps")
    driving.add_argument("--driving-video", help="video whose face motion drives the head")
    parser.add_argument("--retarget", choices=RETARGET_MODES.names(),
                        help="default: fix_face without a driving track, naive_retarget with one; "
                             "speech_motion: head motion from the speech, no driving track")
    parser.add_argument("--kps-resample", choices=RESAMPLE_MODES.names(), help="default: time when the track knows its fps")
    parser.add_argument("--kps-fps", type=float, help="fps of a published kps.pth track (enables time resampling)")
    parser.add_argument("--face-index", type=int, help="face to use, counted from the left (default: largest)")
    parser.add_argument("--crop", choices=CROP_MODES.names(), default=DEFAULT_CROP,
                        help="center: largest centred crop of the output aspect; face: around the detected face "
                             "with --face-margin; stretch: resize the whole photo (published)")
    parser.add_argument("--detector", choices=DETECTORS.names(), default="auto")
    parser.add_argument("--smooth", type=float,
                        help="driving track jitter smoothing, 0 = off (default: 1 for --driving-video, 0 for --kps)")
    parser.add_argument("--motion-scale", type=float, default=1.0,
                        help="--retarget speech_motion: 0 = still head (fix_face), 1 = natural, up to 2")
    parser.add_argument("--motion-seed", type=int, default=0, help="--retarget speech_motion: another seed, another motion")


def distributed_state():
    """accelerate's process state under `accelerate launch` with several processes, else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState()


def face_margin(args: argparse.Namespace) -> float:
    """--face-margin, or its default for the mode: the full-frame framing's with --paste-back/--dub,
    else Load Reference's (for --crop face)."""
    from .framing.commands import is_full_frame
    from .framing.plan import DEFAULT_MARGIN

    if args.face_margin is not None:
        return args.face_margin
    return DEFAULT_MARGIN if is_full_frame(args) else DEFAULT_FACE_MARGIN


def run_generate(args: argparse.Namespace) -> Path:
    from .framing.commands import check_framing_args, is_full_frame, run_full_frame

    args = argparse.Namespace(**{**vars(args), "face_margin": face_margin(args)})
    check_framing_args(args)
    if is_full_frame(args):
        return run_full_frame(args)
    if not args.reference:
        raise ValueError("generate needs a portrait: --reference PHOTO (or --dub VIDEO to re-voice a video)")
    from .audio import load_audio
    from .checkpoint import checked_model_folder, load_models
    from .detectors import make_detector
    from .offload import placed
    from .orchestration import (Framing, denoising_phase, driving_track, framed_reference, reference_phase, speech_phase,
                                track_phase, video_phase)
    from .video import check_output_path, video_fps_and_length

    # Everything that can be checked cheaply is, before any detection, decoding or model loading.
    settings = settings_from(args)
    framing = Framing(args.crop, args.face_margin, args.face_index)
    check_track_options(args)
    out = check_output_path(args.out)
    checked_model_folder(args.models, args.weights)
    state = distributed_state()
    device = checked_device(args.device or (str(state.device) if state else None))
    check_weight_storage(args.weight_storage, device)
    if args.driving_video:
        video_fps_and_length(args.driving_video)
    driving = driving_track(args.kps, args.kps_fps, smooth=args.smooth) if args.kps else None
    image = read_image(args.reference)
    waveform = load_audio(args.audio)

    run_device = torch.device(device)
    idle_device = torch.device("cpu") if args.low_vram else run_device
    detector = make_detector(args.detector, args.models)
    framed = framed_reference(image, settings.width, settings.height, detector, framing)
    if args.driving_video:
        driving = driving_track(driving_video=args.driving_video, detector=detector, face_index=args.face_index,
                                smooth=args.smooth)
    models = load_models(args.models, args.weights, resolved_dtype(args.dtype, device), idle_device, args.weight_storage)

    def using(names, working_memory=None):  # the CLI has the device to itself: nothing to make room for
        return placed(models, names, run_device, idle_device)

    reference = reference_phase(using, framed)
    speech = speech_phase(using, waveform, settings.fps, name=str(args.audio))
    track = track_phase(reference, speech, driving, args.retarget, args.kps_resample, args.motion_scale, args.motion_seed)
    if state is not None and not state.is_main_process:
        denoising_phase(using, reference, speech, track, settings)  # this process's share of the windows
        return out
    bar, update = progress_bar(settings, speech.num_frames)
    with bar:
        video_phase(using, reference, speech, track, settings, out, callback=update)
    print(f"wrote {out}: {speech.num_frames} frames at {settings.fps} fps")
    return out


def run_demo(args: argparse.Namespace) -> Path:
    from .audio import load_audio
    from .checkpoint import load_models
    from .demo import DEMO_SPEECH, TOY_FPS, TOY_MODEL_DIR, TOY_SIZE, load_toy_reference
    from .detectors import make_detector
    from .orchestration import framed_reference, reference_phase, speech_phase, track_phase, using_models, video_phase
    from .pipeline import GenerationSettings
    from .video import check_output_path

    out = check_output_path(args.out)
    print("V-Express demo: the bundled toy model (trained here on a synthetic cartoon world, 64x64) animates a\n"
          "held-out toy face with the bundled speech. It shows the pipeline and trainer at work, not the published\n"
          "model's quality. For real results: python -m vexpress_core download MODELS_DIR, then\n"
          "python -m vexpress_core generate --models MODELS_DIR --reference photo.jpg --audio speech.wav --out out.mp4")
    settings = GenerationSettings(width=TOY_SIZE, height=TOY_SIZE, fps=TOY_FPS, steps=args.steps, seed=args.seed)
    using = using_models(load_models(TOY_MODEL_DIR))
    framed = framed_reference(load_toy_reference(), settings.width, settings.height, make_detector("retinaface"))
    reference = reference_phase(using, framed)
    speech = speech_phase(using, load_audio(DEMO_SPEECH), settings.fps)
    track = track_phase(reference, speech, None, "fix_face")
    bar, update = progress_bar(settings, speech.num_frames)
    with bar:
        video_phase(using, reference, speech, track, settings, out, callback=update)
    print(f"wrote {out}: {speech.num_frames} frames, {settings.width}x{settings.height}, {settings.fps:g} fps, with the demo speech")
    return out


def run_extract(args: argparse.Namespace) -> Path:
    from .detectors import extract_track_from_video, make_detector
    from .keypoints import save_track, smoothed_track
    from .video import check_output_path, video_fps_and_length

    if Path(args.out).suffix not in (".npz", ".json"):
        raise ValueError(f"{args.out}: keypoint tracks are saved as .npz or .json")
    check_output_path(args.out)
    video_fps_and_length(args.video)
    detector = make_detector(args.detector, args.models)
    with tqdm(desc="detecting faces", unit="frame") as bar:
        def progress(done: int, total: int | None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        track = extract_track_from_video(args.video, detector, args.face_index, progress)
    save_track(smoothed_track(track, args.smooth), args.out)
    print(f"wrote {args.out}: {len(track)} frames at {track.fps} fps, {int((~track.valid).sum())} filled")
    return Path(args.out)


def run_preview_kps(args: argparse.Namespace) -> Path:
    """The track generate would draw, over the framed reference photo, before any network runs:
    an mp4 with the speech, or a PNG strip of frames."""
    import cv2

    from .audio import SAMPLE_RATE, frame_count, load_audio
    from .detectors import make_detector
    from .keypoints.preview import overlay_track, preview_strip
    from .orchestration import Framing, driving_track, framed_reference, planned_track
    from .video import check_output_path, write_mp4

    out = check_output_path(args.out)
    if out.suffix.lower() not in (".mp4", ".png"):
        raise ValueError(f"{out}: preview-kps writes an .mp4 (with the speech) or a .png strip")
    check_track_options(args)
    waveform = load_audio(args.audio)
    num_frames = frame_count(len(waveform), SAMPLE_RATE, args.fps)
    detector = make_detector(args.detector, args.models)
    framed = framed_reference(read_image(args.reference), args.width, args.height, detector,
                              Framing(args.crop, args.face_margin, args.face_index))
    driving = driving_track(args.kps, args.kps_fps, args.driving_video, detector, args.face_index, args.smooth)
    track = planned_track(framed.keypoints, (args.width, args.height), waveform, num_frames, args.fps, driving,
                          args.retarget, args.kps_resample, args.motion_scale, args.motion_seed)
    frames = overlay_track(framed.image, track)
    if out.suffix.lower() == ".png":
        strip = preview_strip(frames, args.strip_frames, args.height)
        cv2.imwrite(str(out), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    else:
        write_mp4(frames, out, args.fps, audio=(waveform, SAMPLE_RATE))
    print(f"wrote {out}: {len(track)} frames at {args.fps} fps")
    return out


def run_convert(args: argparse.Namespace) -> None:
    from .saving import convert_weights

    convert_weights(args.src, args.dst, DTYPES[args.dtype] if args.dtype else None)


def run_make_tiny(args: argparse.Namespace) -> None:
    from .tiny import make_tiny_models

    print(f"wrote {make_tiny_models(args.dir, seed=args.seed, sd15=args.sd15)}")


def run_download(args: argparse.Namespace) -> None:
    from .download import ensure_model

    bars: list[tqdm] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=f"fetching {args.name}", unit="B", unit_scale=True))
        bars[0].update(done - bars[0].n)

    try:
        path = ensure_model(args.dir, args.name, fp16=args.fp16, insightface=args.insightface, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(f"{path} is ready; use --models {path}")


def parser() -> argparse.ArgumentParser:
    from .framing.commands import add_framing_options

    main = argparse.ArgumentParser(prog="python -m vexpress_core", description="V-Express talking-head generation")
    commands = main.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="photo + speech (+ driving keypoints) -> mp4")
    generate.add_argument("--models", required=True, type=model_directory,
                          help="model directory in the published model_ckpts layout, or 'toy': the bundled toy model "
                               "(a 64x64 cartoon trained here; use --size 64 and a toy reference picture)")
    generate.add_argument("--weights", help="folder with the five V-Express files (e.g. a training checkpoint)")
    generate.add_argument("--reference", help="portrait image (with --dub: optional, a photo to use as the face)")
    generate.add_argument("--audio", required=True, help="speech: any audio file or a video's soundtrack")
    add_track_options(generate)
    add_generation_options(generate)
    add_framing_options(generate)
    generate.set_defaults(face_margin=None)  # per mode, see face_margin()
    generate.add_argument("--out", required=True, help="output .mp4")
    generate.set_defaults(run=run_generate)

    demo = commands.add_parser("demo", help="the bundled toy model animates a bundled toy face with the bundled speech")
    demo.add_argument("out", nargs="?", default="vexpress_demo.mp4")
    demo.add_argument("--steps", type=int, default=25, help="sampling steps (the published default)")
    demo.add_argument("--seed", type=int, default=42)
    demo.set_defaults(run=run_demo)

    extract = commands.add_parser("extract-kps", help="driving video -> keypoint track (.npz or .json)")
    extract.add_argument("video")
    extract.add_argument("out")
    extract.add_argument("--models", help="model directory (for insightface's buffalo_l)")
    extract.add_argument("--detector", choices=DETECTORS.names(), default="auto")
    extract.add_argument("--face-index", type=int)
    extract.add_argument("--smooth", type=float, default=DEFAULT_SMOOTH, help="jitter smoothing strength, 0 = raw detections")
    extract.set_defaults(run=run_extract)

    preview = commands.add_parser("preview-kps", help="the head path drawn over the photo before sampling (.mp4 or .png)")
    preview.add_argument("--reference", required=True, help="portrait image")
    preview.add_argument("--audio", required=True, help="speech: sets the length (and drives speech_motion)")
    add_track_options(preview)
    preview.add_argument("--face-margin", type=float, default=DEFAULT_FACE_MARGIN,
                         help="for --crop face: space around the face box on each side, as a fraction of its size")
    preview.add_argument("--models", help="model directory (for insightface's buffalo_l)")
    preview.add_argument("--width", type=int, default=256, help="preview width (even)")
    preview.add_argument("--height", type=int, default=256, help="preview height (even)")
    preview.add_argument("--fps", type=float, default=30.0)
    preview.add_argument("--strip-frames", type=int, default=5, help="for a .png: frames side by side")
    preview.add_argument("out", help="OUT.mp4 (small video with the speech) or OUT.png (a strip of frames)")
    preview.set_defaults(run=run_preview_kps)

    convert = commands.add_parser("convert", help="check the five V-Express files strictly and write safetensors")
    convert.add_argument("src", help="model directory")
    convert.add_argument("dst", help="output folder")
    convert.add_argument("--dtype", choices=DTYPES.names())
    convert.set_defaults(run=run_convert)

    tiny = commands.add_parser("make-tiny-models", help="random-weight model directory in the published layout")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--sd15", action="store_true", help="full SD1.5 sizes (about 2.25 B parameters, 9 GB)")
    tiny.set_defaults(run=run_make_tiny)

    download = commands.add_parser("download", help="fetch the files V-Express needs from Hugging Face into DIR/NAME")
    download.add_argument("dir", help="models folder (e.g. ComfyUI/models/v-express); the model lands in DIR/NAME")
    download.add_argument("--name", default="V-Express", help="known model to fetch (default: V-Express = tk93/V-Express)")
    download.add_argument("--fp16", action="store_true", help="store the five networks as fp16 safetensors (4.5 GB instead of 9 GB)")
    download.add_argument("--insightface", action="store_true", help="also fetch insightface's buffalo_l face detector pack")
    download.set_defaults(run=run_download)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, OSError, MissingBackend) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
