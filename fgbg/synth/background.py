"""Background textures and the textured elements that move on their own.

Textures are float32 (H, W, 3) arrays in [0, 255]; texel (i, j) has its centre
at ``(j + 0.5, i + 0.5)`` (the corner convention of ``fgbg.data.schema``).
All randomness comes from the ``np.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fgbg.synth.camera import check_range, check_weights, choose, similarity

ELEMENT_MOTIONS = ("sway", "drift")
ELEMENT_SHAPES = ("ellipse", "rectangle", "polygon", "tree", "flag")


@dataclass
class BackgroundConfig:
    """Canvas and moving-element settings (pixel magnitudes at a 64-pixel frame)."""

    canvas_scale: float = 2.5  # canvas side / frame side, at least (grown to cover the camera path)
    num_elements: list[int] = field(default_factory=lambda: [1, 3])
    element_size: list[float] = field(default_factory=lambda: [0.25, 0.5])  # fraction of min(H, W)
    element_motion_weights: dict[str, float] = field(default_factory=lambda: {m: 1.0 for m in ELEMENT_MOTIONS})
    sway_amplitude_deg: list[float] = field(default_factory=lambda: [5.0, 20.0])
    sway_frequency: list[float] = field(default_factory=lambda: [0.04, 0.15])  # cycles/frame
    drift_speed: list[float] = field(default_factory=lambda: [0.2, 0.8])  # px/frame

    def __post_init__(self) -> None:
        if self.canvas_scale < 1.0:
            raise ValueError(f"background.canvas_scale must be >= 1, got {self.canvas_scale}")
        check_range("background.num_elements", self.num_elements, low=0)
        check_range("background.element_size", self.element_size, low=0.05)
        check_weights("background.element_motion_weights", self.element_motion_weights, ELEMENT_MOTIONS)
        for name in ("sway_amplitude_deg", "sway_frequency", "drift_speed"):
            check_range(f"background.{name}", getattr(self, name), low=0.0)


def random_color(
    rng: np.random.Generator, sat: tuple[float, float] = (0.3, 1.0), val: tuple[float, float] = (0.3, 1.0)
):
    """A random RGB colour (3,) float in [0, 255] drawn in HSV space."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def smooth_color_field(
    rng: np.random.Generator, height: int, width: int, cells: int, palette: np.ndarray
) -> np.ndarray:
    """(H, W, 3) smooth random colours: a ``cells``-wide grid of palette colours upsampled bicubically."""
    gh, gw = max(2, round(cells * height / max(height, width))), max(2, round(cells * width / max(height, width)))
    grid = palette[rng.integers(0, len(palette), (gh, gw))] + rng.normal(0, 12, (gh, gw, 3))
    return cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)


def _coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Texel-centre coordinates X, Y, each (H, W)."""
    return np.meshgrid(np.arange(width, dtype=np.float32) + 0.5, np.arange(height, dtype=np.float32) + 0.5)


def _stripes(rng, x, y, period_px):
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(*period_px)
    u = x * np.cos(angle) + y * np.sin(angle)
    return (np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)) > rng.uniform(-0.5, 0.5)).astype(np.float32)


def _checker(rng, x, y, period_px):
    angle = rng.uniform(0, np.pi / 2)
    size = rng.uniform(*period_px)
    u = (x * np.cos(angle) + y * np.sin(angle)) / size
    v = (-x * np.sin(angle) + y * np.cos(angle)) / size
    return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)


def make_canvas(rng: np.random.Generator, height: int, width: int, px: float = 1.0) -> np.ndarray:
    """A large textured background, float32 (height, width, 3) in [0, 255].

    A smooth random-colour field plus 2-4 structure layers (stripes, checker
    tiles, blobs, random polygons and lines) in colours from a per-video
    palette, blurred by ~0.7 texel so bilinear sampling stays accurate. ``px``
    scales feature sizes (1 at a 64-pixel frame).
    """
    palette = np.stack([random_color(rng) for _ in range(rng.integers(3, 7))])
    canvas = smooth_color_field(rng, height, width, int(rng.integers(4, 10)), palette)
    x, y = _coords(height, width)
    layers = rng.choice(["stripes", "checker", "blobs", "shapes", "lines"], size=int(rng.integers(2, 5)), replace=False)
    for layer in layers:
        color = palette[rng.integers(len(palette))] * rng.uniform(0.5, 1.3)
        if layer in ("stripes", "checker"):
            pattern = (_stripes if layer == "stripes" else _checker)(rng, x, y, (4 * px, 16 * px))
            # the pattern shows only in some regions, so texture varies across the canvas
            region = smooth_color_field(rng, height, width, 4, np.array([[0.0] * 3, [1.0] * 3]))[..., :1]
            alpha = pattern[..., None] * np.clip(region * 1.5, 0, 1) * rng.uniform(0.4, 0.9)
            canvas = canvas * (1 - alpha) + color * alpha
            continue
        overlay = canvas.copy()
        for _ in range(int(rng.integers(6, 20) * height * width / (160 * 160 * px * px)) + 1):
            c = tuple(float(v) for v in palette[rng.integers(len(palette))] * rng.uniform(0.4, 1.4))
            centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
            if layer == "blobs":
                axes = (int(rng.uniform(2, 10) * px) + 1, int(rng.uniform(2, 10) * px) + 1)
                cv2.ellipse(overlay, centre, axes, rng.uniform(0, 180), 0, 360, c, -1, cv2.LINE_AA)
            elif layer == "shapes":
                pts = np.array(centre) + rng.uniform(-12, 12, (int(rng.integers(3, 6)), 2)) * px
                cv2.fillPoly(overlay, [pts.astype(np.int32)], c, cv2.LINE_AA)
            else:
                end = np.array(centre) + rng.uniform(-30, 30, 2) * px
                cv2.line(overlay, centre, tuple(int(v) for v in end), c, int(rng.integers(1, 4)), cv2.LINE_AA)
        canvas = overlay
    canvas = cv2.GaussianBlur(np.clip(canvas, 0, 255).astype(np.float32), (0, 0), 0.7)
    return canvas


def make_sprite(rng: np.random.Generator, size: int, px: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """A textured shape: rgb float32 (S, S, 3), alpha float32 (S, S) in {0, 1}, and its shape name.

    The shape stands on the bottom-centre of the square (its natural pivot for swaying).
    """
    shape = ELEMENT_SHAPES[int(rng.integers(len(ELEMENT_SHAPES)))]
    palette = np.stack([random_color(rng, val=(0.2, 0.9)) for _ in range(3)])
    rgb = smooth_color_field(rng, size, size, 3, palette)
    x, y = _coords(size, size)
    pattern = _stripes(rng, x, y, (3 * px, 8 * px)) if rng.random() < 0.5 else _checker(rng, x, y, (3 * px, 8 * px))
    rgb = rgb * (1 - 0.4 * pattern[..., None]) + 0.4 * pattern[..., None] * palette[0][None, None]
    alpha = np.zeros((size, size), np.uint8)
    s = size
    if shape == "ellipse":
        cv2.ellipse(alpha, (s // 2, s // 2), (s // 2 - 1, int(s * rng.uniform(0.25, 0.48))), 0, 0, 360, 1, -1)
    elif shape == "rectangle":
        w = int(s * rng.uniform(0.4, 0.95))
        cv2.rectangle(alpha, ((s - w) // 2, int(s * rng.uniform(0.05, 0.5))), ((s + w) // 2, s - 1), 1, -1)
    elif shape == "polygon":
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(4, 8))))
        radii = rng.uniform(0.3, 0.5, len(angles)) * s
        pts = np.stack([s / 2 + radii * np.cos(angles), s / 2 + radii * np.sin(angles)], -1)
        cv2.fillPoly(alpha, [pts.astype(np.int32)], 1)
    elif shape == "tree":
        trunk = max(2, int(s * rng.uniform(0.08, 0.16)))
        cv2.rectangle(alpha, (s // 2 - trunk // 2, s // 2), (s // 2 + trunk // 2, s - 1), 1, -1)
        cv2.circle(alpha, (s // 2, int(s * 0.38)), int(s * rng.uniform(0.25, 0.36)), 1, -1)
        rgb[s // 2 :] = rgb[s // 2 :] * 0.45 + np.array([90, 60, 35], np.float32) * 0.55  # bark
    else:  # flag on a pole, pivoting at the pole's foot
        pole = max(1, int(s * 0.05))
        cv2.rectangle(alpha, (s // 2 - pole, 0), (s // 2 + pole, s - 1), 1, -1)
        cv2.rectangle(alpha, (s // 2, int(s * 0.05)), (s - 1, int(s * rng.uniform(0.35, 0.55))), 1, -1)
    return np.clip(rgb, 0, 255).astype(np.float32), alpha.astype(np.float32), shape


@dataclass
class MovingElement:
    """A textured sprite moving in world coordinates.

    rgb (S, S, 3), alpha (S, S); ``sprite_to_world`` (T, 2, 3) affines per frame
    (one sprite texel = one world unit, so it scales with the camera zoom).
    """

    rgb: np.ndarray
    alpha: np.ndarray
    shape: str
    motion: str
    sprite_to_world: np.ndarray


def sample_elements(
    rng: np.random.Generator, cfg: BackgroundConfig, num_frames: int, height: int, width: int
) -> list[MovingElement]:
    """Draw 0..N moving elements placed over the first frame's view (world = first-frame pixels)."""
    px = min(height, width) / 64.0
    t = np.arange(num_frames, dtype=np.float64)
    elements = []
    for _ in range(int(rng.integers(cfg.num_elements[0], cfg.num_elements[1] + 1))):
        size = max(8, int(round(rng.uniform(*cfg.element_size) * min(height, width))))
        rgb, alpha, shape = make_sprite(rng, size, px)
        motion = choose(rng, cfg.element_motion_weights, ELEMENT_MOTIONS)
        pivot_sprite = np.array([size / 2.0, float(size)])  # bottom centre
        base = np.array([rng.uniform(0.05, 0.95) * width, rng.uniform(0.45, 1.1) * height])
        angle = np.zeros(num_frames)
        position = np.repeat(base[None], num_frames, 0)
        if motion == "sway":
            amp = np.deg2rad(rng.uniform(*cfg.sway_amplitude_deg))
            angle = amp * np.sin(2 * np.pi * rng.uniform(*cfg.sway_frequency) * t + rng.uniform(0, 2 * np.pi))
        else:
            direction = rng.uniform(0, 2 * np.pi)
            speed = rng.uniform(*cfg.drift_speed) * px
            position = position + t[:, None] * speed * np.array([np.cos(direction), np.sin(direction)])
        affines = similarity(np.ones(num_frames), angle, np.repeat(pivot_sprite[None], num_frames, 0), position)
        elements.append(MovingElement(rgb, alpha, shape, motion, affines))
    return elements
