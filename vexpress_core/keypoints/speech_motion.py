"""Head motion from speech: a V-Kps track for a photo when there is no driving video.

Our addition - the published V-Express has no audio-to-pose model; without a driving video its
only choice is `fix_face`, a frozen head. Here the reference keypoints (left eye, right eye,
nose) are moved by a small rigid head: slow seeded sway (yaw, pitch, roll, translation, a little
lean in and out), a nod at each strong speech onset, and stillness in pauses. The speech comes
from the same 16 kHz audio the model hears: its loudness envelope, onsets and pauses (librosa).

Everything is deterministic for a given (audio, frame count, fps, seed, motion_scale);
motion_scale = 0 gives exactly `fix_face`. At motion_scale = 1 the motion stays within
`LIMITS` (checked on the result, shrunk if a rare peak would leave them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import librosa
import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d

from ..audio import SAMPLE_RATE
from .retargeting import RETARGET_MODES, RetargetContext, RetargetMode

HOP_SECONDS = 0.01
# Relative to the clip's loud level (95th percentile of frame loudness).
SPEECH_THRESHOLD_DB = -30.0
ENVELOPE_RANGE_DB = 40.0
SILENCE_RMS = 1e-4  # about -80 dBFS: quieter frames are silence whatever the clip's level
# A pause shorter than ~0.3 s between words keeps the head moving; the gate opens and closes smoothly.
GATE_HOLD_SECONDS = 0.3
GATE_SMOOTHING_SECONDS = 0.15
IDLE_MOTION = 0.1  # pace of the sway in silence, as a share of its pace in speech
SPEECH_LOUDNESS = 0.7  # envelope value at which the sway runs at its nominal pace
NOD_MIN_GAP_SECONDS = 0.4
NOD_MIN_STRENGTH = 0.35
NOD_SECONDS = 0.45

# Amplitudes at motion_scale = 1 (degrees; translations in eye distances; scale as a log factor),
# about the calm end of the sample clips' own motion.
SWAY = {"yaw": 4.0, "pitch": 2.0, "roll": 1.8, "shift_x": 0.07, "shift_y": 0.04, "log_scale": 0.012}
SWAY_SECONDS = {"yaw": 0.5, "pitch": 0.35, "roll": 0.6, "shift_x": 0.6, "shift_y": 0.4, "log_scale": 0.8}
SWAY_CAP = 2.5  # peaks beyond this many amplitudes are squeezed (tanh)
NOD_PITCH = 3.0
NOD_SHIFT_Y = 0.03
LOUDNESS_LEAN = 0.01

# Bounds at motion_scale = 1 (they grow with it): nose displacement as a share of the frame
# width, eye-line roll in degrees, eye distance change as a share of the reference's.
LIMITS = {"nose_shift": 0.075, "roll": 5.5, "eye_distance": 0.045}
# The small head: the nose tip stands out of the eye plane by this many eye distances, and the
# head turns about a point this far behind the eyes and below them (roughly the head's centre).
NOSE_DEPTH = 0.45
PIVOT_BEHIND = 0.8
PIVOT_BELOW = 0.5

POSE_NAMES = tuple(SWAY)


@dataclass(frozen=True)
class SpeechFeatures:
    """Per output frame: loudness `envelope` in [0, 1], speaking `gate` in [0, 1] (1 = speech,
    smooth at the edges) and `nods`, the nod strength in [0, 1] started at each frame."""

    envelope: np.ndarray
    gate: np.ndarray
    nods: np.ndarray


def _check_inputs(waveform: np.ndarray, num_frames: int, fps: float, motion_scale: float) -> np.ndarray:
    waveform = np.asarray(waveform, np.float32)
    if waveform.ndim != 1 or waveform.size == 0 or not np.isfinite(waveform).all():
        raise ValueError(f"speech motion needs a finite mono waveform [T], got shape {list(waveform.shape)}")
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if not (fps and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if not (math.isfinite(motion_scale) and motion_scale >= 0):
        raise ValueError(f"motion_scale must be a finite number >= 0 (0 = fix_face), got {motion_scale}")
    return waveform


def speech_features(
    waveform: np.ndarray, num_frames: int, fps: float, sample_rate: int = SAMPLE_RATE
) -> SpeechFeatures:
    """Envelope, speaking gate and nod starts of `waveform` at the times of num_frames output frames."""
    waveform = _check_inputs(waveform, num_frames, fps, 0.0)
    hop = max(1, round(HOP_SECONDS * sample_rate))
    rms = librosa.feature.rms(y=waveform, frame_length=4 * hop, hop_length=hop)[0]
    level = 20 * np.log10(np.maximum(rms, 1e-10))
    loud = np.percentile(level, 95)
    audio_times = np.arange(len(rms)) * hop / sample_rate
    frame_times = np.arange(num_frames) / fps

    def at_frames(values: np.ndarray) -> np.ndarray:
        return np.interp(frame_times, audio_times, values, right=0.0)

    speaking = (level > loud + SPEECH_THRESHOLD_DB) & (rms > SILENCE_RMS)
    envelope = np.clip((level - loud + ENVELOPE_RANGE_DB) / ENVELOPE_RANGE_DB, 0.0, 1.0) * (rms > SILENCE_RMS)
    held = maximum_filter1d(at_frames(speaking.astype(np.float64)), max(1, round(GATE_HOLD_SECONDS * fps)))
    gate = np.clip(gaussian_filter1d(held, GATE_SMOOTHING_SECONDS * fps, mode="nearest"), 0.0, 1.0)

    strength = librosa.onset.onset_strength(y=waveform, sr=sample_rate, hop_length=hop)
    count = min(len(strength), len(speaking))
    strength = np.clip(strength[:count] / max(np.percentile(strength, 99), 1e-8), 0.0, 1.0) * speaking[:count]
    peaks = librosa.util.peak_pick(
        strength, pre_max=3, post_max=3, pre_avg=10, post_avg=10, delta=0.05,
        wait=max(1, round(NOD_MIN_GAP_SECONDS / HOP_SECONDS)),
    )
    nods = np.zeros(num_frames)
    for peak in peaks:
        frame = int(round(peak * hop / sample_rate * fps))
        if strength[peak] >= NOD_MIN_STRENGTH and frame < num_frames:
            nods[frame] = max(nods[frame], strength[peak])
    return SpeechFeatures(at_frames(envelope), gate, nods)


def _slow_noise(rng: np.random.Generator, clock: np.ndarray, seconds: float, fps: float) -> np.ndarray:
    """Band-limited noise of unit standard deviation (Gaussian-filtered white noise, whatever the
    length) read at `clock` (in frames of speech time: it runs slower in quiet stretches)."""
    sigma = seconds * fps
    length = int(math.ceil(clock[-1])) + 2
    white = rng.standard_normal(length)
    filtered = gaussian_filter1d(white, sigma, mode="reflect") * math.sqrt(2 * math.sqrt(math.pi) * sigma)
    return np.interp(clock, np.arange(length), filtered)


def _soft_capped(values: np.ndarray, cap: float) -> np.ndarray:
    return cap * np.tanh(values / cap)


def _nod_curve(nods: np.ndarray, fps: float) -> np.ndarray:
    """Each nod as a raised-cosine dip and return lasting NOD_SECONDS, summed, in [0, 1]."""
    length = max(2, round(NOD_SECONDS * fps))
    kernel = 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(length) / length)
    return np.tanh(np.convolve(nods, kernel)[: len(nods)])


def speech_clock(features: SpeechFeatures, fps: float) -> np.ndarray:
    """Frames of "speech time" elapsed at each output frame: the head's sway runs at IDLE_MOTION of
    real time in silence and faster the louder the speech, so the head moves with the voice and
    holds its pose in pauses."""
    loudness = gaussian_filter1d(features.envelope, 0.1 * fps, mode="nearest")
    rate = IDLE_MOTION + (1 - IDLE_MOTION) * features.gate * np.clip(loudness / SPEECH_LOUDNESS, 0.0, 1.3) ** 2
    return np.concatenate([[0.0], np.cumsum(rate[:-1])])


def pose_curves(features: SpeechFeatures, fps: float, seed: int, motion_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Head pose per frame - yaw/pitch/roll in degrees, shift_x/shift_y in eye distances, log_scale -
    from the speech features; deterministic for a seed."""
    rng = np.random.default_rng(int(seed))
    clock = speech_clock(features, fps)
    curves = {
        name: _soft_capped(SWAY[name] * _slow_noise(rng, clock, SWAY_SECONDS[name], fps), SWAY_CAP * SWAY[name])
        for name in POSE_NAMES
    }
    nod = _nod_curve(features.nods * features.gate, fps)
    curves["pitch"] = curves["pitch"] + NOD_PITCH * nod
    curves["shift_y"] = curves["shift_y"] + NOD_SHIFT_Y * nod
    loudness = gaussian_filter1d(features.envelope * features.gate, 0.2 * fps, mode="nearest")
    curves["log_scale"] = curves["log_scale"] + LOUDNESS_LEAN * (loudness - loudness.mean())
    return {name: motion_scale * values for name, values in curves.items()}


def _rotations(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """[N,3,3] rotations roll(z) @ pitch(x) @ yaw(y), angles in degrees, in image axes (x right,
    y down, z to the camera): positive yaw moves the nose right, positive pitch lowers the chin."""
    a, b, c = (np.radians(v) for v in (yaw, pitch, roll))
    zeros, ones = np.zeros_like(a), np.ones_like(a)
    ry = np.stack([np.cos(a), zeros, np.sin(a), zeros, ones, zeros, -np.sin(a), zeros, np.cos(a)], -1)
    rx = np.stack([ones, zeros, zeros, zeros, np.cos(b), np.sin(b), zeros, -np.sin(b), np.cos(b)], -1)
    rz = np.stack([np.cos(c), -np.sin(c), zeros, np.sin(c), np.cos(c), zeros, zeros, zeros, ones], -1)
    shape = (len(a), 3, 3)
    return rz.reshape(shape) @ rx.reshape(shape) @ ry.reshape(shape)


def posed_keypoints(reference_kps: np.ndarray, curves: dict[str, np.ndarray]) -> np.ndarray:
    """[N,3,2] (left eye, right eye, nose) of the reference face turned, shifted and scaled per frame."""
    reference = np.asarray(reference_kps, np.float64)
    centre = reference[:2].mean(axis=0)
    eye_line = reference[1] - reference[0]
    size = float(np.linalg.norm(eye_line))
    across = np.array([eye_line[0], eye_line[1]]) / size
    down = np.array([-across[1], across[0]])
    # Face coordinates: x along the eye line, y across it, z out of the face; the nose stands out.
    local = np.stack([[(p - centre) @ across, (p - centre) @ down, 0.0] for p in reference])
    local[2, 2] = NOSE_DEPTH * size
    pivot = np.array([0.0, PIVOT_BELOW * size, -PIVOT_BEHIND * size])
    turned = (_rotations(curves["yaw"], curves["pitch"], curves["roll"]) @ (local - pivot).T).transpose(0, 2, 1) + pivot
    scaled = turned[..., :2] * np.exp(curves["log_scale"])[:, None, None]
    shifted = scaled + size * np.stack([curves["shift_x"], curves["shift_y"]], -1)[:, None, :]
    return centre + shifted[..., :1] * across + shifted[..., 1:] * down


def motion_extent(reference_kps: np.ndarray, points: np.ndarray, frame_width: int) -> dict[str, float]:
    """The largest nose displacement (share of frame width), eye-line roll (degrees) and eye distance
    change (share) of a track relative to the reference keypoints - the quantities in LIMITS."""
    reference = np.asarray(reference_kps, np.float64)
    points = np.asarray(points, np.float64)
    nose = np.linalg.norm(points[:, 2] - reference[2], axis=-1).max() / frame_width
    eye_lines = points[:, 1] - points[:, 0]
    reference_line = reference[1] - reference[0]
    angles = np.degrees(np.arctan2(eye_lines[:, 1], eye_lines[:, 0]) - math.atan2(reference_line[1], reference_line[0]))
    roll = np.abs((angles + 180) % 360 - 180).max()
    eye = np.abs(np.linalg.norm(eye_lines, axis=-1) / np.linalg.norm(reference_line) - 1).max()
    return {"nose_shift": float(nose), "roll": float(roll), "eye_distance": float(eye)}


def speech_motion_points(
    reference_kps: np.ndarray,
    waveform: np.ndarray,
    num_frames: int,
    fps: float,
    frame_width: int,
    motion_scale: float = 1.0,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Keypoints float32 [num_frames,3,2] moving with the speech, in the reference image's pixels.

    reference_kps: (left eye, right eye, nose) [3,2] in a frame `frame_width` pixels wide.
    """
    reference = np.asarray(reference_kps, np.float32)
    if reference.shape != (3, 2) or not np.isfinite(reference).all():
        raise ValueError(f"reference keypoints must be finite with shape [3,2], got {list(reference.shape)}")
    if np.linalg.norm(reference[1] - reference[0]) == 0:
        raise ValueError("reference keypoints have both eyes at the same point")
    waveform = _check_inputs(waveform, num_frames, fps, motion_scale)
    if motion_scale == 0:
        return np.repeat(reference[None], num_frames, axis=0)
    curves = pose_curves(speech_features(waveform, num_frames, fps, sample_rate), fps, seed, motion_scale)
    points = posed_keypoints(reference, curves)
    for _ in range(8):
        extent = motion_extent(reference, points, frame_width)
        excess = max(extent[name] / (LIMITS[name] * motion_scale) for name in LIMITS)
        if excess <= 1:
            break
        curves = {name: values / (excess * 1.02) for name, values in curves.items()}
        points = posed_keypoints(reference, curves)
    return points.astype(np.float32)


def _retargeted(reference_kps: np.ndarray, driving: None, num_frames: int, context: RetargetContext) -> np.ndarray:
    if context.waveform_16k is None or not context.fps or context.frame_size is None:
        raise ValueError("retarget mode 'speech_motion' needs the speech waveform, the fps and the frame size")
    return speech_motion_points(reference_kps, context.waveform_16k, num_frames, context.fps, context.frame_size[0],
                                context.motion_scale, context.motion_seed)


RETARGET_MODES.register("speech_motion", RetargetMode(_retargeted, needs_track=False, needs_context=True))
