"""V-Kps drawings: the images of (left eye, right eye, nose) the V-Kps guider sees."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .track import KeypointTrack

KPS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))


def draw_kps_image(height: int, width: int, kps: np.ndarray) -> np.ndarray:
    """The V-Kps image (uint8 RGB [H,W,3]) of one frame's (left eye, right eye, nose)."""
    # The published code drew float32 points; doing the same arithmetic keeps int() truncation equal.
    kps = np.asarray(kps, dtype=np.float32)
    canvas = np.zeros((height, width, 3), np.uint8)
    nose = kps[2]
    for eye_index in (0, 1):
        eye = kps[eye_index]
        pair = kps[[eye_index, 2]]
        centre = (int(np.mean(pair[:, 0])), int(np.mean(pair[:, 1])))
        length = ((eye[0] - nose[0]) ** 2 + (eye[1] - nose[1]) ** 2) ** 0.5
        angle = int(math.degrees(math.atan2(eye[1] - nose[1], eye[0] - nose[0])))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), 4), angle, 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in KPS_COLOURS[eye_index]])
    for (x, y), colour in zip(kps, KPS_COLOURS):
        cv2.circle(canvas, (int(x), int(y)), 4, colour, -1)
    return canvas


def draw_track(track: KeypointTrack, width: int, height: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """V-Kps images uint8 [stop-start,H,W,3] of frames [start, stop) drawn on a (width, height) canvas."""
    points = track.scaled_to(width, height).points[start:stop]
    images = np.zeros((len(points), height, width, 3), np.uint8)
    for index, kps in enumerate(points):
        images[index] = draw_kps_image(height, width, kps)
    return images
