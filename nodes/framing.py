"""Full frame in, full frame out: crop the face out of a photo or video frames, paste the generated
head back into them."""
from __future__ import annotations

import numpy as np
import torch

from vexpress_core.framing import (
    AUTO,
    DEFAULT_FEATHER,
    DEFAULT_MARGIN,
    CropPlan,
    PasteSettings,
    crop_frame,
    even_size,
    observe_faces,
    pasted_chunks,
    pingpong_indices,
    plan_from_observations,
    resolved_paste_region,
)
from vexpress_core.framing.modes import crop_track, most_frontal_frame

from . import choices, runtime
from .detectors import detector_for
from .schema import Boolean, Combo, Float, Int, Link, Node, Output, check_output_size, validation
from .types import CROP_PLAN, IMAGE, KPS, MODELS, image_to_uint8, uint8_to_image


def _cancel() -> bool:
    runtime.check_interrupted()
    return False


class VExpressFaceCrop(Node):
    DISPLAY_NAME = "V-Express Face Crop"
    DESCRIPTION = (
        "Finds the face in a photo or in every video frame and cuts out a width x height crop around it: the "
        "crop boxes follow the head smoothly (no jitter), keep one size per shot and fill frames without a face "
        "from their neighbours. Outputs the crops, the crop plan for Paste Back, the faces' keypoints in crop "
        "pixels (for dubbing: V-Kps Retarget with no_retarget) and one crop to use as the reference."
    )
    INPUTS = (
        Link("images", IMAGE, "A photo or video frames [F,H,W,3] at full resolution (Load Image, Get Video Components)."),
        Int("width", 512, 64, 1024, "Crop width in pixels, a multiple of 8: the generation width. Recommended 512.", step=8),
        Int("height", 512, 64, 1024, "Crop height in pixels, a multiple of 8: the generation height. Recommended 512.", step=8),
        Float("face_margin", DEFAULT_MARGIN, 0.0, 3.0, "Room around the face box on each side, as a fraction of the face size. 0.3 frames the face as V-Express was trained; 0.5-0.8 shows more hair and neck.", step=0.05),
        Float("fps", 30.0, 1.0, 120.0, "Frame rate of the frames (Get Video Components' fps): the box smoothing spans 0.2 s. Ignored for a photo.", step=0.01),
        Combo("detector", choices.detector_names, "Face detector. auto = insightface when the model folder has insightface_models/ and the package is installed, else retinaface.", default="auto"),
        Int("face_index", -1, -1, 32, "-1 = the largest face; 0, 1, ... = faces counted from the left in the first frame where faces are found; that person is then followed."),
        Int("reference_frame", -1, -1, 100000, "Which frame's crop comes out as `reference`: -1 = the most frontal face."),
        Link("models", MODELS, "Optional: only needed to find insightface_models/ in the model folder.", optional=True),
    )
    OUTPUTS = (
        Output(IMAGE, "crops", "The face crops, one per input frame, width x height."),
        Output(CROP_PLAN, "crop_plan", "Where each crop sits in its frame: connect it to Paste Back."),
        Output(KPS, "kps", "The faces' eyes and nose in crop pixels, one entry per frame, with the fps."),
        Output(IMAGE, "reference", "One crop (reference_frame, or the most frontal face) for Load Reference (crop = stretch)."),
    )

    @classmethod
    def validate_inputs(cls, width, height):
        return validation(check_output_size, cls, width=width, height=height)

    @classmethod
    def execute(cls, images, width, height, face_margin, fps, detector, face_index, reference_frame, models=None):
        if len(images) < 1:
            raise ValueError("Face Crop got no frames: connect a photo or the images of a video")
        check_output_size(cls, width=width, height=height)
        if reference_frame >= len(images):
            raise ValueError(f"Face Crop reference_frame {reference_frame} is out of range: {len(images)} frame(s)")
        finder = detector_for(detector, None if models is None else models.model_dir)
        frames = (image_to_uint8(frame) for frame in images)
        where = "the photo" if len(images) == 1 else "the video frames"
        progress = runtime.frame_progress(2 * len(images))  # detection, then cropping
        seen = observe_faces(frames, finder, None if face_index < 0 else face_index, fps if len(images) > 1 else None,
                             lambda done, _: progress(done), where=where)
        plan = plan_from_observations(seen, (width, height), face_margin)
        crops = np.empty((len(images), height, width, 3), np.uint8)
        for index, frame in enumerate(images):
            crops[index] = crop_frame(image_to_uint8(frame), plan, index)
            progress(len(images) + index + 1)
        chosen = most_frontal_frame(seen) if reference_frame < 0 else reference_frame
        if not seen.valid[chosen]:
            raise ValueError(f"Face Crop found no face in reference_frame {chosen}; choose another frame or -1")
        return uint8_to_image(crops), plan, crop_track(plan, seen), uint8_to_image(crops[chosen:chosen + 1])


class VExpressPasteBack(Node):
    DISPLAY_NAME = "V-Express Paste Back"
    DESCRIPTION = (
        "Puts the generated face crops back into the original photo or video frames at full resolution, through a "
        "soft mask of the paste region (the whole head, or only the lower face so that a dubbed video keeps its own "
        "eyes and expression), optionally matching the colours around the seam. With a photo every frame uses it; "
        "with video frames, generated frame i goes into original frame i (back and forth when there are more "
        "generated frames). Odd sizes lose their last row/column so H.264 accepts them."
    )
    INPUTS = (
        Link("images", IMAGE, "The generated frames (V-Express Sampler), at the crop size."),
        Link("crop_plan", CROP_PLAN, "From Face Crop, made from the same original frames."),
        Link("original", IMAGE, "The full-resolution photo or video frames that went into Face Crop."),
        Combo("paste_region", choices.paste_region_names, "What is pasted back. head = the whole generated head; lower-face = below the eyes, cheek to cheek, down past the chin, following the face in every frame (the original eyes, brows and expression stay: dubbing). auto = lower-face for video frames, head for a photo.", default=AUTO),
        Float("feather", DEFAULT_FEATHER, 0.0, 0.5, "Width of the mask's soft edge as a fraction of the crop size. 0.05-0.12 hides the seam; 0 = hard edge.", step=0.01),
        Boolean("color_match", True, "Match the generated face's colours (mean and contrast in Lab) to the original around the seam."),
        Float("fps", 0.0, 0.0, 120.0, "Frame rate of the generated frames; 0 = the crop plan's (one generated frame per original frame). Set it when the Sampler ran at another fps than the video.", step=0.01),
    )
    OUTPUTS = (Output(IMAGE, "images", "The full-resolution frames, one per generated frame."),)

    @classmethod
    def execute(cls, images, crop_plan: CropPlan, original, paste_region, feather, color_match, fps):
        if len(images) < 1:
            raise ValueError("Paste Back got no generated frames")
        if len(original) != len(crop_plan):
            raise ValueError(f"Paste Back: the crop plan is for {len(crop_plan)} frame(s) but `original` has "
                             f"{len(original)}; connect the frames that went into Face Crop")
        if (original.shape[2], original.shape[1]) != crop_plan.frame_size:
            raise ValueError(f"Paste Back: `original` is {original.shape[2]}x{original.shape[1]}, the crop plan is "
                             f"for {crop_plan.frame_size[0]}x{crop_plan.frame_size[1]} frames")
        source_fps = crop_plan.fps or fps or 1.0
        indices = pingpong_indices(len(images), len(crop_plan), source_fps, fps or source_fps)
        width, height = even_size(*crop_plan.frame_size)
        result = torch.empty((len(images), height, width, 3), dtype=torch.float32)
        generated = (image_to_uint8(frame) for frame in images)
        canvas = (image_to_uint8(original[i]) for i in indices)
        region = resolved_paste_region(paste_region, dubbing=len(original) > 1)
        settings = PasteSettings(feather=feather, colour_match=color_match, region=region)
        progress = runtime.frame_progress(len(images))
        done = 0
        for chunk in pasted_chunks(generated, canvas, crop_plan, indices, settings, _cancel, progress):
            result[done:done + len(chunk)] = uint8_to_image(chunk)
            done += len(chunk)
        return (result,)
