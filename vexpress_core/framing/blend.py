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


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


class ColourMatch:
    """Matches the generated crop's per-channel mean and std in CIELAB to the original's, both
    measured on the seam ring. `memory` in [0, 1) smooths the statistics over frames (0 = each
    frame on its own); `reset()` at a shot change."""

    def __init__(self, memory: float = 0.0):
        if not 0.0 <= memory < 1.0:
            raise ValueError(f"colour match memory must be in [0, 1), got {memory}")
        self.memory = memory
        self._stats: np.ndarray | None = None

    def reset(self) -> None:
        self._stats = None

    def __call__(self, generated: np.ndarray, original: np.ndarray, ring: np.ndarray) -> np.ndarray:
        if not ring.any():
            return generated
        generated_lab = _lab(generated)
        samples = (generated_lab[ring], _lab(original[ring][None])[0])
        stats = np.stack([np.stack([s.mean(0), s.std(0)]) for s in samples])  # [2 images, mean/std, 3]
        if self._stats is not None:
            stats = self.memory * self._stats + (1 - self.memory) * stats
        self._stats = stats
        (mean_g, std_g), (mean_o, std_o) = stats
        gain = np.clip(std_o / np.maximum(std_g, 1e-3), *STD_RATIO_LIMITS)
        matched = (generated_lab - mean_g) * gain + mean_o
        rgb = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_Lab2RGB) * 255.0
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def paste_into(canvas: np.ndarray, generated: np.ndarray, plan: CropPlan, index: int,
               feather: float = DEFAULT_FEATHER, colour: ColourMatch | None = None) -> None:
    """Blends the generated crop (uint8 [H,W,3] at the plan's crop size) into `canvas`, the
    original frame `index` (uint8 [h,w,3], possibly cut to an even size), in place. Pixels where
    the mask is 0 keep their value exactly; parts of the box outside the canvas are dropped."""
    left, top, width, height = pixel_box(plan.boxes[index])
    face = plan.face_boxes[index] - np.array([left, top, left, top])
    mask, ring = head_mask(width, height, face, feather)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, canvas.shape[1]), min(top + height, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    inside = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    original = canvas[y0:y1, x0:x1]
    ys, xs = np.nonzero(mask[inside].any(axis=1))[0], np.nonzero(mask[inside].any(axis=0))[0]
    if len(ys) == 0:
        return
    update = resized(generated, width, height)[inside]
    if colour is not None:
        update = colour(update, original, ring[inside])
    rows, cols = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
    weight = mask[inside][rows, cols, None]
    before = original[rows, cols].astype(np.float32)
    original[rows, cols] = np.rint(before + weight * (update[rows, cols].astype(np.float32) - before)).astype(np.uint8)
