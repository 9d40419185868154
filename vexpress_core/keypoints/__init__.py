"""Face keypoint tracks for V-Express: the track type and its files, drawing, resampling,
retargeting and crop geometry, plus our additions: smoothing (`smoothing`), head motion from
speech (`speech_motion`) and the preview overlay (`preview`). Detection lives in
`vexpress_core.detectors`.

A track holds three points per frame - left eye, right eye, nose, in insightface's order - in
pixel (x, y) coordinates of the frames it was taken from.
"""
from .crop import crop_box
from .drawing import KPS_COLOURS, draw_kps_image, draw_track
from .files import PUBLISHED_KPS_FRAME_SIZE, TRACK_FORMAT_VERSION, load_any_track, load_kps_pth, load_track, save_track
from .resampling import RESAMPLE_MODES, default_resample_mode, resample_track
from .retargeting import RETARGET_MODES, RetargetContext, RetargetMode, output_track, retarget_track
from .smoothing import DEFAULT_SMOOTH, smoothed_track
from . import speech_motion  # registers the speech_motion retarget mode
from .track import KeypointTrack

__all__ = [
    "KPS_COLOURS", "PUBLISHED_KPS_FRAME_SIZE", "RESAMPLE_MODES", "RETARGET_MODES", "TRACK_FORMAT_VERSION",
    "DEFAULT_SMOOTH", "KeypointTrack", "RetargetContext", "RetargetMode", "crop_box", "default_resample_mode", "draw_kps_image", "draw_track",
    "load_any_track", "load_kps_pth", "load_track", "output_track", "resample_track", "retarget_track", "save_track",
    "smoothed_track",
]
