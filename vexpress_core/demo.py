"""The packaged demo assets: a CC0 portrait with its keypoints and a short speech clip."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEMO_SPEECH = ASSETS_DIR / "speech.wav"


def load_demo_portrait() -> tuple[np.ndarray, np.ndarray]:
    """The packaged CC0 demo portrait (RGB uint8 512x512) and its (left eye, right eye, nose) [3,2]."""
    image = cv2.cvtColor(cv2.imread(str(ASSETS_DIR / "portrait.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    kps = np.array(json.loads((ASSETS_DIR / "portrait_kps.json").read_text())["kps"], np.float32)
    return image, kps
