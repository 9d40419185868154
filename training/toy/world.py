"""The toy talking-head world: seeded cartoon identities, head tracks, and frames rendered with the
exact V-Kps points (left eye, right eye, nose; left = image left) of every frame.

Figures are drawn at 4x the output size in a canonical pose, moved by a similarity transform
(translation, roll, scale about the head's centre) over a still background, and area-averaged
down to the output size. Seeds 0-999 are training identities; 1000 and above are held out.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

SUPERSAMPLE = 4
SHIFT = 4  # cv2 fixed-point bits for sub-pixel drawing
HELD_OUT_FROM = 1000
MOUTH_INTERIOR = (45, 12, 22)


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


@dataclass(frozen=True)
class Identity:
    """Everything that makes one toy person; lengths are fractions of the frame side."""

    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: int
    iris: tuple[int, int, int]
    clothes: tuple[int, int, int]
    head_rx: float
    head_ry: float
    eye_dx: float
    eye_dy: float
    eye_r: float
    brow_lift: float
    brow_tilt: float
    nose_dy: float
    nose_r: float
    mouth_dy: float
    mouth_w: float
    lip: tuple[int, int, int]
    shoulder_rx: float
    blink_phase: float

    @property
    def centre(self) -> tuple[float, float]:
        return 0.5, 0.47

    @property
    def max_open(self) -> float:
        """Mouth height at full opening."""
        return 0.5 * self.mouth_w


def identity(seed: int) -> Identity:
    rng = np.random.default_rng([104729, seed])
    u = rng.uniform
    skin_hue = u(0.02, 0.11) if u() < 0.85 else u(0, 1)
    skin = _rgb(skin_hue, u(0.15, 0.6), u(0.62, 0.97))
    hair = _rgb(u(0, 1), u(0.2, 0.9), u(0.08, 0.85)) if u() < 0.4 else _rgb(u(0.02, 0.12), u(0.4, 0.9), u(0.08, 0.75))
    head_rx = u(0.2, 0.25)
    return Identity(
        background=(_rgb(u(0, 1), u(0, 0.7), u(0.25, 1.0)), _rgb(u(0, 1), u(0, 0.7), u(0.25, 1.0))),
        skin=skin,
        hair=hair,
        hair_style=int(rng.integers(0, 4)),
        iris=_rgb(u(0, 1), u(0.3, 1.0), u(0.15, 0.7)),
        clothes=_rgb(u(0, 1), u(0.1, 1.0), u(0.15, 1.0)),
        head_rx=head_rx,
        head_ry=head_rx * u(1.12, 1.38),
        eye_dx=head_rx * u(0.36, 0.48),
        eye_dy=head_rx * u(0.05, 0.3),
        eye_r=head_rx * u(0.17, 0.24),
        brow_lift=head_rx * u(0.3, 0.45),
        brow_tilt=u(-12, 12),
        nose_dy=head_rx * u(0.3, 0.48),
        nose_r=head_rx * u(0.07, 0.12),
        mouth_dy=head_rx * u(0.72, 0.88),
        mouth_w=head_rx * u(0.55, 0.75),
        lip=_rgb(u(0.95, 1.03), u(0.35, 0.7), u(0.45, 0.75)),
        shoulder_rx=u(0.36, 0.5),
        blink_phase=u(0, 1),
    )


@dataclass(frozen=True)
class Pose:
    """Head translation (fractions of the frame), roll (degrees) and scale about the head's centre."""

    dx: float = 0.0
    dy: float = 0.0
    roll: float = 0.0
    scale: float = 1.0


NEUTRAL = Pose()


def head_track(seed: int | None, num_frames: int, fps: float) -> list[Pose]:
    """A still head (`seed` None) or a seeded smooth track: translation within about 15% of the
    frame, roll within 12 degrees and scale within 0.9-1.1, each a sum of slow sinusoids."""
    if seed is None:
        return [NEUTRAL] * num_frames
    rng = np.random.default_rng([15485863, seed])
    t = np.arange(num_frames) / fps

    def smooth(amplitude: float) -> np.ndarray:
        frequencies = rng.uniform(0.08, 0.5, 3)
        phases = rng.uniform(0, 2 * np.pi, 3)
        weights = rng.dirichlet(np.ones(3))
        return amplitude * sum(w * np.sin(2 * np.pi * f * t + p) for w, f, p in zip(weights, frequencies, phases))

    dx, dy, roll, scale = smooth(0.075), smooth(0.05), smooth(12.0), 1.0 + smooth(0.1)
    return [Pose(float(a), float(b), float(c), float(d)) for a, b, c, d in zip(dx, dy, roll, scale)]


def blinks(person: Identity, num_frames: int, fps: float) -> np.ndarray:
    """Eyelid closure in [0, 1] per frame: a 120 ms blink every 2-5 s on the identity's schedule."""
    rng = np.random.default_rng([32452843, int(person.blink_phase * 1e9)])
    closed = np.zeros(num_frames, np.float32)
    time = rng.uniform(0.5, 3.0)
    while time * fps < num_frames:
        start = int(time * fps)
        closed[start:start + max(1, round(0.12 * fps))] = 1.0
        time += rng.uniform(2.0, 5.0)
    return closed


def _pt(x: float, y: float, side: int) -> tuple[int, int]:
    return int(round(x * side * (1 << SHIFT))), int(round(y * side * (1 << SHIFT)))


def _axes(rx: float, ry: float, side: int) -> tuple[int, int]:
    return max(int(round(rx * side * (1 << SHIFT))), 1), max(int(round(ry * side * (1 << SHIFT))), 1)


def _ellipse(canvas, centre, rx, ry, colour, angle=0.0, start=0, end=360, thickness=-1):
    side = canvas.shape[0]
    width = thickness if thickness < 0 else max(1, int(round(thickness * side)))
    cv2.ellipse(canvas, _pt(*centre, side), _axes(rx, ry, side), angle, start, end, colour, width, cv2.LINE_AA, SHIFT)


def _darker(colour, factor):
    return tuple(int(c * factor) for c in colour)


def _figure(person: Identity, opening: float, blink: float, side: int) -> np.ndarray:
    """The canonical-pose figure as RGBA [side, side, 4] (alpha 0 where the background shows)."""
    canvas = np.zeros((side, side, 4), np.uint8)
    cx, cy = person.centre
    rx, ry = person.head_rx, person.head_ry
    opaque = lambda colour: (*colour, 255)  # noqa: E731
    _ellipse(canvas, (cx, 1.02), person.shoulder_rx, 0.24, opaque(person.clothes))
    cv2.rectangle(canvas, _pt(cx - 0.35 * rx, cy + 0.5 * ry, side), _pt(cx + 0.35 * rx, 0.9, side),
                  opaque(_darker(person.skin, 0.85)), -1, cv2.LINE_AA, SHIFT)
    if person.hair_style in (1, 3):
        _ellipse(canvas, (cx, cy + 0.25 * ry), rx * 1.18, ry * 1.05, opaque(person.hair))
    for side_sign in (-1, 1):
        _ellipse(canvas, (cx + side_sign * rx * 0.98, cy + 0.05 * ry), rx * 0.16, ry * 0.2, opaque(_darker(person.skin, 0.9)))
    _ellipse(canvas, (cx, cy), rx, ry, opaque(person.skin))
    if person.hair_style != 2:
        _ellipse(canvas, (cx, cy - 0.28 * ry), rx * 1.04, ry * 0.78, opaque(person.hair), start=180, end=360)
    eye_y = cy - person.eye_dy
    for side_sign in (-1, 1):
        ex = cx + side_sign * person.eye_dx
        r = person.eye_r
        _ellipse(canvas, (ex, eye_y), r, r * 0.7, opaque((245, 245, 240)))
        _ellipse(canvas, (ex, eye_y), r * 0.5, r * 0.5, opaque(person.iris))
        _ellipse(canvas, (ex, eye_y), r * 0.22, r * 0.22, opaque((15, 15, 20)))
        if blink > 0:
            _ellipse(canvas, (ex, eye_y), r * 1.08, r * 0.78, opaque(person.skin))
            _ellipse(canvas, (ex, eye_y), r, r * 0.12, opaque(_darker(person.skin, 0.5)))
        brow = (ex, eye_y - person.brow_lift)
        _ellipse(canvas, brow, r * 1.1, r * 0.22, opaque(_darker(person.hair, 0.7)), angle=side_sign * person.brow_tilt)
    nose = (cx, eye_y + person.nose_dy)
    _ellipse(canvas, nose, person.nose_r, person.nose_r * 0.8, opaque(_darker(person.skin, 0.72)))
    mouth = (cx, eye_y + person.mouth_dy)
    height = opening * person.max_open
    if height * side >= 1.5:
        _ellipse(canvas, mouth, person.mouth_w * (0.5 + 0.08 * opening), height / 2 + 0.012, opaque(person.lip))
        _ellipse(canvas, mouth, person.mouth_w * (0.5 + 0.08 * opening) - 0.012, height / 2, opaque(MOUTH_INTERIOR))
    else:
        _ellipse(canvas, mouth, person.mouth_w * 0.5, 0.012, opaque(_darker(person.lip, 0.6)))
    return canvas


# Where a face detector trained on photographs puts a cartoon's eyes and nose tip, as fractions of
# the eye distance above the drawn eye centres and nose (measured with the pack's RetinaFace on
# 60 held-out identities); the points follow that convention so detected and rendered tracks agree.
EYE_POINT_LIFT = 0.115
NOSE_POINT_LIFT = 0.165


def canonical_points(person: Identity) -> np.ndarray:
    """(left eye, right eye, nose) [3, 2] in fractions of the frame, canonical pose."""
    cx, cy = person.centre
    eye_distance = 2 * person.eye_dx
    eye_y = cy - person.eye_dy - EYE_POINT_LIFT * eye_distance
    nose_y = cy - person.eye_dy + person.nose_dy - NOSE_POINT_LIFT * eye_distance
    return np.array([[cx - person.eye_dx, eye_y], [cx + person.eye_dx, eye_y], [cx, nose_y]])


def pose_matrix(person: Identity, pose: Pose) -> np.ndarray:
    """2x3 similarity in fractions of the frame: about the head's centre, then translated."""
    cx, cy = person.centre
    angle = np.deg2rad(pose.roll)
    rotation = pose.scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    offset = np.array([cx + pose.dx, cy + pose.dy]) - rotation @ np.array([cx, cy])
    return np.concatenate([rotation, offset[:, None]], axis=1)


def frame_points(person: Identity, pose: Pose, size: int) -> np.ndarray:
    """The V-Kps points [3, 2] in output pixels (pixel centres at integers) for this pose."""
    matrix = pose_matrix(person, pose)
    fractions = canonical_points(person) @ matrix[:, :2].T + matrix[:, 2]
    return (fractions * size - 0.5).astype(np.float32)


def background(person: Identity, side: int) -> np.ndarray:
    top, bottom = (np.array(c, np.float32) for c in person.background)
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - ramp) + bottom * ramp, (side, side, 3)).copy()


def render(person: Identity, pose: Pose, opening: float, blink: float, size: int) -> np.ndarray:
    """One RGB uint8 frame [size, size, 3]."""
    side = size * SUPERSAMPLE
    figure = _figure(person, float(opening), float(blink), side)
    matrix = pose_matrix(person, pose).copy()
    matrix[:, 2] *= side
    figure = cv2.warpAffine(figure, matrix, (side, side), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    alpha = figure[..., 3:].astype(np.float32) / 255.0
    image = background(person, side) * (1 - alpha) + figure[..., :3].astype(np.float32) * alpha
    return cv2.resize(np.clip(image + 0.5, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA)
