"""V-Kps: face keypoint tracks from driving frames or files, retargeted onto the reference, drawn."""
from __future__ import annotations

import dataclasses
import os

from vexpress_core.keypoints import (
    DETECTORS,
    RESAMPLE_MODES,
    RETARGET_MODES,
    draw_track,
    extract_track,
    load_any_track,
    output_track,
)

from . import runtime
from .detectors import detector_for
from .types import AUDIO, CATEGORY, IMAGE, KPS, MODELS, REFERENCE, ReferenceInput, SpeechInput, image_to_uint8, uint8_to_image

TRACK_SUFFIXES = (".pth", ".pt", ".npz", ".json")


class VExpressKpsExtract:
    DESCRIPTION = (
        "Finds the face in every driving frame and records its eyes and nose (the V-Kps track). Frames where no face "
        "is found are filled in from their neighbours. Connect the images and fps of Get Video Components (or a "
        "VideoHelperSuite loader)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "extract"
    RETURN_TYPES = (KPS,)
    RETURN_NAMES = ("kps",)
    OUTPUT_TOOLTIPS = ("The driving keypoint track, in the driving frames' pixels, with their fps.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": (IMAGE, {"tooltip": "Driving video frames [F,H,W,3]. Any length; it is resampled to the audio later."}),
                "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 0.01, "tooltip": "Frame rate of the driving frames (Get Video Components' fps). Used by 'time' resampling; typically 24-30."}),
                "detector": (list(DETECTORS.names()), {"default": "auto", "tooltip": "Face detector. auto = insightface when the model folder has insightface_models/ and the package is installed, else retinaface."}),
                "face_index": ("INT", {"default": -1, "min": -1, "max": 32, "tooltip": "-1 = the largest face in each frame; 0, 1, ... = faces counted from the left."}),
            },
            "optional": {
                "models": (MODELS, {"tooltip": "Optional: only needed to find insightface_models/ in the model folder."}),
            },
        }

    def extract(self, images, fps, detector, face_index, models=None):
        finder = detector_for(detector, None if models is None else models.model_dir)
        frames = (image_to_uint8(frame) for frame in images)
        track = extract_track(frames, finder, fps, None if face_index < 0 else face_index,
                              progress=runtime.frame_progress(len(images)), total=len(images))
        return (track,)


class VExpressKpsLoad:
    DESCRIPTION = (
        "Loads a keypoint track file from ComfyUI's input folder: a published kps.pth (512x512 coordinates, no fps) "
        "or a .npz/.json track saved by this pack."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (KPS,)
    RETURN_NAMES = ("kps",)
    OUTPUT_TOOLTIPS = ("The keypoint track from the file.",)

    @classmethod
    def INPUT_TYPES(cls):
        folder = runtime.input_directory()
        files = []
        if folder and os.path.isdir(folder):
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(TRACK_SUFFIXES))
        return {
            "required": {
                "file": (files, {"tooltip": "A .pth (published kps.pth), .npz or .json track in ComfyUI/input/."}),
                "fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 120.0, "step": 0.01, "tooltip": "Frame rate of the track; 0 keeps the file's (published kps.pth files have none: then use 'stretch' resampling). Typically 24-30."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        path = runtime.annotated_filepath(file)
        if not os.path.isfile(path):
            return f"keypoint track file not found: {file} (put it in ComfyUI/input/)"
        return True

    def load(self, file, fps):
        track = load_any_track(runtime.annotated_filepath(file))
        return (dataclasses.replace(track, fps=fps) if fps > 0 else track,)


class VExpressKpsRetarget:
    DESCRIPTION = (
        "Makes the keypoint track the Sampler draws: one entry per video frame, in the reference image's pixels. "
        "fix_face keeps the reference face still (no driving track needed); no_retarget uses the driving track as "
        "is; offset_retarget moves the reference face by half the driving head motion; naive_retarget scales the "
        "whole driving track to the reference face."
    )
    CATEGORY = CATEGORY
    FUNCTION = "retarget"
    RETURN_TYPES = (KPS,)
    RETURN_NAMES = ("kps",)
    OUTPUT_TOOLTIPS = ("The per-frame keypoints for the Sampler (frame count and size of the output video).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": (REFERENCE, {"tooltip": "From Load Reference: its face keypoints and size."}),
                "speech": (AUDIO, {"tooltip": "From Audio Encode: the number of frames and the fps to resample the track to."}),
                "mode": (list(RETARGET_MODES.names()), {"default": "fix_face", "tooltip": "fix_face (still head, best lip sync), offset_retarget (reference face, gentle head motion), naive_retarget (driving motion scaled to the reference face), no_retarget (driving track as is: faces must line up)."}),
                "resample": (["auto", *RESAMPLE_MODES.names()], {"default": "auto", "tooltip": "How the driving track fits the video length. stretch = spread over the whole video (published); time = play at its own fps, back and forth when shorter; auto = time when the track knows its fps."}),
            },
            "optional": {
                "kps": (KPS, {"tooltip": "Driving track (V-Kps Extract or V-Kps Load). Not needed for fix_face."}),
            },
        }

    def retarget(self, reference: ReferenceInput, speech: SpeechInput, mode, resample, kps=None):
        track = output_track(reference.keypoints, kps, reference.width, reference.height, speech.num_frames, mode,
                             None if resample == "auto" else resample, speech.fps)
        return (track,)


class VExpressKpsPreview:
    DESCRIPTION = "Draws a keypoint track as the V-Kps images the model sees (eyes red/green, nose blue)."
    CATEGORY = CATEGORY
    FUNCTION = "draw"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("One V-Kps drawing per track frame.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "kps": (KPS, {"tooltip": "Any keypoint track."}),
                "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Canvas width; 0 = the track's own frame width. Recommended: the output width (512)."}),
                "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Canvas height; 0 = the track's own frame height."}),
            }
        }

    def draw(self, kps, width, height):
        width = width or kps.frame_size[0]
        height = height or kps.frame_size[1]
        return (uint8_to_image(draw_track(kps, width, height)),)
