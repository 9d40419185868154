"""Paste-back: the generated crop resized into its box and blended through a feathered mask of a
paste region (`head`: the whole head; `lower-face`: below the eyes, for dubbing), after an
optional colour match measured on the ring around the seam."""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ..registry import Registry
from .plan import CropPlan, pixel_box
from .resample import resized

DEFAULT_FEATHER = 0.08
HEAD, LOWER_FACE, AUTO = "head", "lower-face", "auto"
HEAD_WIDTH = 1.3  # the head's ellipse is this x the face box wide ...
HEAD_HEIGHT = 1.3  # ... and this x as tall ...
HEAD_RISE = 0.08  # ... centred this x the face height above the face box's centre (hair, forehead)
# The lower face in face scales (about the eye distance) from the eye points: a photographed face's
# lower eyelids are about 0.15 below them (the toy world's cartoon eyes up to 0.35), its mouth about
# 1.1, its chin about 1.8 (lower with the jaw open); a face is about 2.2 wide.
LOWER_FACE_TOP = 0.4
LOWER_FACE_BOTTOM = 2.3
LOWER_FACE_HALF_WIDTH = 1.05
NOSE_DROP_SCALE = 1.25  # the face scale is at least this x the nose's drop below the eye line
OUTLINE_CORNERS = 48
FIXED_POINT_BITS = 4  # cv2's drawing functions take coordinates with this many fractional bits
STD_RATIO_LIMITS = (0.5, 2.0)  # the colour match never scales contrast beyond these
RING_SAMPLES = 20000  # ring pixels the colour statistics are measured on


@dataclass(frozen=True)
class Ellipse:
    """An axis-aligned filled ellipse: centre (x, y) and semi-axes in 1/16 box pixels."""

    centre: tuple[int, int]
    axes: tuple[int, int]

    def draw(self, inside: np.ndarray) -> None:
        cv2.ellipse(inside, self.centre, self.axes, 0, 0, 360, 1, -1, cv2.LINE_8, FIXED_POINT_BITS)


@dataclass(frozen=True)
class Polygon:
    """A filled polygon with corners (x, y) in 1/16 box pixels, cleared within `border` pixels of
    the box's edges."""

    corners: tuple[tuple[int, int], ...]
    border: int

    def draw(self, inside: np.ndarray) -> None:
        cv2.fillPoly(inside, [np.array(self.corners, np.int32)], 1, cv2.LINE_8, FIXED_POINT_BITS)
        height, width = inside.shape
        inside[:self.border], inside[height - self.border:] = 0, 0
        inside[:, :self.border], inside[:, width - self.border:] = 0, 0


Outline = Ellipse | Polygon
OutlineBuilder = Callable[[int, int, np.ndarray, np.ndarray, int], Outline]


@dataclass(frozen=True)
class PasteRegion:
    """`outline(box width, box height, face box [4] and (left eye, right eye, nose) [3,2] in box
    pixels, feather in pixels)` gives the outline the mask is built from; `ring` is the half-width
    of the band the colours are compared on, in feathers, about the middle of the mask's soft edge."""

    outline: OutlineBuilder
    ring: float = 1.0


PASTE_REGIONS: Registry[PasteRegion] = Registry("paste region")


def _fixed(value: float) -> int:
    return round(value * (1 << FIXED_POINT_BITS))


def head_outline(width: int, height: int, face_box: np.ndarray, kps: np.ndarray, feather: int) -> Ellipse:
    """The whole head: an ellipse around the face box, widened and raised (hair, forehead), whose
    mask's soft edge ends inside the box."""
    x0, y0, x1, y1 = (int(round(v)) for v in face_box)
    face_width, face_height = max(x1 - x0, 1), max(y1 - y0, 1)
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2 - HEAD_RISE * face_height
    centre_x, centre_y = min(max(centre_x, 1.0), width - 1.0), min(max(centre_y, 1.0), height - 1.0)
    room = feather / 2 + 1
    axis_x = max(min(HEAD_WIDTH * face_width / 2, centre_x - room, width - centre_x - room), 1.0)
    axis_y = max(min(HEAD_HEIGHT * face_height / 2, centre_y - room, height - centre_y - room), 1.0)
    return Ellipse((_fixed(centre_x), _fixed(centre_y)), (_fixed(axis_x), _fixed(axis_y)))


def _face_axes(kps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(eye midpoint, unit vector along the eye line (left to right eye), unit vector down the face,
    face scale in pixels) of (left eye, right eye, nose) points. The scale is the eye distance, or
    more when the eye-to-nose drop says so (a head turned sideways narrows the eyes, not the drop)."""
    left, right, nose = np.asarray(kps, np.float64)[:3]
    middle = (left + right) / 2
    eye_distance = float(np.linalg.norm(right - left))
    across = (right - left) / eye_distance if eye_distance > 0 else np.array([1.0, 0.0])
    down = np.array([-across[1], across[0]])
    drop = float((nose - middle) @ down)
    return middle, across, down, max(eye_distance, NOSE_DROP_SCALE * drop)


def lower_face_outline(width: int, height: int, face_box: np.ndarray, kps: np.ndarray, feather: int) -> Polygon:
    """Below the eye line: the lower half of an ellipse with its flat top LOWER_FACE_TOP under the
    eyes, LOWER_FACE_HALF_WIDTH to each side of the nose and reaching LOWER_FACE_BOTTOM down, in
    face scales, turned with the eye line. It is drawn `feather` / 2 inside that outline, so the
    mask's soft edge lies within it and the eyes keep their pixels whatever the feather."""
    middle, across, down, scale = _face_axes(kps)
    inset = feather / 2
    centre_u = float((np.asarray(kps, np.float64)[2] - middle) @ across)
    top = LOWER_FACE_TOP * scale + inset
    half_width = max(LOWER_FACE_HALF_WIDTH * scale - inset, 1.0)
    depth = max(LOWER_FACE_BOTTOM * scale - inset - top, 1.0)
    angles = np.linspace(0.0, np.pi, OUTLINE_CORNERS)
    u, v = centre_u + half_width * np.cos(angles), top + depth * np.sin(angles)
    corners = middle + u[:, None] * across + v[:, None] * down
    return Polygon(tuple((_fixed(x), _fixed(y)) for x, y in corners), feather // 2 + 1)


PASTE_REGIONS.register(HEAD, PasteRegion(head_outline))
# The lower face's ring is its soft edge alone: twice as wide, it would reach the eyes above or the
# mouth below, which the new speech changes, and skew the colour match.
PASTE_REGIONS.register(LOWER_FACE, PasteRegion(lower_face_outline, ring=0.5))


def resolved_paste_region(name: str, dubbing: bool) -> str:
    """The PASTE_REGIONS name for `name`, where `auto` means lower-face when dubbing a video (its own
    eyes, brows and expression stay; only what the new speech moves changes) and head for a photo
    (the whole generated head moves over the still photo, so all of it is pasted)."""
    if name == AUTO:
        return LOWER_FACE if dubbing else HEAD
    return name


@functools.lru_cache(maxsize=16)
def _mask_and_ring(width: int, height: int, outline: Outline, feather: int,
                   ring_width: float) -> tuple[np.ndarray, np.ndarray]:
    inside = np.zeros((height, width), np.uint8)
    outline.draw(inside)
    signed = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5) - cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    ramp = np.clip(0.5 - signed / max(feather, 1), 0.0, 1.0)
    mask = (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)
    ring = np.abs(signed) <= max(ring_width * feather, 1)
    mask.flags.writeable = ring.flags.writeable = False
    return mask, ring


def paste_mask(plan: CropPlan, index: int, region: str = HEAD,
               feather: float = DEFAULT_FEATHER) -> tuple[np.ndarray, np.ndarray]:
    """(mask float32 [height,width] in [0,1], ring bool [height,width]) over frame `index`'s crop
    box (`pixel_box`), for a PASTE_REGIONS name.

    The mask has a smooth edge `feather` x the box's shorter side wide: exactly 1 inside, exactly 0
    outside, and always 0 on the box's border. The ring is the band centred on the seam where
    colours are compared (the head's: twice the feather wide; the lower face's: the soft edge)."""
    left, top, width, height = pixel_box(plan.boxes[index])
    feather_px = int(round(max(feather, 0.0) * min(width, height)))
    feather_px = min(feather_px, min(width, height) // 4)
    corner = np.array([left, top])
    chosen = PASTE_REGIONS[region]
    outline = chosen.outline(width, height, plan.face_boxes[index] - np.tile(corner, 2), plan.kps[index] - corner,
                             feather_px)
    return _mask_and_ring(width, height, outline, feather_px, chosen.ring)


def frame_mask(plan: CropPlan, index: int, region: str = HEAD, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """The paste mask of frame `index` over the whole original frame (float32 [h,w] in [0,1]):
    where the output shows the generated crop (1), the original (0) or a blend."""
    left, top, width, height = pixel_box(plan.boxes[index])
    frame_width, frame_height = plan.frame_size
    full = np.zeros((frame_height, frame_width), np.float32)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, frame_width), min(top + height, frame_height)
    if x1 > x0 and y1 > y0:
        full[y0:y1, x0:x1] = paste_mask(plan, index, region, feather)[0][y0 - top:y1 - top, x0 - left:x1 - left]
    return full


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
               feather: float = DEFAULT_FEATHER, colour: ColourMatch | None = None, region: str = HEAD) -> None:
    """Blends the generated crop (uint8 [H,W,3] at the plan's crop size) into `canvas`, the
    original frame `index` (uint8 [h,w,3], possibly cut to an even size), in place, through the
    mask of the paste `region`. Pixels where the mask is 0 keep their value exactly; parts of the
    box outside the canvas are dropped."""
    box = pixel_box(plan.boxes[index])
    left, top, width, height = box
    mask, ring = paste_mask(plan, index, region, feather)
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
