"""Figures that tell a talking face from noise, measured on frames against the toy world's truth.

mouth opening   dark-pixel mass in a box below the nose, placed per frame from the true V-Kps points
                (0.3-1.0 eye distances below the nose point, 0.55 eye distances to each side),
                divided by the eye distance squared: an interior at luminance L adds (90 - L) / 60,
                clipped to [0, 1], per pixel. The same measure runs on the generated and the true frames.
lip sync        Pearson r over frames between the two opening curves.
silence         in every pause of 1 s or more (the truth's opening rule gives 0 throughout), the
                generated opening's mean, as a fraction of the way from the truth's closed level to
                its median opening while speaking (0 = closed as in the truth, 1 = as open as speech).
pose            per frame, the centroid of the face's skin (pixels within 40 RGB levels of the
                reference's skin, sampled between the eyes and the nose) in the generated vs the
                true frame, in pixels; a frame with no skin counts as half the frame side.
picture         PSNR over the whole clip against the true frames, next to the reference-copy
                baseline (the reference picture on every frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAUSE_SECONDS = 1.0
SKIN_TOLERANCE = 40.0


def luminance(frames: np.ndarray) -> np.ndarray:
    return frames[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def mouth_opening_measure(frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Dark mass in the mouth box of each frame [N] (frames uint8 [N, H, W, 3], points [N, 3, 2])."""
    height, width = frames.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    values = []
    for frame, (left, right, nose) in zip(frames, points):
        across = right - left
        eye_distance = float(np.linalg.norm(across))
        across = across / max(eye_distance, 1e-6)
        down = np.array([-across[1], across[0]], np.float32)
        u = (xs - nose[0]) * across[0] + (ys - nose[1]) * across[1]
        v = (xs - nose[0]) * down[0] + (ys - nose[1]) * down[1]
        inside = (np.abs(u) <= 0.55 * eye_distance) & (v >= 0.3 * eye_distance) & (v <= 1.0 * eye_distance)
        darkness = np.clip((90.0 - luminance(frame)) / 60.0, 0.0, 1.0)
        values.append(float(darkness[inside].sum()) / max(eye_distance ** 2, 1e-6))
    return np.array(values, np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def pause_frames(true_opening: np.ndarray, fps: float) -> np.ndarray:
    """Frames inside runs of closed mouth (rule opening 0) lasting PAUSE_SECONDS or more."""
    closed = true_opening <= 0.0
    selected = np.zeros_like(closed)
    start = None
    for index, value in enumerate(np.append(closed, False)):
        if value and start is None:
            start = index
        elif not value and start is not None:
            if index - start >= PAUSE_SECONDS * fps:
                selected[start:index] = True
            start = None
    return selected


def silence_opening(generated: np.ndarray, truth: np.ndarray, true_rule: np.ndarray, fps: float) -> float | None:
    """The generated opening during long pauses, 0 = the truth's closed level, 1 = its speaking median
    (None when the clip has no pause of PAUSE_SECONDS)."""
    pauses = pause_frames(true_rule, fps)
    speaking = true_rule > 0
    if not pauses.any() or not speaking.any():
        return None
    closed, open_ = float(np.median(truth[pauses])), float(np.median(truth[speaking]))
    return (float(generated[pauses].mean()) - closed) / max(open_ - closed, 1e-6)


def skin_colour(reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mean colour of a small patch halfway between the eye line's middle and the nose."""
    left, right, nose = points
    centre = ((left + right) / 2 + nose) / 2
    x, y = int(round(centre[0])), int(round(centre[1]))
    patch = reference[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].reshape(-1, 3).astype(np.float32)
    return patch.mean(axis=0)


def skin_centroids(frames: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Centroid (x, y) of skin-coloured pixels per frame [N, 2]; NaN where there is none."""
    distance = np.linalg.norm(frames.astype(np.float32) - skin, axis=-1)
    mask = distance <= SKIN_TOLERANCE
    height, width = frames.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width]
    counts = mask.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask * xs).sum(axis=(1, 2)) / counts
        cy = (mask * ys).sum(axis=(1, 2)) / counts
    return np.stack([cx, cy], axis=-1)


def centroid_error(generated: np.ndarray, truth: np.ndarray, skin: np.ndarray) -> float:
    """Mean distance in pixels between the skin centroids; frames without skin count as half the side."""
    error = np.linalg.norm(skin_centroids(generated, skin) - skin_centroids(truth, skin), axis=-1)
    return float(np.nan_to_num(error, nan=generated.shape[1] / 2).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


@dataclass(frozen=True)
class Scores:
    lip_sync_r: float
    silence: float | None
    centroid_px: float
    psnr_db: float
    baseline_psnr_db: float

    def row(self) -> str:
        silence = "-" if self.silence is None else f"{self.silence:.2f}"
        return (f"{self.lip_sync_r:6.3f} | {silence:>7} | {self.centroid_px:6.2f} | {self.psnr_db:6.2f} | "
                f"{self.baseline_psnr_db:6.2f} | {self.psnr_db - self.baseline_psnr_db:+6.2f}")


def scores(generated: np.ndarray, truth: np.ndarray, points: np.ndarray, reference: np.ndarray,
           reference_points: np.ndarray, true_rule: np.ndarray, fps: float) -> Scores:
    """All figures of one generated clip against its truth (frames uint8 [N, H, W, 3])."""
    count = min(len(generated), len(truth))
    generated, truth, points, true_rule = generated[:count], truth[:count], points[:count], true_rule[:count]
    generated_opening = mouth_opening_measure(generated, points)
    true_opening = mouth_opening_measure(truth, points)
    baseline = np.broadcast_to(reference, truth.shape)
    return Scores(
        lip_sync_r=pearson(generated_opening, true_opening),
        silence=silence_opening(generated_opening, true_opening, true_rule, fps),
        centroid_px=centroid_error(generated, truth, skin_colour(reference, reference_points)),
        psnr_db=psnr(generated, truth),
        baseline_psnr_db=psnr(baseline, truth),
    )
