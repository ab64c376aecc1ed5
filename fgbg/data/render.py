"""Pure rendering functions: pose maps, track maps, overlays and contact sheets.

All positions follow the convention of ``fgbg.data.schema``: continuous pixel
coordinates, origin at the top-left corner of the top-left pixel, so the pixel
under point ``(x, y)`` is ``[floor(y), floor(x)]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from fgbg.data.schema import OPENPOSE18_BONES, OPENPOSE18_COLORS

TRACK_MAP_CHANNELS = 3  # (dx, dy, presence); see render_track_maps
_SHIFT = 4  # cv2 sub-pixel drawing: coordinates carry 4 fractional bits


def pose_line_width(height: int, width: int, scale: float = 1.0) -> int:
    """Limb thickness in pixels for a map of this size (2 px at 64x64, 1 px at 32x32)."""
    return max(1, int(round(min(height, width) / 32.0 * scale)))


def _cv_point(x: float, y: float) -> tuple[int, int]:
    # cv2 draws in pixel-centre coordinates; ours have the origin at the corner.
    return int(round((x - 0.5) * (1 << _SHIFT))), int(round((y - 0.5) * (1 << _SHIFT)))


def _cv_points(xy: np.ndarray) -> list:
    """(..., 2) corner-origin points -> nested lists of cv2 fixed-point ints (``_cv_point``, vectorised).

    Clipped to +-2**26 so the shifted values stay inside int32 (such points are far off any canvas).
    """
    fixed = np.round((np.asarray(xy, np.float64) - 0.5) * (1 << _SHIFT))
    return np.clip(fixed, -(2**26), 2**26).astype(np.int64).tolist()


# Bone colours: the keypoint palette dimmed to 80 %, as OpenPose draws limbs.
_BONE_COLORS = tuple(
    tuple(int(c * 0.8) for c in OPENPOSE18_COLORS[i % len(OPENPOSE18_COLORS)]) for i in range(len(OPENPOSE18_BONES))
)


def draw_pose(
    canvas: np.ndarray,
    keypoints: np.ndarray,
    conf_threshold: float = 0.3,
    line_width: int | None = None,
    point_radius: int | None = None,
) -> np.ndarray:
    """Draw one OpenPose-18 skeleton onto ``canvas`` (H, W, 3) uint8, in place; returns it.

    keypoints: (K, 3) x, y, confidence. Bones whose two ends are below
    ``conf_threshold`` are not drawn; colours follow OpenPose's palette.
    """
    h, w = canvas.shape[:2]
    lw = line_width if line_width is not None else pose_line_width(h, w)
    pr = point_radius if point_radius is not None else lw
    ok = (keypoints[:, 2] >= conf_threshold).tolist()
    pts = [tuple(p) for p in _cv_points(keypoints[:, :2])]
    for i, (a, b) in enumerate(OPENPOSE18_BONES):
        if ok[a] and ok[b]:
            cv2.line(canvas, pts[a], pts[b], _BONE_COLORS[i], lw, cv2.LINE_AA, _SHIFT)
    for k in range(min(len(ok), len(OPENPOSE18_COLORS))):
        if ok[k]:
            cv2.circle(canvas, pts[k], pr << _SHIFT, OPENPOSE18_COLORS[k], -1, cv2.LINE_AA, _SHIFT)
    return canvas


def render_pose_maps(
    pose: np.ndarray, height: int, width: int, conf_threshold: float = 0.3, line_scale: float = 1.0
) -> np.ndarray:
    """(T, K, 3) keypoints -> (T, 3, H, W) float32 pose maps in [0, 1] (OpenPose colours on black)."""
    lw = pose_line_width(height, width, line_scale)
    out = np.zeros((pose.shape[0], height, width, 3), np.uint8)
    for t in range(pose.shape[0]):
        draw_pose(out[t], pose[t], conf_threshold, lw)
    return out.transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def render_track_maps(
    tracks: np.ndarray,
    visible: np.ndarray,
    anchor: np.ndarray,
    anchor_visible: np.ndarray,
    height: int,
    width: int,
    sigma: float | None = None,
) -> np.ndarray:
    """Sparse tracks -> dense per-frame maps, (T, 3, H, W) float32.

    tracks: (T, N, 2) positions; visible: (T, N) bool; anchor: (N, 2) positions
    of the same points in the reference image; anchor_visible: (N,) bool (False
    also for padding). Each point visible at frame t and in the reference is
    splatted as a Gaussian (std ``sigma`` px, default ``max(H, W) / 32``) at its
    frame-t position. Channels:

    0, 1: displacement from the reference, ``(x_t - x_ref) / W`` and
          ``(y_t - y_ref) / H`` (weighted mean of overlapping splats)
    2:    presence, ``min(1, sum of splat weights)``
    """
    t_len, n = visible.shape
    sel = visible & anchor_visible[None]  # (T, N)
    if n == 0 or not sel.any():
        return np.zeros((t_len, TRACK_MAP_CHANNELS, height, width), np.float32)
    sigma = float(sigma) if sigma else max(height, width) / 32.0
    ys = np.arange(height, dtype=np.float32) + 0.5
    xs = np.arange(width, dtype=np.float32) + 0.5
    # Unselected points (hidden, padding; possibly NaN) are zeroed so they cannot leak into the sums.
    tracks = np.where(sel[..., None], tracks, 0).astype(np.float32, copy=False)
    anchor = np.where(anchor_visible[:, None], anchor, 0).astype(np.float32, copy=False)
    d = (tracks - anchor[None]) / np.array([width, height], np.float32)  # (T, N, 2)
    # Separable Gaussians; points not selected get weight 0 through gx.
    gx = np.exp(-0.5 * ((xs - tracks[..., :1]) / sigma) ** 2) * sel[..., None]  # (T, N, W)
    gy = np.exp(-0.5 * ((ys - tracks[..., 1:]) / sigma) ** 2)  # (T, N, H)
    weighted = np.stack([gx, gx * d[..., :1], gx * d[..., 1:]], 1)  # (T, 3, N, W)
    # One batched matmul over frames: sum_n gy[n, h] * weighted[c, n, w] -> (T, 3, H, W)
    wsum, dx, dy = np.moveaxis(np.matmul(gy.transpose(0, 2, 1)[:, None], weighted), 1, 0)
    presence = np.minimum(wsum, 1.0)
    norm = presence / np.maximum(wsum, 1e-6)
    return np.stack([dx * norm, dy * norm, presence], 1).astype(np.float32, copy=False)


_TRACK_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255]],
    np.uint8,
)  # fmt: skip


def draw_overlay(
    frame: np.ndarray,
    keypoints: np.ndarray | None = None,
    points: np.ndarray | None = None,
    points_visible: np.ndarray | None = None,
    trails: np.ndarray | None = None,
    scale: int = 1,
    conf_threshold: float = 0.3,
) -> np.ndarray:
    """Upscale ``frame`` (H, W, 3) by ``scale`` and draw skeleton and track points on it.

    points: (N, 2) positions in the frame's pixels; trails: (S, N, 2) earlier
    positions drawn as a thin line per point. Visible points are filled dots,
    occluded ones hollow.
    """
    img = np.ascontiguousarray(np.repeat(np.repeat(frame, scale, 0), scale, 1)) if scale > 1 else frame.copy()
    h, w = img.shape[:2]
    if keypoints is not None:
        kp = keypoints.copy()
        kp[:, :2] *= scale
        draw_pose(img, kp, conf_threshold, line_width=max(1, pose_line_width(h, w) // 2))
    if points is not None:
        vis = np.ones(len(points), bool) if points_visible is None else points_visible
        r = max(2, h // 96)
        for i, (x, y) in enumerate(points * scale):
            color = tuple(int(c) for c in _TRACK_PALETTE[i % len(_TRACK_PALETTE)])
            if trails is not None and len(trails) > 1:
                pts = np.array([_cv_point(*q) for q in trails[:, i] * scale], np.int32)
                cv2.polylines(img, [pts], False, color, 1, cv2.LINE_AA, _SHIFT)
            cv2.circle(img, _cv_point(x, y), r << _SHIFT, color, -1 if vis[i] else 1, cv2.LINE_AA, _SHIFT)
    return img


def contact_sheet(
    rows: Sequence[dict],
    num_columns: int = 8,
    min_size: int = 128,
    gap: int = 2,
) -> np.ndarray:
    """Build one image from several clips, one row per clip, frames sampled evenly.

    Each row is a dict with ``frames`` (T, H, W, 3) uint8 and optionally
    ``pose`` (T, K, 3), ``tracks`` (T, N, 2), ``visible`` (T, N), ``label`` and
    ``trails`` (default True: draw each point's last positions; False when the
    rows' point indices do not name the same points from frame to frame).
    Frames are upscaled (nearest) to at least ``min_size`` pixels high so the
    overlays stay legible. Returns (H', W', 3) uint8.
    """
    tiles_rows = []
    for row in rows:
        frames = row["frames"]
        t = frames.shape[0]
        idx = np.unique(np.linspace(0, t - 1, min(num_columns, t)).round().astype(int))
        scale = max(1, int(np.ceil(min_size / frames.shape[1])))
        tiles = []
        for i in idx:
            has_trails = row.get("tracks") is not None and row.get("trails", True)
            trails = row["tracks"][max(0, i - 4) : i + 1] if has_trails else None
            tiles.append(
                draw_overlay(
                    frames[i],
                    keypoints=row["pose"][i] if row.get("pose") is not None else None,
                    points=row["tracks"][i] if row.get("tracks") is not None else None,
                    points_visible=row["visible"][i] if row.get("visible") is not None else None,
                    trails=trails,
                    scale=scale,
                )
            )
        th, tw = tiles[0].shape[:2]
        line = np.full((th, len(tiles) * (tw + gap) - gap, 3), 255, np.uint8)
        for j, tile in enumerate(tiles):
            line[:, j * (tw + gap) : j * (tw + gap) + tw] = tile
        label = row.get("label")
        if label:
            cv2.putText(line, str(label), (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles_rows.append(line)
    width = max(r.shape[1] for r in tiles_rows)
    sheet = np.full((sum(r.shape[0] for r in tiles_rows) + gap * (len(tiles_rows) - 1), width, 3), 255, np.uint8)
    y = 0
    for r in tiles_rows:
        sheet[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + gap
    return sheet


def save_png(image: np.ndarray, path) -> None:
    """Write an (H, W, 3) uint8 image as PNG, atomically."""
    import os

    tmp = f"{path}.tmp"
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


# Bones that carry flesh (arms, legs, neck-hip lines); face bones are covered by the head disc.
_BODY_LIMBS = ((1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0))  # fmt: skip
_TORSO = (2, 5, 11, 8)  # r_shoulder, l_shoulder, l_hip, r_hip
_HEAD = (0, 14, 15, 16, 17)  # nose, eyes, ears


def render_body_region(
    keypoints: np.ndarray,
    height: int,
    width: int,
    conf_threshold: float = 0.3,
    limb_scale: float = 1.0,
) -> np.ndarray:
    """(T, K, 3) OpenPose-18 keypoints -> (T, 1, H, W) float32 coarse person region in {0, 1}.

    Drawn from the keypoints alone (so it exists at generation time too): thick
    limbs, the filled torso quadrilateral and a head disc. Thickness follows the
    person's size: ``limb_scale * 0.5 * b`` where ``b`` is the median length of
    the confident limbs (``min(H, W) / 16`` when none is confident); the head
    disc has radius ``0.6 * b`` around the mean of the confident face points.
    Keypoints below ``conf_threshold`` are ignored.
    """
    if keypoints.ndim != 3 or keypoints.shape[2] != 3 or keypoints.shape[1] < 18:
        raise ValueError(f"keypoints must be (T, K >= 18, 3) in OpenPose-18 order, got {keypoints.shape}")
    t_len = keypoints.shape[0]
    out = np.zeros((t_len, height, width), np.uint8)
    ok = keypoints[..., 2] >= conf_threshold  # (T, K)
    limbs = np.array(_BODY_LIMBS)
    limb_ok = ok[:, limbs[:, 0]] & ok[:, limbs[:, 1]]  # (T, L)
    lengths = np.linalg.norm(keypoints[:, limbs[:, 0], :2] - keypoints[:, limbs[:, 1], :2], axis=-1)
    fallback = min(height, width) / 16.0
    body = np.array([np.median(lengths[t][limb_ok[t]]) if limb_ok[t].any() else fallback for t in range(t_len)])
    thickness = np.maximum(1, np.round(limb_scale * 0.5 * body)).astype(int).tolist()
    pts = _cv_points(keypoints[..., :2])
    head = list(_HEAD)
    for t in np.flatnonzero(ok.any(1)).tolist():
        canvas, p, lw = out[t], pts[t], thickness[t]
        for (a, b), draw in zip(_BODY_LIMBS, limb_ok[t].tolist()):
            if draw:
                cv2.line(canvas, p[a], p[b], 1, lw, cv2.LINE_8, _SHIFT)
        torso = [p[i] for i in _TORSO if ok[t, i]]
        if len(torso) >= 3:
            cv2.fillConvexPoly(canvas, cv2.convexHull(np.array(torso, np.int32)), 1, cv2.LINE_8, _SHIFT)
        face = ok[t, head]
        if face.any():
            centre = _cv_points(keypoints[t, head][face, :2].mean(0))
            radius = max(1.0, 0.6 * body[t] * limb_scale)
            cv2.circle(canvas, centre, int(round(radius * (1 << _SHIFT))), 1, -1, cv2.LINE_8, _SHIFT)
        # Confident joints are always covered, even when no bone reaches them.
        for k in np.flatnonzero(ok[t]).tolist():
            cv2.circle(canvas, p[k], max(1, lw // 2) << _SHIFT, 1, -1, cv2.LINE_8, _SHIFT)
    return out[:, None].astype(np.float32)
