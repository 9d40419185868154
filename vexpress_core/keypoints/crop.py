"""Crop geometry: the crop of an output aspect, centred or around a face."""
from __future__ import annotations


def crop_box(image_size: tuple[int, int], aspect: float, face_box: tuple[float, float, float, float] | None = None,
             margin: float = 0.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the largest crop with width/height = `aspect` centred on the image, or,
    given `face_box`, the smallest such crop holding the face plus `margin` x its size on every side,
    kept inside the image (shrunk if the image is too small)."""
    width, height = image_size
    if face_box is None:
        crop_w = min(width, height * aspect)
        centre_x, centre_y = width / 2, height / 2
    else:
        x0, y0, x1, y1 = face_box
        size = max(x1 - x0, y1 - y0)
        need_w, need_h = (x1 - x0) + 2 * margin * size, (y1 - y0) + 2 * margin * size
        crop_w = min(max(need_w, need_h * aspect), width, height * aspect)
        centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    crop_h = crop_w / aspect
    left = min(max(centre_x - crop_w / 2, 0.0), width - crop_w)
    top = min(max(centre_y - crop_h / 2, 0.0), height - crop_h)
    box = (round(left), round(top), round(left + crop_w), round(top + crop_h))
    return box[0], box[1], min(box[2], width), min(box[3], height)
