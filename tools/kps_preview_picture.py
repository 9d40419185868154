"""The README's V-Kps picture: a published driving track (kps.pth of a sample) retargeted onto the
bundled CC0 portrait - the portrait with each frame's three keypoints (top) and the V-Kps images the
model is conditioned on, as the V-Kps Preview node shows them (bottom).

    PYTHONPATH=. python tools/kps_preview_picture.py ../shared/samples/short_case_AOC/kps.pth docs/images/vkps_preview.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vexpress_core.keypoints import draw_track, load_kps_pth, output_track

ASSETS = Path(__file__).resolve().parents[1] / "vexpress_core" / "assets"
COLUMNS = 5
TILE = 192
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # left eye, right eye, nose, as V-Kps draws them


def main(kps_path: Path, out: Path) -> None:
    portrait = Image.open(ASSETS / "portrait.png").convert("RGB")
    reference_kps = np.array(json.loads((ASSETS / "portrait_kps.json").read_text())["kps"], np.float32)
    driving = load_kps_pth(kps_path)
    size = portrait.width
    track = output_track(reference_kps, driving, size, size, len(driving), "offset_retarget")
    drawn = draw_track(track, size, size)
    sheet = Image.new("RGB", (COLUMNS * TILE, 2 * TILE), (20, 20, 20))
    indices = np.linspace(0, len(track) - 1, COLUMNS).round().astype(int).tolist()
    for column, index in enumerate(indices):
        photo = portrait.resize((TILE, TILE), Image.LANCZOS)
        pen = ImageDraw.Draw(photo)
        for (x, y), colour in zip(track.points[index] * TILE / size, COLOURS):
            pen.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour, outline=(255, 255, 255))
        sheet.paste(photo, (column * TILE, 0))
        sheet.paste(Image.fromarray(drawn[index]).resize((TILE, TILE), Image.LANCZOS), (column * TILE, TILE))
    sheet.save(out, optimize=True)
    print(f"wrote {out} (frames {indices})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
