"""Speech for the toy world: seeded synthetic babble, and the one rule that turns any speech into
mouth opening.

Mouth rule (frame i of a clip at `fps`): RMS_i is the root mean square of the 16 kHz waveform over
the 40 ms centred on the frame's middle ((i + 0.5) / fps); L_i = 20 log10(RMS_i / P95), with P95 the
95th percentile of the clip's RMS_i; opening_i = clip((L_i + 30) / 24, 0, 1). Silence (30 dB or more
below the clip's loud frames) closes the mouth; 6 dB below them opens it fully.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
RMS_WINDOW_S = 0.040
CLOSED_BELOW_DB = -30.0
OPEN_RANGE_DB = 24.0


def babble(seed: int, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Seeded babble [T] float32 in [-1, 1]: phrases of 2-7 voiced syllables (a speaker's pitch
    with a contour per syllable, harmonics shaped by three formants that change per syllable,
    loudness varying by up to 14 dB, 3-7 syllables a second) between pauses of 0.3-1.5 s."""
    rng = np.random.default_rng([7919, seed])
    total = int(round(seconds * sample_rate))
    wave = np.zeros(total, np.float64)
    speaker_f0 = rng.uniform(90.0, 240.0)
    position = int(rng.uniform(0.1, 0.4) * sample_rate)
    while position < total:
        rate = rng.uniform(3.0, 7.0)
        for _ in range(int(rng.integers(2, 8))):
            length = int(rng.uniform(0.6, 1.0) / rate * sample_rate)
            if position + length > total:
                break
            wave[position:position + length] += _syllable(rng, speaker_f0, length, sample_rate)
            position += length + int(rng.uniform(0.0, 0.25) / rate * sample_rate)
        position += int(rng.uniform(0.3, 1.5) * sample_rate)
    wave += rng.normal(0.0, 1e-4, total)
    return (0.6 * wave / max(np.abs(wave).max(), 1e-6)).astype(np.float32)


def _syllable(rng: np.random.Generator, speaker_f0: float, length: int, sample_rate: int) -> np.ndarray:
    t = np.arange(length) / sample_rate
    contour = 1.0 + rng.uniform(-0.15, 0.15) * t / t[-1] + rng.uniform(-0.05, 0.05)
    f0 = speaker_f0 * contour
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formants = [(rng.uniform(300, 900), 90.0), (rng.uniform(900, 2500), 120.0), (rng.uniform(2500, 3500), 180.0)]
    harmonics = np.arange(1, int(4000 / speaker_f0) + 1)
    frequency = harmonics[:, None] * f0[None, :]
    gain = sum(np.exp(-0.5 * ((frequency - centre) / width) ** 2) * weight
               for (centre, width), weight in zip(formants, (1.0, 0.6, 0.3)))
    voiced = (gain * np.sin(harmonics[:, None] * phase[None, :])).sum(axis=0)
    attack = min(int(rng.uniform(0.02, 0.05) * sample_rate), length // 2)
    release = min(int(rng.uniform(0.04, 0.1) * sample_rate), length // 2)
    envelope = np.ones(length)
    envelope[:attack] = np.sin(np.linspace(0, np.pi / 2, attack)) ** 2
    envelope[length - release:] = np.cos(np.linspace(0, np.pi / 2, release)) ** 2
    loudness = 10 ** (rng.uniform(-14.0, 0.0) / 20)
    return loudness * envelope * voiced / max(np.abs(voiced).max(), 1e-6)


def frame_rms(wave: np.ndarray, num_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS [num_frames] over the 40 ms centred on each frame's middle."""
    half = int(RMS_WINDOW_S * sample_rate / 2)
    centres = ((np.arange(num_frames) + 0.5) / fps * sample_rate).astype(int)
    padded = np.pad(wave.astype(np.float64), half)
    power = np.concatenate([[0.0], np.cumsum(padded ** 2)])
    return np.sqrt((power[centres + 2 * half] - power[centres]) / (2 * half))


def mouth_opening(wave: np.ndarray, num_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Opening in [0, 1] per frame by the module's rule."""
    rms = frame_rms(wave, num_frames, fps, sample_rate)
    loud = max(np.percentile(rms, 95), 1e-8)
    level = 20 * np.log10(np.maximum(rms, 1e-10) / loud)
    return np.clip((level - CLOSED_BELOW_DB) / OPEN_RANGE_DB, 0.0, 1.0).astype(np.float32)
