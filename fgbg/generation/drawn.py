"""Background paths drawn by hand: strokes on the reference image -> background point tracks.

A stroke is a polyline ``(K, 2)`` in the pixels of the tracks' frame (corner origin,
``fgbg.data.schema``), drawn from its start to its end. It becomes a group of
``points_per_stroke`` tracks: the lead point starts at the stroke's start in frame 0 and
moves along the stroke, timed by arc length (equal distance along the stroke per frame),
reaching its end at frame ``duration - 1`` and staying there after; the other points of
the group sit beside the start (across the stroke's first direction, ``spacing`` px apart)
and move by the same displacement (offsets 0, +1, -1, +2, ... times ``spacing``). With a camera preset, each point also moves as the
preset moves it: ``p_t = A_t(p_0) + d(t)`` (``A_t`` of ``fgbg.generation.camera``,
``d(t)`` the stroke's displacement), and the rest of the background gets the preset's own
grid of tracks (static without a preset), minus the points near a stroke's start.

Background tracks never lie on the person: a track whose frame-0 point is on the
reference's person (``person_region``) is dropped, and a stroke that loses all its points
is reported in ``warnings``. No strokes: the preset's tracks only.

``parse_strokes`` reads the demo page's drawing (JSON: ``{"width", "height", "strokes":
[[[x, y], ...], ...]}`` in the reference image's pixels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from fgbg.generation.camera import CameraPreset, apply_affines, camera_affines, preset_tracks


@dataclass
class DrawnTracks:
    """tracks (T, N, 2) float32, visible (T, N) bool, group (N,) int: stroke index, -1 for the preset's grid."""

    tracks: np.ndarray
    visible: np.ndarray
    group: np.ndarray
    warnings: list[str] = field(default_factory=list)


def parse_strokes(text: str | None) -> tuple[list[np.ndarray], tuple[int, int] | None]:
    """The page's drawing JSON -> (strokes as (K, 2) float arrays, (height, width) they are drawn on).

    Empty text or no strokes -> ([], None). A malformed drawing raises ``ValueError`` naming what was expected.
    """
    if not text or not str(text).strip():
        return [], None
    try:
        data = json.loads(text)
        strokes = data.get("strokes", [])
        size = (int(data["height"]), int(data["width"])) if strokes else None
        arrays = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in strokes]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            'drawn paths: expected JSON {"width": W, "height": H, "strokes": [[[x, y], ...], ...]} '
            f"in the reference image's pixels ({type(err).__name__}: {err})"
        ) from None
    if size is not None and min(size) < 1:
        raise ValueError(f"drawn paths: the image size must be positive, got {size[1]}x{size[0]}")
    return [a for a in arrays if len(a) and np.all(np.isfinite(a))], size


def along_stroke(stroke: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Points at the given fractions (in [0, 1]) of the stroke's arc length, (len(fractions), 2)."""
    stroke = np.asarray(stroke, dtype=np.float64).reshape(-1, 2)
    seg = np.linalg.norm(np.diff(stroke, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] <= 0:
        return np.repeat(stroke[:1], len(fractions), axis=0)
    s = np.clip(fractions, 0, 1) * arc[-1]
    return np.stack([np.interp(s, arc, stroke[:, i]) for i in range(2)], axis=-1)


def _start_normal(stroke: np.ndarray) -> np.ndarray:
    """Unit vector across the stroke's first direction (its first 2 px), (0, 1) for a dot."""
    ahead = along_stroke(stroke, np.array([0.0, 1.0]))
    seg = np.linalg.norm(np.diff(stroke, axis=0), axis=1).sum() if len(stroke) > 1 else 0.0
    if seg > 0:
        ahead = along_stroke(stroke, np.array([0.0, min(1.0, 2.0 / seg)]))
    d = ahead[1] - ahead[0]
    n = np.linalg.norm(d)
    return np.array([0.0, 1.0]) if n == 0 else np.array([-d[1], d[0]]) / n


def stroke_tracks(stroke: np.ndarray, num_frames: int, points: int = 3, spacing: float = 1.5,
                  duration: int | None = None) -> np.ndarray:  # fmt: skip
    """One stroke -> (T, points, 2) positions: the group moves along the stroke by arc length over ``duration``."""
    duration = num_frames if duration is None else max(1, min(int(duration), num_frames))
    frac = np.minimum(np.arange(num_frames) / max(duration - 1, 1), 1.0)
    path = along_stroke(stroke, frac)  # (T, 2)
    steps = np.array([(i + 1) // 2 * (1 if i % 2 else -1) for i in range(points)], dtype=np.float64)  # 0, 1, -1, 2
    offsets = steps[:, None] * spacing * _start_normal(stroke)[None]  # the lead point on the stroke, others beside
    return path[:, None, :] + offsets[None]


def drawn_tracks(
    strokes: list[np.ndarray],
    num_frames: int,
    height: int,
    width: int,
    preset: CameraPreset | None = None,
    num_points: int = 50,
    points_per_stroke: int = 3,
    spacing: float = 1.5,
    duration: int | None = None,
    person_region: np.ndarray | None = None,
    clear_radius: float = 2.0,
) -> DrawnTracks:
    """Strokes (+ a camera preset) -> background tracks for frames [0, num_frames) of a (height, width) frame.

    At most ``num_points`` tracks: the strokes' come first (``points_per_stroke`` each, fewer if there
    are too many strokes), the preset's grid fills the rest. ``duration``: frames over which a stroke
    is travelled (default ``num_frames``). See the module doc.
    """
    if num_frames < 1 or height < 1 or width < 1 or num_points < 1 or points_per_stroke < 1:
        raise ValueError(
            f"drawn_tracks: num_frames={num_frames}, height={height}, width={width}, num_points={num_points}, "
            f"points_per_stroke={points_per_stroke}: all must be >= 1"
        )
    preset = preset or CameraPreset("static")
    if person_region is not None and person_region.shape != (height, width):
        raise ValueError(f"person_region: expected ({height}, {width}) like the frame, got {person_region.shape}")
    affines = camera_affines(preset, num_frames, height, width)
    size = np.array([width, height])

    def on_person(p: np.ndarray) -> np.ndarray:
        if person_region is None:
            return np.zeros(len(p), bool)
        iy = np.clip(p[:, 1].astype(int), 0, height - 1)
        ix = np.clip(p[:, 0].astype(int), 0, width - 1)
        inside = np.all((p >= 0) & (p < size), axis=-1)
        return inside & person_region[iy, ix].astype(bool)

    per_stroke = max(1, min(points_per_stroke, num_points // max(len(strokes), 1)))
    groups, tracks, warnings = [], [], []
    for k, stroke in enumerate(strokes):
        own = stroke_tracks(stroke, num_frames, per_stroke, spacing, duration)  # (T, P, 2)
        keep = ~on_person(own[0])
        if not keep.any():
            warnings.append(
                f"stroke {k + 1} starts on the person and was dropped (background paths stay off the person)"
            )
            continue
        if not keep.all():
            warnings.append(
                f"stroke {k + 1}: {int((~keep).sum())} of its {len(keep)} points lie on the person, dropped"
            )
        own = own[:, keep]
        moved = apply_affines(affines, own[0]) + (own - own[:1])  # preset motion + the stroke's displacement
        if sum(t.shape[1] for t in tracks) + moved.shape[1] > num_points:
            warnings.append(f"stroke {k + 1} and later ones dropped: at most {num_points} tracks")
            break
        tracks.append(moved)
        groups += [k] * moved.shape[1]
    stroke_tr = np.concatenate(tracks, axis=1) if tracks else np.zeros((num_frames, 0, 2))
    room = num_points - stroke_tr.shape[1]
    # A few spare grid points: those near a stroke's start or on the person are left out.
    grid = preset_tracks(preset, 0, num_frames, height, width, max(room, 1) + 2 * stroke_tr.shape[1], person_region)
    g_tr = grid["tracks"].astype(np.float64)
    starts = stroke_tr[0]
    far = np.ones(g_tr.shape[1], bool)
    if len(starts):
        far = np.linalg.norm(g_tr[0][:, None] - starts[None], axis=-1).min(1) > clear_radius
    far &= grid["anchor_visible"]  # off the person in frame 0 (and inside the frame)
    g_tr = g_tr[:, far][:, : max(room, 0)]
    all_tr = np.concatenate([stroke_tr, g_tr], axis=1)
    visible = np.all((all_tr >= 0) & (all_tr < size), axis=-1)
    group = np.array(groups + [-1] * g_tr.shape[1], dtype=np.int64)
    return DrawnTracks(all_tr.astype(np.float32), visible, group, warnings)
