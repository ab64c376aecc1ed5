"""Camera presets: say how the background moves, get background point tracks.

A preset is a per-frame 2x3 affine ``A_t`` that maps a background point's
position in frame 0 (the reference image) to its position in frame t, in the
corner-origin pixel convention of ``fgbg.data.schema``. Frame 0 is the
reference itself (``A_0`` is the identity).

Presets (``CameraPreset.kind``):

- ``static``: nothing moves.
- ``pan``: the camera moves at ``speed`` px/frame towards ``direction_deg``
  (0 = right, 90 = down, image axes), so the background slides the other way.
- ``zoom``: the camera zooms about the image centre by ``zoom_rate`` per frame
  (> 0 zooms in: the background grows; < 0 zooms out).
- ``shake``: smooth random jitter of ``shake_amplitude`` px (a sum of sines,
  seeded by ``seed``), mean zero.
- ``combined``: pan, zoom and shake together with the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("static", "pan", "zoom", "shake", "combined")


@dataclass(frozen=True)
class CameraPreset:
    kind: str = "static"
    direction_deg: float = 0.0
    speed: float = 1.0
    zoom_rate: float = 0.01
    shake_amplitude: float = 1.5
    shake_frequency: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"camera.kind must be one of {KINDS}, got {self.kind!r}")
        if self.speed < 0:
            raise ValueError(f"camera.speed must be >= 0 px/frame, got {self.speed}")
        if not -0.5 < self.zoom_rate < 0.5:
            raise ValueError(f"camera.zoom_rate must lie in (-0.5, 0.5) per frame, got {self.zoom_rate}")
        if self.shake_amplitude < 0:
            raise ValueError(f"camera.shake_amplitude must be >= 0 px, got {self.shake_amplitude}")

    def scaled(self, factor: float) -> CameraPreset:
        """The same motion at an image ``factor`` times larger (pixel speeds scale, rates do not)."""
        return CameraPreset(
            self.kind, self.direction_deg, self.speed * factor, self.zoom_rate,
            self.shake_amplitude * factor, self.shake_frequency, self.seed,
        )  # fmt: skip


def camera_affines(preset: CameraPreset, num_frames: int, height: int, width: int) -> np.ndarray:
    """(T, 2, 3) float64 affines: frame-0 position -> frame-t position (``A_0`` = identity)."""
    t = np.arange(num_frames, dtype=np.float64)
    scale = np.ones_like(t)
    shift = np.zeros((num_frames, 2))
    kind = preset.kind
    if kind in ("pan", "combined"):
        a = np.deg2rad(preset.direction_deg)
        # The camera moves along (cos a, sin a): the background slides the opposite way.
        shift -= preset.speed * t[:, None] * np.array([np.cos(a), np.sin(a)])
    if kind in ("zoom", "combined"):
        scale = (1.0 + preset.zoom_rate) ** t
    if kind in ("shake", "combined") and preset.shake_amplitude > 0:
        rng = np.random.default_rng(preset.seed)
        freqs = preset.shake_frequency * rng.uniform(0.6, 1.6, (3, 2))
        phases = rng.uniform(0, 2 * np.pi, (3, 2))
        jitter = np.sin(2 * np.pi * freqs[None] * t[:, None, None] + phases[None]).sum(1) / np.sqrt(1.5)
        jitter -= np.sin(phases).sum(0) / np.sqrt(1.5)  # zero at frame 0
        shift += preset.shake_amplitude * jitter
    centre = np.array([width / 2.0, height / 2.0])
    affines = np.zeros((num_frames, 2, 3))
    affines[:, 0, 0] = scale
    affines[:, 1, 1] = scale
    # p_t = c + s (p_0 - c) + shift
    affines[:, :, 2] = centre * (1 - scale[:, None]) + shift
    return affines


def apply_affines(affines: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(T, 2, 3) affines applied to (N, 2) points -> (T, N, 2)."""
    return np.einsum("tij,nj->tni", affines[:, :, :2], points) + affines[:, None, :, 2]


def invert_affines(affines: np.ndarray) -> np.ndarray:
    """Inverse of each (2, 3) affine, (T, 2, 3)."""
    lin = np.linalg.inv(affines[:, :, :2])
    return np.concatenate([lin, -np.einsum("tij,tj->ti", lin, affines[:, :, 2])[:, :, None]], axis=2)


def grid_points(height: int, width: int, count: int, margin: float = 0.5, seed: int = 0) -> np.ndarray:
    """About ``count`` points on a jittered grid covering the image, (M, 2) float64, M >= count."""
    rng = np.random.default_rng(seed)
    aspect = width / height
    rows = max(1, int(np.ceil(np.sqrt(count / aspect))))
    cols = max(1, int(np.ceil(count / rows)))
    ys = (np.arange(rows) + 0.5) * height / rows
    xs = (np.arange(cols) + 0.5) * width / cols
    pts = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    jitter = rng.uniform(-0.3, 0.3, pts.shape) * np.array([width / cols, height / rows])
    return np.clip(pts + jitter, margin, np.array([width, height]) - margin)


def preset_tracks(
    preset: CameraPreset,
    start: int,
    num_frames: int,
    height: int,
    width: int,
    num_points: int,
    person_region: np.ndarray | None = None,
    link_frame: int | None = None,
) -> dict[str, np.ndarray]:
    """Background tracks for frames ``[start, start + num_frames)`` of a preset camera.

    Points are seeded on a grid in the first frame of the window (so a long
    pan keeps finding points) and followed exactly. Returns float32 / bool arrays:

    - ``tracks`` (T, N, 2) and ``visible`` (T, N): inside the frame.
    - ``anchor`` (N, 2), ``anchor_visible`` (N,): the same points in the
      reference (frame 0); not visible there when outside the reference or on
      the reference's person (``person_region``: (H, W) bool of the reference).
    - ``link`` (N, 2), ``link_visible`` (N,): the points in frame ``link_frame``
      (default ``start - 1``; all False when ``start == 0``).
    """
    total = start + num_frames
    affines = camera_affines(preset, total, height, width)
    seeds_t = grid_points(height, width, num_points, seed=preset.seed + start)[:num_points]
    # Frame-`start` positions -> frame-0 positions -> every frame.
    p0 = apply_affines(invert_affines(affines[start : start + 1]), seeds_t)[0]
    all_pos = apply_affines(affines, p0)  # (total, N, 2)
    size = np.array([width, height])

    def inside(p: np.ndarray) -> np.ndarray:
        return np.all((p >= 0) & (p < size), axis=-1)

    tracks = all_pos[start:]
    anchor = all_pos[0]
    anchor_visible = inside(anchor)
    if person_region is not None:
        iy = np.clip(anchor[:, 1].astype(int), 0, height - 1)
        ix = np.clip(anchor[:, 0].astype(int), 0, width - 1)
        anchor_visible &= ~person_region[iy, ix].astype(bool)
    lf = start - 1 if link_frame is None else link_frame
    if lf >= 0:
        link, link_visible = all_pos[lf], inside(all_pos[lf])
    else:
        link, link_visible = np.zeros_like(anchor), np.zeros(len(anchor), bool)
    return {
        "tracks": tracks.astype(np.float32),
        "visible": inside(tracks),
        "anchor": anchor.astype(np.float32),
        "anchor_visible": anchor_visible,
        "link": link.astype(np.float32),
        "link_visible": link_visible,
    }
