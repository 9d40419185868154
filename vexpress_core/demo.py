"""The packaged demo assets: a CC0 portrait with its keypoints, a short speech clip, and the toy V-Express with its reference picture."""
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


# The toy V-Express (trained by `python training toy train` on the synthetic world of training/toy):
# a talking 64x64 cartoon in the published layout, and a held-out toy identity to animate with it.
TOY_MODEL_NAME = "toy"
TOY_MODEL_DIR = ASSETS_DIR / "toy_model"
TOY_REFERENCE = ASSETS_DIR / "toy_reference.png"
TOY_SIZE = 64
TOY_FPS = 25.0


def model_directory(value: str | Path) -> Path:
    """A --models value as a folder: `toy` is the bundled toy model unless a folder of that name exists."""
    path = Path(value).expanduser()
    if str(value) == TOY_MODEL_NAME and not path.exists():
        return TOY_MODEL_DIR
    return path


def load_toy_reference() -> np.ndarray:
    """The bundled toy reference picture (RGB uint8 64x64): a held-out identity, neutral pose, mouth closed."""
    return cv2.cvtColor(cv2.imread(str(TOY_REFERENCE), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
