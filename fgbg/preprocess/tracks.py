"""Background point trackers behind a small registry, and the ranking of their tracks.

A tracker maps one clip to a ``TrackSet``:
  frames     (T, H, W, 3) uint8 RGB
  exclusion  (T, H, W) bool, True where no background point may be (the dilated person)
  roi        (x0, y0, width, height) integer box: points are seeded and kept inside it

Positions follow ``fgbg.data.schema``: continuous pixels, origin at the top-left
corner of the top-left pixel. OpenCV and CoTracker put pixel centres at integer
coordinates, so ``ours = theirs + 0.5``; the conversion happens only here.

Backends (``tracks.name``):
  lk         weight-free: corners (Shi-Tomasi) seeded on a grid outside the
             exclusion mask, pyramidal Lucas-Kanade with a forward-backward
             check, re-seeded whenever fewer than ``target_points`` are alive.
  cotracker  CoTracker from a local checkpoint (``cotracker`` package, installed
             from its source), queries seeded the same way on the first and last
             frame, tracked both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from omegaconf import DictConfig

from fgbg.preprocess.masks import body_region, dilate_masks
from fgbg.preprocess.registry import build_backend

RoiBox = tuple[int, int, int, int]  # x0, y0, width, height


@dataclass
class TrackSet:
    """tracks (T, N, 2) float32 x/y, held at the nearest known position where not visible;
    visible (T, N) bool; fb_error (T, N) float32 forward-backward error in pixels of the
    step that reached frame t (NaN where not measured: birth frames, invisible frames, trackers
    without a backward pass)."""

    tracks: np.ndarray
    visible: np.ndarray
    fb_error: np.ndarray

    @property
    def num_tracks(self) -> int:
        return int(self.tracks.shape[1])

    def take(self, index: np.ndarray) -> TrackSet:
        return TrackSet(self.tracks[:, index], self.visible[:, index], self.fb_error[:, index])


def pixel_lookup(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(H, W) bool, (N, 2) x/y (corner origin) -> (N,) value of the pixel under each point (False outside)."""
    h, w = mask.shape
    col, row = np.floor(points[:, 0]).astype(np.int64), np.floor(points[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = np.zeros(len(points), bool)
    out[inside] = mask[row[inside], col[inside]]
    return out


def person_exclusion(
    person: np.ndarray,
    keypoints: list[np.ndarray | None] | np.ndarray,
    margin_px: int,
    skeleton_scale: float,
    conf_threshold: float,
) -> np.ndarray:
    """(T, H, W) bool person masks and per-frame (18, 3) keypoints (or None) -> (T, H, W) bool where no
    background point may be: the mask united with the pose's body region (limbs ``skeleton_scale`` x half
    the median bone length thick, torso, head; ``fgbg.data.render.render_body_region``; 0 leaves it out),
    grown by ``margin_px`` pixels."""
    _, h, w = person.shape
    region = (
        np.stack([body_region(k, h, w, conf_threshold, skeleton_scale) for k in keypoints]) if len(person) else person
    )
    return dilate_masks(person | region, int(margin_px))


def inside_roi(points: np.ndarray, roi: RoiBox, border: float = 0.0) -> np.ndarray:
    """(N, 2) x/y (corner origin) -> (N,) bool: at least ``border`` pixels inside the box."""
    x0, y0, w, h = roi
    x, y = points[:, 0], points[:, 1]
    return (x >= x0 + border) & (x < x0 + w - border) & (y >= y0 + border) & (y < y0 + h - border)


def seed_points(
    gray: np.ndarray,
    allowed: np.ndarray,
    roi: RoiBox,
    count: int,
    existing: np.ndarray | None = None,
    grid: tuple[int, int] = (8, 8),
    quality_level: float = 0.001,
    min_distance: int = 4,
    block_size: int = 7,
) -> np.ndarray:
    """Up to ``count`` Shi-Tomasi corners (S, 2) x/y (corner origin) where ``allowed`` (H, W) is True.

    Corners are spread over a ``grid = (rows, cols)`` of cells of the roi: each
    cell first gets at most ``ceil(count / cells)`` of its strongest corners, the
    rest of the budget goes to the strongest leftovers. No seed lies within
    ``min_distance`` of an ``existing`` (M, 2) point.
    """
    if count <= 0:
        return np.zeros((0, 2), np.float32)
    x0, y0, w, h = roi
    mask = np.zeros(gray.shape, np.uint8)
    mask[y0 : y0 + h, x0 : x0 + w] = allowed[y0 : y0 + h, x0 : x0 + w]
    mask *= 255
    if existing is not None:
        for x, y in existing:
            cv2.circle(mask, (int(x), int(y)), min_distance, 0, -1)  # int(ours) = round(OpenCV's)
    found = cv2.goodFeaturesToTrack(
        gray,
        maxCorners=4 * count,
        qualityLevel=quality_level,
        minDistance=min_distance,
        mask=mask,
        blockSize=block_size,
    )
    if found is None:
        return np.zeros((0, 2), np.float32)
    corners = found.reshape(-1, 2) + 0.5  # OpenCV pixel centres -> corner origin; strongest first
    rows, cols = grid
    cell_r = np.clip(((corners[:, 1] - y0) * rows / h).astype(int), 0, rows - 1)
    cell_c = np.clip(((corners[:, 0] - x0) * cols / w).astype(int), 0, cols - 1)
    cell = cell_r * cols + cell_c
    per_cell = int(np.ceil(count / (rows * cols)))
    rank_in_cell = np.zeros(len(corners), int)
    seen: dict[int, int] = {}
    for i, c in enumerate(cell):
        rank_in_cell[i] = seen.get(c, 0)
        seen[c] = rank_in_cell[i] + 1
    first = np.flatnonzero(rank_in_cell < per_cell)
    rest = np.flatnonzero(rank_in_cell >= per_cell)
    chosen = np.concatenate([first, rest])[:count]
    return corners[np.sort(chosen)].astype(np.float32)


def track_order(visible: np.ndarray, fb_error: np.ndarray) -> np.ndarray:
    """Indices of tracks, best first: most visible frames, then lowest mean forward-backward error.

    Tracks with no measured error rank after measured ones of equal length; ties keep index order.
    """
    n_visible = visible.sum(0)
    measured = np.where(np.isfinite(fb_error) & visible, fb_error, 0.0)
    steps = (np.isfinite(fb_error) & visible).sum(0)
    mean_fb = np.where(steps > 0, measured.sum(0) / np.maximum(steps, 1), np.inf)
    return np.lexsort((np.arange(visible.shape[1]), mean_fb, -n_visible))


def select_tracks(trackset: TrackSet, max_tracks: int, min_visible_frames: int) -> TrackSet:
    """The best ``max_tracks`` tracks visible in at least ``min_visible_frames`` frames (see ``track_order``)."""
    order = track_order(trackset.visible, trackset.fb_error)
    order = order[trackset.visible[:, order].sum(0) >= min_visible_frames][:max_tracks]
    return trackset.take(order)


def _hold_positions(tracks: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Fill positions where a track is not visible with its last (else next) visible one."""
    out = tracks.copy()
    t = tracks.shape[0]
    for n in range(tracks.shape[1]):
        idx = np.flatnonzero(visible[:, n])
        if len(idx) == 0:
            continue
        nearest = idx[np.clip(np.searchsorted(idx, np.arange(t), side="right") - 1, 0, None)]
        nearest = np.where(np.arange(t) < idx[0], idx[0], nearest)
        out[:, n] = tracks[nearest, n]
    return out


class Tracker(Protocol):
    name: str
    version: str

    def __call__(self, frames: np.ndarray, exclusion: np.ndarray, roi: RoiBox) -> TrackSet: ...


class LKTracker:
    """Pyramidal Lucas-Kanade with a forward-backward check (OpenCV), re-seeding as points die.

    A point dies at the first step where either LK pass fails, the forward-backward
    error exceeds ``fb_threshold`` pixels, it leaves the roi (less ``border``), or
    it lands on the exclusion mask; a dead point is never revived.
    """

    name = "lk"

    def __init__(
        self,
        target_points: int = 200,
        grid: tuple[int, int] = (8, 8),
        quality_level: float = 0.001,
        min_distance: int = 4,
        block_size: int = 7,
        win_size: int = 21,
        max_level: int = 3,
        fb_threshold: float = 1.0,
        border: float = 2.0,
    ):
        self.seed_kwargs = dict(
            grid=tuple(grid), quality_level=quality_level, min_distance=min_distance, block_size=block_size
        )
        self.target_points = target_points
        self.lk_kwargs = dict(
            winSize=(win_size, win_size),
            maxLevel=max_level,
            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        )
        self.fb_threshold = fb_threshold
        self.border = border
        self.version = f"opencv-{cv2.__version__} win={win_size} levels={max_level} fb<{fb_threshold}px"

    def flow(self, a: np.ndarray, b: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LK from image a to b of (M, 2) corner-origin points -> (positions in b, ok)."""
        moved, status, _ = cv2.calcOpticalFlowPyrLK(a, b, (points - 0.5).reshape(-1, 1, 2), None, **self.lk_kwargs)
        return moved.reshape(-1, 2) + 0.5, status.reshape(-1).astype(bool)

    def __call__(self, frames: np.ndarray, exclusion: np.ndarray, roi: RoiBox) -> TrackSet:
        t_len = frames.shape[0]
        grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        allowed = ~exclusion
        pos = np.zeros((t_len, 0, 2), np.float32)
        vis = np.zeros((t_len, 0), bool)
        fb = np.full((t_len, 0), np.nan, np.float32)
        live = np.zeros(0, np.int64)

        def add_seeds(t: int) -> None:
            nonlocal pos, vis, fb, live
            seeds = seed_points(
                grays[t], allowed[t], roi, self.target_points - len(live), pos[t, live], **self.seed_kwargs
            )
            seeds = seeds[inside_roi(seeds, roi, self.border)]
            if len(seeds) == 0:
                return
            n0, k = pos.shape[1], len(seeds)
            pos = np.concatenate([pos, np.zeros((t_len, k, 2), np.float32)], 1)
            vis = np.concatenate([vis, np.zeros((t_len, k), bool)], 1)
            fb = np.concatenate([fb, np.full((t_len, k), np.nan, np.float32)], 1)
            pos[t, n0:] = seeds
            vis[t, n0:] = True
            live = np.concatenate([live, np.arange(n0, n0 + k)])

        add_seeds(0)
        for t in range(t_len - 1):
            if len(live):
                p0 = pos[t, live]
                p1, ok_fwd = self.flow(grays[t], grays[t + 1], p0)
                p0_back, ok_bwd = self.flow(grays[t + 1], grays[t], p1)
                err = np.linalg.norm(p0_back - p0, axis=1)
                ok = ok_fwd & ok_bwd & (err < self.fb_threshold) & inside_roi(p1, roi, self.border)
                ok &= pixel_lookup(allowed[t + 1], p1)
                kept = live[ok]
                pos[t + 1, kept] = p1[ok]
                vis[t + 1, kept] = True
                fb[t + 1, kept] = err[ok]
                live = kept
            if len(live) < self.target_points:
                add_seeds(t + 1)
        return TrackSet(_hold_positions(pos, vis), vis, fb)


class CoTrackerTracker:
    """CoTracker (``cotracker.predictor.CoTrackerPredictor``) from a local checkpoint file."""

    name = "cotracker"

    def __init__(
        self,
        checkpoint: str | None,
        device: str = "cpu",
        target_points: int = 200,
        grid: tuple[int, int] = (8, 8),
        quality_level: float = 0.001,
        min_distance: int = 4,
        block_size: int = 7,
    ):
        if not checkpoint:
            raise ValueError("tracks.name=cotracker needs tracks.cotracker.checkpoint=PATH (a local .pth file)")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"tracks.cotracker.checkpoint: no such file {checkpoint!r}")
        try:
            import torch
            from cotracker.predictor import CoTrackerPredictor
        except ImportError as err:
            raise ImportError(
                "tracks.name=cotracker needs the `cotracker` package, which is not on PyPI: "
                f"`pip install -e PATH_TO_CO-TRACKER_CHECKOUT` ({err})"
            ) from None
        self._torch = torch
        self.device = device
        self.model = CoTrackerPredictor(checkpoint=str(checkpoint)).to(device).eval()
        self.target_points = target_points
        self.seed_kwargs = dict(
            grid=tuple(grid), quality_level=quality_level, min_distance=min_distance, block_size=block_size
        )
        self.version = f"cotracker {Path(checkpoint).name}"

    def __call__(self, frames: np.ndarray, exclusion: np.ndarray, roi: RoiBox) -> TrackSet:
        torch = self._torch
        t_len = frames.shape[0]
        queries = []
        for t, count in ((0, self.target_points - self.target_points // 2), (t_len - 1, self.target_points // 2)):
            gray = cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY)
            seeds = seed_points(gray, ~exclusion[t], roi, count, **self.seed_kwargs)
            queries.append(np.concatenate([np.full((len(seeds), 1), t, np.float32), seeds - 0.5], 1))
        query = torch.from_numpy(np.concatenate(queries))[None].to(self.device)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None].float().to(self.device)
        with torch.no_grad():
            pred, pred_visible = self.model(video, queries=query, backward_tracking=True)
        tracks = pred[0].cpu().numpy().astype(np.float32) + 0.5
        visible = pred_visible[0].cpu().numpy().astype(bool)
        for t in range(t_len):
            visible[t] &= inside_roi(tracks[t], roi) & ~pixel_lookup(exclusion[t], tracks[t])
        return TrackSet(tracks, visible, np.full(visible.shape, np.nan, np.float32))


TRACKERS = {
    "lk": lambda cfg: LKTracker(**cfg.lk),
    "cotracker": lambda cfg: CoTrackerTracker(**cfg.cotracker),
}


def build_tracker(cfg: DictConfig) -> Tracker:
    """``cfg`` is the ``tracks`` node: ``name`` picks the backend, ``cfg[name]`` holds its options."""
    return build_backend(TRACKERS, cfg, "tracks")
