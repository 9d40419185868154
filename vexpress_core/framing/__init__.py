"""Full frame in, full frame out: crop plans around the face, crops at the generation size, and
paste-back of generated crops into the original photo or video frames, streamed chunk by chunk."""
from .blend import (
    AUTO,
    DEFAULT_FEATHER,
    HEAD,
    LOWER_FACE,
    PASTE_REGIONS,
    ColourMatch,
    Ellipse,
    PasteRegion,
    Polygon,
    frame_mask,
    paste_into,
    paste_mask,
    resolved_paste_region,
)
from .plan import (
    DEFAULT_MARGIN,
    CropPlan,
    FaceObservations,
    gaussian_smoothed,
    kps_in_crop,
    observe_faces,
    photo_crop_plan,
    pixel_box,
    plan_from_observations,
)
from .resample import crop_frame, even_size, frame_region, resized
from .stream import PasteSettings, cropped_frames, pasted_chunks, pingpong_indices, video_frames_at

__all__ = [
    "AUTO", "DEFAULT_FEATHER", "DEFAULT_MARGIN", "HEAD", "LOWER_FACE", "PASTE_REGIONS", "ColourMatch", "CropPlan",
    "Ellipse", "FaceObservations", "PasteRegion", "PasteSettings", "Polygon", "crop_frame", "cropped_frames",
    "even_size", "frame_mask", "frame_region", "gaussian_smoothed", "kps_in_crop", "observe_faces", "paste_into",
    "paste_mask", "pasted_chunks", "photo_crop_plan", "pingpong_indices", "pixel_box", "plan_from_observations",
    "resized", "resolved_paste_region", "video_frames_at",
]
