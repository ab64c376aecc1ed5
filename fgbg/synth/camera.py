"""Camera paths and 2x3 affine geometry for the synthetic world.

Coordinates follow ``fgbg.data.schema``: continuous pixel coordinates with the
origin at the top-left *corner*; pixel (row i, column j) has its centre at
``(j + 0.5, i + 0.5)``. The same convention holds for every texture (canvas,
sprites): texel (i, j) has its centre at ``(j + 0.5, i + 0.5)``.

An affine ``A`` of shape (2, 3) maps a point ``p`` to ``A[:, :2] @ p + A[:, 2]``.
The camera is a per-frame affine world -> image; at t = 0 a static camera is the
identity, so world coordinates are the first frame's pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

CAMERA_MOTIONS = ("static", "pan", "zoom", "shake", "combined")


@dataclass
class CameraConfig:
    """Camera motion types and magnitudes.

    Pixel magnitudes are given for a 64-pixel frame and scale with ``min(H, W) / 64``.
    Ranges are ``[low, high]``, drawn uniformly per video.
    """

    weights: dict[str, float] = field(default_factory=lambda: {m: 1.0 for m in CAMERA_MOTIONS})
    pan_speed: list[float] = field(default_factory=lambda: [0.5, 2.5])  # px/frame
    zoom_rate: list[float] = field(default_factory=lambda: [0.01, 0.03])  # relative scale change per frame
    zoom_limits: list[float] = field(default_factory=lambda: [0.5, 2.0])  # zoom reverses at these scales
    shake_amplitude: list[float] = field(default_factory=lambda: [0.5, 2.0])  # px
    shake_frequency: list[float] = field(default_factory=lambda: [0.05, 0.25])  # cycles/frame
    shake_rotation_deg: float = 1.0  # rotation jitter amplitude of `shake` and `combined`

    def __post_init__(self) -> None:
        check_weights("camera.weights", self.weights, CAMERA_MOTIONS)
        for name in ("pan_speed", "zoom_rate", "shake_amplitude", "shake_frequency"):
            check_range(f"camera.{name}", getattr(self, name), low=0.0)
        check_range("camera.zoom_limits", self.zoom_limits, low=1e-3)
        if not self.zoom_limits[0] <= 1.0 <= self.zoom_limits[1]:
            raise ValueError(f"camera.zoom_limits must contain 1.0, got {list(self.zoom_limits)}")


def check_range(name: str, value, low: float | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is ``[lo, hi]`` with ``low <= lo <= hi``."""
    if len(value) != 2 or not value[0] <= value[1] or (low is not None and value[0] < low):
        bound = f" and low >= {low}" if low is not None else ""
        raise ValueError(f"{name} must be a range [low, high] with low <= high{bound}, got {list(value)}")


def check_weights(name: str, weights, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` on unknown names, negative weights or an all-zero table."""
    unknown = sorted(set(weights) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown entries {unknown}; expected some of {list(allowed)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"{name} must be non-negative with a positive sum, got {dict(weights)}")


def choose(rng: np.random.Generator, weights: dict[str, float], order: tuple[str, ...]) -> str:
    """Draw one name from ``weights`` (names in the fixed ``order`` so draws are reproducible)."""
    p = np.array([float(weights.get(n, 0.0)) for n in order])
    return order[int(rng.choice(len(order), p=p / p.sum()))]


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(..., 2, 3) affines applied to (..., N, 2) points -> (..., N, 2)."""
    return points @ np.swapaxes(affine[..., :, :2], -1, -2) + affine[..., None, :, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of (..., 2, 3) affines."""
    lin_inv = np.linalg.inv(affine[..., :, :2])
    return np.concatenate([lin_inv, -(lin_inv @ affine[..., :, 2:])], -1)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``outer o inner`` for (..., 2, 3) affines: first ``inner``, then ``outer``."""
    lin = outer[..., :, :2] @ inner[..., :, :2]
    shift = (outer[..., :, :2] @ inner[..., :, 2:])[..., 0] + outer[..., :, 2]
    return np.concatenate([lin, shift[..., None]], -1)


def similarity(scale: np.ndarray, angle: np.ndarray, pivot_from: np.ndarray, pivot_to: np.ndarray) -> np.ndarray:
    """Affines (T, 2, 3) rotating by ``angle`` (rad) and scaling about ``pivot_from``, which lands on ``pivot_to``.

    scale, angle: (T,); pivot_from, pivot_to: (T, 2).
    """
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    lin = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (T, 2, 2)
    shift = pivot_to - (lin @ pivot_from[..., None])[..., 0]
    return np.concatenate([lin, shift[..., None]], -1)


def warp_texture(texture: np.ndarray, image_to_texture: np.ndarray, height: int, width: int, border: str) -> np.ndarray:
    """Render a texture into an (H, W, C) image by inverse mapping.

    Each output pixel centre ``(j + 0.5, i + 0.5)`` is mapped through
    ``image_to_texture`` (2, 3) and the texture is sampled bilinearly there
    (texel centres at ``+0.5``, like pixels). ``border`` is ``"reflect"`` or
    ``"zero"`` (transparent outside a sprite). float32 in, float32 out.
    """
    # cv2 indexes pixel centres by integers; shift both sides by half a pixel.
    half = np.array([0.5, 0.5])
    m = image_to_texture.astype(np.float64).copy()
    m[:, 2] = m[:, :2] @ half + m[:, 2] - half
    mode = cv2.BORDER_REFLECT_101 if border == "reflect" else cv2.BORDER_CONSTANT
    out = cv2.warpAffine(
        texture, m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=mode, borderValue=0
    )
    return out.reshape(height, width, -1)


def ping_pong(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Reflect ``x`` back and forth inside ``[low, high]`` (a triangle wave)."""
    span = high - low
    if span <= 0:
        return np.full_like(x, low)
    y = np.mod(x - low, 2 * span)
    return low + np.where(y > span, 2 * span - y, y)


@dataclass
class CameraPath:
    """A camera motion: ``kind`` and per-frame world -> image affines (T, 2, 3)."""

    kind: str
    world_to_image: np.ndarray


def sample_camera(
    rng: np.random.Generator, cfg: CameraConfig, num_frames: int, height: int, width: int, kind: str | None = None
) -> CameraPath:
    """Draw a camera motion (type from ``cfg.weights`` unless ``kind`` is given) for ``num_frames`` frames.

    The image is ``z + shake_t + s_t R(rot_t) (world - z - pan_t)`` with ``z`` a
    zoom centre near the middle of the frame; pan is linear, zoom is geometric
    (``(1 +- rate)^t``, reversing at ``zoom_limits``), shake is a sum of
    sinusoids in translation and rotation.
    """
    kind = kind or choose(rng, cfg.weights, CAMERA_MOTIONS)
    if kind not in CAMERA_MOTIONS:
        raise ValueError(f"camera kind must be one of {CAMERA_MOTIONS}, got {kind!r}")
    px = min(height, width) / 64.0
    t = np.arange(num_frames, dtype=np.float64)
    centre = np.array([width, height]) / 2.0 + rng.uniform(-0.15, 0.15, 2) * [width, height]
    pan = np.zeros((num_frames, 2))
    log_scale = np.zeros(num_frames)
    angle = np.zeros(num_frames)
    shake = np.zeros((num_frames, 2))
    gentle = 0.5 if kind == "combined" else 1.0  # combined motions are milder per component
    if kind in ("pan", "combined"):
        direction = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(*cfg.pan_speed) * px * gentle
        pan = t[:, None] * speed * np.array([np.cos(direction), np.sin(direction)])
    if kind in ("zoom", "combined"):
        rate = rng.uniform(*cfg.zoom_rate) * rng.choice([-1.0, 1.0]) * gentle
        lo, hi = np.log(cfg.zoom_limits[0]), np.log(cfg.zoom_limits[1])
        log_scale = ping_pong(t * np.log1p(rate), lo, hi)
    if kind in ("shake", "combined"):
        amp = rng.uniform(*cfg.shake_amplitude) * px * gentle
        for _ in range(3):
            freq = rng.uniform(*cfg.shake_frequency, 2)
            phase = rng.uniform(0, 2 * np.pi, 2)
            shake += amp / 3 * np.sin(2 * np.pi * freq * t[:, None] + phase)
        rot_freq, rot_phase = rng.uniform(*cfg.shake_frequency), rng.uniform(0, 2 * np.pi)
        angle = np.deg2rad(cfg.shake_rotation_deg) * gentle * np.sin(2 * np.pi * rot_freq * t + rot_phase)
    world_to_image = similarity(np.exp(log_scale), angle, centre + pan, centre + shake)
    return CameraPath(kind, world_to_image)
