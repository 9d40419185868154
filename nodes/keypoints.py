"""V-Kps: face keypoint tracks from driving frames or files, retargeted onto the reference, drawn."""
from __future__ import annotations

import os

import cv2
import numpy as np

from vexpress_core.detectors import extract_track
from vexpress_core.keypoints import DEFAULT_SMOOTH, draw_track, load_any_track, smoothed_track
from vexpress_core.keypoints.preview import overlay_track
from vexpress_core.orchestration import PreparedReference, driving_track, track_phase

from . import choices, runtime
from .detectors import detector_for
from .schema import Boolean, Combo, Float, Int, Link, Node, Output, validation
from .types import AUDIO, IMAGE, KPS, MODELS, REFERENCE, SpeechInput, image_to_uint8, uint8_to_image

TRACK_SUFFIXES = (".pth", ".pt", ".npz", ".json")


def track_files() -> list[str]:
    folder = runtime.input_directory()
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(TRACK_SUFFIXES))


class VExpressKpsExtract(Node):
    DISPLAY_NAME = "V-Express V-Kps Extract"
    DESCRIPTION = (
        "Finds the face in every driving frame and records its eyes and nose (the V-Kps track). Frames where no face "
        "is found are filled in from their neighbours. Connect the images and fps of Get Video Components (or a "
        "VideoHelperSuite loader). Cancel stops it within one frame."
    )
    INPUTS = (
        Link("images", IMAGE, "Driving video frames [F,H,W,3]. Any length; it is resampled to the audio later."),
        Float("fps", 30.0, 1.0, 120.0, "Frame rate of the driving frames (Get Video Components' fps). Used by 'time' resampling; typically 24-30.", step=0.01),
        Combo("detector", choices.detector_names, "Face detector. auto = insightface when the model folder has insightface_models/ and the package is installed, else retinaface.", default="auto"),
        Int("face_index", -1, -1, 32, "-1 = the largest face in each frame; 0, 1, ... = faces counted from the left."),
        Float("smooth", DEFAULT_SMOOTH, 0.0, 3.0, "Jitter smoothing of the detected keypoints (speed-adaptive: fast head moves and blinks stay). 0 = raw detections; 1 = default; up to 3 for a very shaky detector.", step=0.05, optional=True),
        Link("models", MODELS, "Optional: only needed to find insightface_models/ in the model folder.", optional=True),
    )
    OUTPUTS = (Output(KPS, "kps", "The driving keypoint track, in the driving frames' pixels, with their fps."),)

    @classmethod
    def execute(cls, images, fps, detector, face_index, smooth=DEFAULT_SMOOTH, models=None):
        if len(images) < 1:
            raise ValueError("V-Kps Extract got no frames: connect the images of a video")
        finder = detector_for(detector, None if models is None else models.model_dir)
        frames = (image_to_uint8(frame) for frame in images)
        try:
            track = extract_track(frames, finder, fps, None if face_index < 0 else face_index,
                                  progress=runtime.frame_progress(len(images)), total=len(images))
        except ValueError as error:
            if "no face found" not in str(error):
                raise
            raise ValueError(f"{error}: connect a driving video that shows a face (or try face_index -1 / another "
                             "detector), or use V-Kps Retarget's fix_face mode without a driving track") from error
        return (smoothed_track(track, smooth),)


class VExpressKpsLoad(Node):
    DISPLAY_NAME = "V-Express V-Kps Load"
    DESCRIPTION = (
        "Loads a keypoint track file from ComfyUI's input folder: a published kps.pth (512x512 coordinates, no fps) "
        "or a .npz/.json track saved by this pack."
    )
    INPUTS = (
        Combo("file", track_files, "A .pth (published kps.pth), .npz or .json track in ComfyUI/input/."),
        Float("fps", 0.0, 0.0, 120.0, "Frame rate of the track; 0 keeps the file's (published kps.pth files have none: then use 'stretch' resampling). Typically 24-30.", step=0.01),
        Float("smooth", 0.0, 0.0, 3.0, "Jitter smoothing of the loaded track (speed-adaptive: fast head moves and blinks stay). 0 = as in the file; 1 = what V-Kps Extract applies.", step=0.05, optional=True),
    )
    OUTPUTS = (Output(KPS, "kps", "The keypoint track from the file."),)

    @classmethod
    def validate_inputs(cls, file):
        path = runtime.annotated_filepath(file)
        if not os.path.isfile(path):
            return f"keypoint track file not found: {file} (put it in ComfyUI/input/)"
        return validation(load_any_track, path)

    @classmethod
    def fingerprint_inputs(cls, file, fps, smooth=0.0):
        """Runs again when the file changes on disk under the same name."""
        path = runtime.annotated_filepath(file)
        return os.stat(path).st_mtime_ns if os.path.isfile(path) else None

    @classmethod
    def execute(cls, file, fps, smooth=0.0):
        return (driving_track(kps_file=runtime.annotated_filepath(file), kps_fps=fps or None, smooth=smooth),)


class VExpressKpsRetarget(Node):
    DISPLAY_NAME = "V-Express V-Kps Interpolate / Retarget"
    DESCRIPTION = (
        "Makes the keypoint track the Sampler draws: one entry per video frame, in the reference image's pixels. "
        "fix_face keeps the reference face still (no driving track needed); no_retarget uses the driving track as "
        "is; offset_retarget moves the reference face by half the driving head motion; naive_retarget scales the "
        "whole driving track to the reference face; speech_motion (our addition, no driving track) moves the "
        "reference face with the speech: slow sway, nods at strong onsets, a still head in pauses."
    )
    INPUTS = (
        Link("reference", REFERENCE, "From Load Reference: its face keypoints and size."),
        Link("speech", AUDIO, "From Audio Encode: the number of frames and the fps to resample the track to."),
        Combo("mode", choices.retarget_names, "fix_face (still head, best lip sync), speech_motion (natural head motion from the speech, no driving video), offset_retarget (reference face, gentle head motion), naive_retarget (driving motion scaled to the reference face), no_retarget (driving track as is: faces must line up).", default="fix_face"),
        Combo("resample", choices.resample_names, "How the driving track fits the video length. stretch = spread over the whole video (published); time = play at its own fps, back and forth when shorter; auto = time when the track knows its fps.", default="auto"),
        Float("motion_scale", 1.0, 0.0, 2.0, "speech_motion: how much the head moves. 0 = still (exactly fix_face); 1 = natural (nose within 8% of the width, roll within 6 degrees); up to 2.", step=0.05, optional=True),
        Int("motion_seed", 0, 0, 2**31 - 1, "speech_motion: another seed gives another motion for the same speech.", optional=True),
        Link("kps", KPS, "Driving track (V-Kps Extract or V-Kps Load). Not needed for fix_face or speech_motion.", optional=True),
    )
    OUTPUTS = (Output(KPS, "kps", "The per-frame keypoints for the Sampler (frame count and size of the output video)."),)

    @classmethod
    def execute(cls, reference: PreparedReference, speech: SpeechInput, mode, resample, motion_scale=1.0, motion_seed=0,
                kps=None):
        return (track_phase(reference, speech.speech, kps, mode, None if resample == choices.AUTO else resample,
                            motion_scale, motion_seed),)


class VExpressKpsPreview(Node):
    DISPLAY_NAME = "V-Express V-Kps Preview"
    DESCRIPTION = (
        "Draws a keypoint track as the V-Kps images the model sees (eyes red/green, nose blue), or, with overlay, "
        "over the reference photo or the driving frames with the nose's path of the last second: see the head's "
        "motion before sampling."
    )
    INPUTS = (
        Link("kps", KPS, "Any keypoint track."),
        Int("width", 0, 0, 4096, "Canvas width; 0 = the track's own frame width (with overlay: the images' width). Recommended: the output width (512).", step=8),
        Int("height", 0, 0, 4096, "Canvas height; 0 = the track's own frame height (with overlay: the images' height).", step=8),
        Boolean("overlay", False, "Draw over `images` (one photo for every frame, or one image per track frame) instead of black.", optional=True),
        Link("images", IMAGE, "For overlay: the reference image (Load Reference's image output) or the driving frames.", optional=True),
    )
    OUTPUTS = (Output(IMAGE, "images", "One drawing per track frame."),)

    @classmethod
    def execute(cls, kps, width, height, overlay=False, images=None):
        if overlay:
            if images is None:
                raise ValueError("V-Kps Preview: overlay needs images: connect the reference image or the driving frames")
            backgrounds = np.stack([image_to_uint8(image) for image in images])
            if width or height:
                size = (width or backgrounds.shape[2], height or backgrounds.shape[1])
                backgrounds = np.stack([cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in backgrounds])
            return (uint8_to_image(overlay_track(backgrounds, kps)),)
        width = width or kps.frame_size[0]
        height = height or kps.frame_size[1]
        return (uint8_to_image(draw_track(kps, width, height)),)
