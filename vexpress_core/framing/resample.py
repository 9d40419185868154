"""Cutting plan boxes out of frames at the generation size, and the output size rule."""
from __future__ import annotations

import cv2
import numpy as np

from .plan import CropPlan, pixel_box


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` at (width, height): area averaging when shrinking (no aliasing), Lanczos when enlarging."""
    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    shrinking = width * height < image.shape[1] * image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)


def frame_region(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The (left, top, width, height) region of `frame`; parts outside the frame are filled by
    reflecting the frame at its edge (replicating when the frame is one pixel thin there)."""
    frame_height, frame_width = frame.shape[:2]
    left, top, width, height = box
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, frame_width), min(top + height, frame_height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop box {box} (left, top, width, height) lies outside the "
                         f"{frame_width}x{frame_height} frame")
    inside = frame[y0:y1, x0:x1]
    pads = (y0 - top, top + height - y1, x0 - left, left + width - x1)
    if not any(pads):
        return inside
    thin = min(inside.shape[:2]) < 2
    return cv2.copyMakeBorder(inside, *pads, cv2.BORDER_REPLICATE if thin else cv2.BORDER_REFLECT_101)


def crop_frame(frame: np.ndarray, plan: CropPlan, index: int) -> np.ndarray:
    """Frame `index`'s crop (uint8 RGB [H,W,3] at the plan's crop size)."""
    if (frame.shape[1], frame.shape[0]) != plan.frame_size:
        raise ValueError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the crop plan is for "
                         f"{plan.frame_size[0]}x{plan.frame_size[1]} frames")
    return resized(frame_region(frame, pixel_box(plan.boxes[index])), *plan.crop_size)


def even_size(width: int, height: int) -> tuple[int, int]:
    """The output size rule: an odd width or height loses its last column or row (H.264 yuv420p
    needs even sizes). A 1-pixel side cannot be made even and is refused."""
    if width < 2 or height < 2:
        raise ValueError(f"a {width}x{height} frame is too small for a video (at least 2x2)")
    return width - width % 2, height - height % 2
