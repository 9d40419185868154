"""Paste-back: the generated crop resized into its box and blended through a feathered head-shaped
mask, after an optional colour match measured on the ring around the seam."""
from __future__ import annotations

import functools

import cv2
import numpy as np

from .plan import CropPlan, pixel_box
from .resample import resized

DEFAULT_FEATHER = 0.08
HEAD_WIDTH = 1.3  # the mask's ellipse is this x the face box wide ...
HEAD_HEIGHT = 1.3  # ... and this x as tall ...
HEAD_RISE = 0.08  # ... centred this x the face height above the face box's centre (hair, forehead)
STD_RATIO_LIMITS = (0.5, 2.0)  # the colour match never scales contrast beyond these
RING_SAMPLES = 20000  # ring pixels the colour statistics are measured on


@functools.lru_cache(maxsize=16)
def _mask_and_ring(width: int, height: int, face: tuple[int, int, int, int],
                   feather: int) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = face
    face_width, face_height = max(x1 - x0, 1), max(y1 - y0, 1)
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2 - HEAD_RISE * face_height
    centre_x, centre_y = min(max(centre_x, 1.0), width - 1.0), min(max(centre_y, 1.0), height - 1.0)
    room = feather / 2 + 1
    axis_x = max(min(HEAD_WIDTH * face_width / 2, centre_x - room, width - centre_x - room), 1.0)
    axis_y = max(min(HEAD_HEIGHT * face_height / 2, centre_y - room, height - centre_y - room), 1.0)
    inside = np.zeros((height, width), np.uint8)
    scale = 16  # cv2.ellipse's fixed-point shift of 4 bits
    cv2.ellipse(inside, (round(centre_x * scale), round(centre_y * scale)),
                (round(axis_x * scale), round(axis_y * scale)), 0, 0, 360, 1, -1, cv2.LINE_8, 4)
    signed = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5) - cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    ramp = np.clip(0.5 - signed / max(feather, 1), 0.0, 1.0)
    mask = (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)
    ring = np.abs(signed) <= max(feather, 1)
    mask.flags.writeable = ring.flags.writeable = False
    return mask, ring


def head_mask(width: int, height: int, face_box: np.ndarray, feather: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask float32 [height,width] in [0,1], ring bool [height,width]) for a box of that size.

    The mask is an ellipse around the head (face box in box pixels, widened and raised), with a
    smooth edge `feather` x the box's shorter side wide: exactly 1 inside, exactly 0 outside,
    and always 0 on the box's border. The ring is the band of twice the feather width centred on
    the seam, where colours are compared."""
    feather_px = int(round(max(feather, 0.0) * min(width, height)))
    feather_px = min(feather_px, min(width, height) // 4)
    face = tuple(int(round(v)) for v in face_box)
    return _mask_and_ring(int(width), int(height), face, feather_px)


class ColourMatch:
    """Matches the generated crop's per-channel mean and std in CIELAB to the original's, measured
    on samples of the seam ring. `memory` in [0, 1) smooths the statistics over frames (0 = each
    frame on its own); `reset()` at a shot change. Works on OpenCV's 8-bit Lab with one lookup
    table per channel (the change is affine per channel), on the crop before it is enlarged."""

    def __init__(self, memory: float = 0.0):
        if not 0.0 <= memory < 1.0:
            raise ValueError(f"colour match memory must be in [0, 1), got {memory}")
        self.memory = memory
        self._stats: np.ndarray | None = None

    def reset(self) -> None:
        self._stats = None

    def __call__(self, crop: np.ndarray, crop_samples: np.ndarray, original_samples: np.ndarray) -> np.ndarray:
        """`crop` (uint8 RGB) recoloured so that its ring samples (uint8 [N,3]) match the original's."""
        if len(crop_samples) == 0:
            return crop
        samples = [cv2.cvtColor(s[None], cv2.COLOR_RGB2Lab)[0].astype(np.float64)
                   for s in (crop_samples, original_samples)]
        stats = np.stack([np.stack([s.mean(0), s.std(0)]) for s in samples])  # [2 images, mean/std, 3]
        if self._stats is not None:
            stats = self.memory * self._stats + (1 - self.memory) * stats
        self._stats = stats
        (mean_g, std_g), (mean_o, std_o) = stats
        gain = np.clip(std_o / np.maximum(std_g, 1e-3), *STD_RATIO_LIMITS)
        levels = np.arange(256, dtype=np.float64)[:, None]
        table = np.clip(np.rint((levels - mean_g) * gain + mean_o), 0, 255).astype(np.uint8)
        return cv2.cvtColor(cv2.LUT(cv2.cvtColor(crop, cv2.COLOR_RGB2Lab), table[None]), cv2.COLOR_Lab2RGB)


def _ring_samples(ring: np.ndarray, box: tuple[int, int, int, int], canvas_size: tuple[int, int],
                  crop_size: tuple[int, int]) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Up to RING_SAMPLES ring pixels inside the canvas: (rows, cols) in the canvas and in the crop."""
    left, top, width, height = box
    ys, xs = np.nonzero(ring)
    step = max(1, len(ys) // RING_SAMPLES)
    ys, xs = ys[::step], xs[::step]
    visible = (ys + top >= 0) & (ys + top < canvas_size[1]) & (xs + left >= 0) & (xs + left < canvas_size[0])
    ys, xs = ys[visible], xs[visible]
    crop_rows = np.minimum(((ys + 0.5) * crop_size[1] / height).astype(np.int64), crop_size[1] - 1)
    crop_cols = np.minimum(((xs + 0.5) * crop_size[0] / width).astype(np.int64), crop_size[0] - 1)
    return (ys + top, xs + left), (crop_rows, crop_cols)


def paste_into(canvas: np.ndarray, generated: np.ndarray, plan: CropPlan, index: int,
               feather: float = DEFAULT_FEATHER, colour: ColourMatch | None = None) -> None:
    """Blends the generated crop (uint8 [H,W,3] at the plan's crop size) into `canvas`, the
    original frame `index` (uint8 [h,w,3], possibly cut to an even size), in place. Pixels where
    the mask is 0 keep their value exactly; parts of the box outside the canvas are dropped."""
    box = pixel_box(plan.boxes[index])
    left, top, width, height = box
    face = plan.face_boxes[index] - np.array([left, top, left, top])
    mask, ring = head_mask(width, height, face, feather)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, canvas.shape[1]), min(top + height, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    inside = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    ys, xs = np.nonzero(mask[inside].any(axis=1))[0], np.nonzero(mask[inside].any(axis=0))[0]
    if len(ys) == 0:
        return
    if colour is not None:
        in_canvas, in_crop = _ring_samples(ring, box, (canvas.shape[1], canvas.shape[0]),
                                           (generated.shape[1], generated.shape[0]))
        generated = colour(generated, generated[in_crop], canvas[in_canvas])
    original = canvas[y0:y1, x0:x1]
    update = resized(generated, width, height)[inside]
    rows, cols = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
    weight = mask[inside][rows, cols, None]
    before = original[rows, cols].astype(np.float32)
    original[rows, cols] = np.rint(before + weight * (update[rows, cols].astype(np.float32) - before)).astype(np.uint8)
