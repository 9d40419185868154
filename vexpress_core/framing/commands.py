"""`generate --paste-back` and `generate --dub VIDEO`: the command-line side of the full-frame modes."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from .blend import AUTO, DEFAULT_FEATHER, HEAD, LOWER_FACE, PASTE_REGIONS, resolved_paste_region
from .plan import DEFAULT_MARGIN
from .stream import PasteSettings

CROP_PLAN_SUFFIX = ".crop_plan.json"
PASTE_MASK_SUFFIX = ".paste_mask_{frame}.png"


def add_framing_options(generate: argparse.ArgumentParser) -> None:
    group = generate.add_argument_group("full frame in, full frame out")
    group.add_argument("--paste-back", action="store_true",
                       help="crop the face out of the full-size --reference photo, animate it and paste the head "
                            "back: the video has the photo's size (odd sizes lose their last row/column)")
    group.add_argument("--dub", metavar="VIDEO",
                       help="video dubbing: VIDEO's faces drive the head and its frames are the canvas; the speech "
                            "(--audio) replaces its sound. Longer speech plays the video back and forth; the output "
                            "keeps VIDEO's fps unless --fps is given")
    group.add_argument("--reference-frame", type=int,
                       help="with --dub: the frame whose face is the reference (default: the most frontal one); "
                            "or give a photo with --reference")
    group.add_argument("--face-margin", type=float, default=DEFAULT_MARGIN,
                       help=f"room around the face box on each side, as a fraction of the face size (default "
                            f"{DEFAULT_MARGIN} with --paste-back/--dub: the samples' framing; 0.6 for --crop face)")
    group.add_argument("--paste-region", choices=(AUTO, *PASTE_REGIONS.names()), default=AUTO,
                       help=f"what is pasted back: {HEAD} (the whole generated head) or {LOWER_FACE} (below the "
                            f"eyes, cheek to cheek, down past the chin: the original eyes, brows and expression "
                            f"stay). Default {AUTO}: {resolved_paste_region(AUTO, True)} with --dub, "
                            f"{resolved_paste_region(AUTO, False)} with --paste-back")
    group.add_argument("--feather", type=float, default=DEFAULT_FEATHER,
                       help=f"width of the soft edge of the pasted region, as a fraction of the crop size "
                            f"(default {DEFAULT_FEATHER}; 0 = hard edge)")
    group.add_argument("--color-match", action=argparse.BooleanOptionalAction, default=True,
                       help="match the generated head's colours to the original around the seam (default on)")
    group.add_argument("--save-crop-plan", nargs="?", const="", metavar="PATH",
                       help=f"write the crop plan as JSON (default PATH: the video's name + {CROP_PLAN_SUFFIX})")
    group.add_argument("--save-paste-mask", type=int, metavar="FRAME",
                       help=f"write frame FRAME of the --dub video (0 for the photo) as a PNG whose transparency is "
                            f"the paste mask: opaque where the generated face goes in, transparent where the "
                            f"original stays (next to the video: its name + {PASTE_MASK_SUFFIX.format(frame='FRAME')})")


def is_full_frame(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "paste_back", False) or getattr(args, "dub", None))


def check_framing_args(args: argparse.Namespace) -> None:
    if not is_full_frame(args) and (args.paste_region != AUTO or args.save_paste_mask is not None):
        raise ValueError("--paste-region and --save-paste-mask are for pasting back: add --paste-back or --dub VIDEO")
    if args.dub and args.paste_back:
        raise ValueError("--dub already pastes back into the video; drop --paste-back")
    if args.dub and (args.kps or args.driving_video or args.retarget):
        raise ValueError("--dub takes the head motion from the dubbed video itself; "
                         "drop --kps/--driving-video/--retarget")
    if args.reference_frame is not None and not args.dub:
        raise ValueError("--reference-frame picks a frame of the --dub video; it needs --dub VIDEO")
    if args.reference_frame is not None and args.reference:
        raise ValueError("give either --reference-frame or a --reference photo for dubbing, not both")
    if args.paste_back and not args.reference:
        raise ValueError("--paste-back needs the full-size photo as --reference")
    if not 0 <= args.feather <= 0.5:
        raise ValueError(f"--feather must be between 0 and 0.5 (a fraction of the crop size), got {args.feather}")
    if args.face_margin is not None and not 0 <= args.face_margin <= 3:
        raise ValueError(f"--face-margin must be between 0 and 3, got {args.face_margin}")


def check_reference_frame(reference_frame: int | None, video: str, length: int | None) -> None:
    """--reference-frame within the video's `length` frames, when the video says how many it has."""
    if reference_frame is not None and not 0 <= reference_frame < (length or reference_frame + 1):
        raise ValueError(f"reference frame {reference_frame} is out of range: video {video} has {length} frames "
                         "(--reference-frame counts from 0)")


def crop_plan_path(args: argparse.Namespace, out: Path) -> Path | None:
    if args.save_crop_plan is None:
        return None
    return Path(args.save_crop_plan) if args.save_crop_plan else out.with_name(out.stem + CROP_PLAN_SUFFIX)


def paste_mask_path(args: argparse.Namespace, out: Path) -> Path | None:
    if args.save_paste_mask is None:
        return None
    return out.with_name(out.stem + PASTE_MASK_SUFFIX.format(frame=args.save_paste_mask))


def check_paste_mask_frame(args: argparse.Namespace, frames: int | None, holder: str = "the crop plan") -> None:
    if args.save_paste_mask is not None and not 0 <= args.save_paste_mask < (frames or args.save_paste_mask + 1):
        raise ValueError(f"--save-paste-mask {args.save_paste_mask} is out of range: {holder} has frames "
                         f"0 to {frames - 1}")


def save_rgba(picture: np.ndarray, path: Path) -> Path:
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGBA2BGRA)):
        raise OSError(f"could not write {path}")
    return path


def run_full_frame(args: argparse.Namespace) -> Path:
    import torch
    from tqdm import tqdm

    from .. import cli_common as cli
    from ..audio import SAMPLE_RATE, load_audio
    from ..checkpoint import checked_model_folder, load_models
    from ..detectors import make_detector
    from ..dtypes import resolved_dtype
    from ..offload import placed
    from ..orchestration import driving_track, reference_phase, speech_phase, track_phase
    from ..video import check_output_path, video_fps_and_length
    from .modes import frame_photo, frame_video, full_frame_video_phase

    # Everything that can be checked cheaply is, before any detection, decoding or model loading
    # (check_framing_args: by run_generate, the one caller).
    settings = cli.settings_from(args)
    cli.check_track_options(args)
    out = check_output_path(args.out)
    plan_path = crop_plan_path(args, out)
    if plan_path is not None:
        check_output_path(plan_path)
    if args.dub:
        _, dub_length = video_fps_and_length(args.dub)  # reading its header also checks that it is a readable video
        check_reference_frame(args.reference_frame, args.dub, dub_length)
        check_paste_mask_frame(args, dub_length, f"video {args.dub}")
    else:
        check_paste_mask_frame(args, 1, "the photo")
    mask_path = paste_mask_path(args, out)
    if mask_path is not None:
        check_output_path(mask_path)
    checked_model_folder(args.models, args.weights)
    device = cli.checked_device(args.device)
    cli.check_weight_storage(args.weight_storage, device)
    region = resolved_paste_region(args.paste_region, dubbing=bool(args.dub))
    paste = PasteSettings(feather=args.feather, colour_match=args.color_match, region=region)
    margin = DEFAULT_MARGIN if args.face_margin is None else args.face_margin
    width, height = settings.width, settings.height
    if args.driving_video:
        video_fps_and_length(args.driving_video)
    driving = driving_track(args.kps, args.kps_fps) if args.kps else None
    photo = cli.read_image(args.reference) if args.reference else None
    waveform = load_audio(args.audio)

    detector = make_detector(args.detector, args.models)
    if args.dub:
        with tqdm(desc="finding faces", unit="frame") as bar:
            def progress(done: int, total: int | None) -> None:
                bar.total = total
                bar.update(done - bar.n)

            framing = frame_video(args.dub, detector, width, height, margin, args.face_index,
                                  args.reference_frame, photo, progress, len(waveform) / SAMPLE_RATE)
        settings = replace(settings, fps=args.fps or framing.plan.fps)
    else:
        framing = frame_photo(photo, detector, width, height, margin, args.face_index)
        if args.driving_video:
            driving = driving_track(driving_video=args.driving_video, detector=detector, face_index=args.face_index)
    check_paste_mask_frame(args, len(framing.plan))
    run_device = torch.device(device)
    idle_device = torch.device("cpu") if args.low_vram else run_device
    models = load_models(args.models, args.weights, resolved_dtype(args.dtype, device), idle_device, args.weight_storage)

    def using(names, working_memory=None):  # the CLI has the device to itself: nothing to make room for
        return placed(models, names, run_device, idle_device)

    reference = reference_phase(using, framing.framed_reference)
    speech = speech_phase(using, waveform, settings.fps, name=str(args.audio))
    if framing.video is not None:
        track = framing.driving_track(speech.num_frames, settings.fps)
    else:
        track = track_phase(reference, speech, driving, args.retarget, args.kps_resample)
    bar, update = cli.progress_bar(settings, speech.num_frames)
    with bar:
        full_frame_video_phase(using, framing, reference, speech, track, settings, out, paste, callback=update)
    if plan_path is not None:
        framing.plan.save(plan_path)
    if mask_path is not None:
        save_rgba(framing.mask_preview(args.save_paste_mask, paste), mask_path)
    size = "x".join(str(v) for v in framing.plan.frame_size)
    print(f"wrote {out}: {speech.num_frames} frames at {settings.fps:g} fps, the {region} pasted back into the {size} "
          f"{'video' if framing.video is not None else 'photo'}")
    return out
