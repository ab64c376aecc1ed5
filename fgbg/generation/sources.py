"""Driving motion from files: preprocessed shards, pose/track files, driving videos.

Consecutive clips of one video in a shard (keys ``<video>_<clip>``) are joined
into one long pose sequence. Their tracks are different point sets, so they are
laid side by side as column blocks of one (T, N_total, 2) array, each block
visible only during its own clip: a generation window then picks the points
seen in it (``DrivingMotion.window``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from fgbg.data.schema import Clip
from fgbg.data.shards import SkipCounter, iter_clips
from fgbg.generation.inputs import Fit, InputError, load_pose, load_tracks

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def _clip_start(clip: Clip) -> int | None:
    for name in ("clip_start_frame", "first_frame"):
        if name in clip.meta:
            return int(clip.meta[name])
    return None


def video_of(key: str) -> str:
    return key.rsplit("_", 1)[0] if "_" in key else key


def read_video_clips(shards: list[str], key: str | None = None) -> list[Clip]:
    """The contiguous run of clips of one video, starting at ``key`` (default: the first sample)."""
    counter = SkipCounter()
    clips = list(iter_clips(shards, counter))
    if not clips:
        raise InputError(f"motion shards {shards}: no readable sample ({counter.as_dict()})")
    if key is not None:
        first = next((c for c in clips if c.key == key), None)
        if first is None:
            raise InputError(f"motion shards {shards}: no sample with key {key!r}")
    else:
        first = clips[0]
    same = sorted((c for c in clips if video_of(c.key) == video_of(first.key)), key=lambda c: c.key)
    run = [first]
    for clip in same[same.index(first) + 1 :]:
        prev = run[-1]
        s_prev, s_next = _clip_start(prev), _clip_start(clip)
        contiguous = s_prev is not None and s_next == s_prev + prev.num_frames
        if not contiguous or clip.meta.get("shot") != prev.meta.get("shot") or clip.size != prev.size:
            break
        run.append(clip)
    return run


def join_clips(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips -> pose (T, K, 3), tracks (T, sum N_i, 2), visible (T, sum N_i) as column blocks."""
    pose = np.concatenate([c.pose for c in clips])
    total_t, total_n = pose.shape[0], sum(c.tracks.shape[1] for c in clips)
    tracks = np.zeros((total_t, total_n, 2), np.float32)
    visible = np.zeros((total_t, total_n), bool)
    t0 = n0 = 0
    for c in clips:
        t, n = c.tracks.shape[:2]
        tracks[:, n0 : n0 + n] = c.tracks[0]  # hold positions outside the clip (never visible there)
        tracks[t0 : t0 + t, n0 : n0 + n] = c.tracks
        visible[t0 : t0 + t, n0 : n0 + n] = c.visible
        t0, n0 = t0 + t, n0 + n
    return pose, tracks, visible


def _map_pose(pose: np.ndarray, fit: Fit, height: int, width: int) -> np.ndarray:
    out = pose.copy()
    out[..., :2] = fit.points(pose[..., :2])
    outside = (out[..., 0] < 0) | (out[..., 0] >= width) | (out[..., 1] < 0) | (out[..., 1] >= height)
    out[..., 2] = np.where(outside, 0.0, out[..., 2])
    return out


def load_motion_arrays(
    motion: str | None,
    height: int,
    width: int,
    fit_mode: str = "crop",
    motion_key: str | None = None,
    pose_size: tuple[int, int] | None = None,
    tracks_file: str | None = None,
    preprocess_cfg=None,
) -> dict:
    """Read the driving motion and map it to the output size.

    Returns ``pose`` (T, 18, 3) and, when the source has them, ``tracks``
    (T, N, 2) and ``visible`` (T, N), plus ``source`` and ``frames`` (the
    driving frames at output size, when the source has them; for sheets).
    """
    if motion is None:
        raise InputError("motion=null: give a driving motion (a shard .tar, a pose file .json/.npy, or a video file)")
    path = Path(motion)
    if not path.exists():
        raise InputError(f"motion {path} does not exist (expected a shard .tar, a pose .json/.npy, or a video file)")
    out: dict = {"source": str(path)}
    if path.suffix == ".tar" or path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else [str(path)]
        if not shards:
            raise InputError(f"motion folder {path} holds no .tar shards")
        clips = read_video_clips(shards, motion_key)
        pose, tracks, visible = join_clips(clips)
        h, w = clips[0].size
        fit = Fit.make(h, w, height, width, fit_mode)
        out["pose"] = _map_pose(pose, fit, height, width)
        out["tracks"], out["visible"] = fit.points(tracks), visible
        out["source"] = f"{path} ({len(clips)} clips from {clips[0].key})"
    elif path.suffix in (".json", ".npy"):
        pose, (h, w) = load_pose(path, pose_size)
        out["pose"] = _map_pose(pose, Fit.make(h, w, height, width, fit_mode), height, width)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        with tempfile.TemporaryDirectory(prefix="fgbg-drive-") as tmp:
            shards = preprocess_driving_video(path, Path(tmp), preprocess_cfg)
            return load_motion_arrays(str(Path(tmp)), height, width, fit_mode, None, None, tracks_file) | {
                "source": f"{path} (preprocessed: {len(shards)} shards)"
            }
    else:
        raise InputError(f"motion {path}: unknown kind {path.suffix!r}; expected .tar, .json, .npy or a video file")
    if tracks_file is not None:
        tr, vis, (h, w) = load_tracks(tracks_file)
        if tr.shape[0] != out["pose"].shape[0]:
            raise InputError(
                f"tracks file {tracks_file} has {tr.shape[0]} frames but the pose sequence {path} has"
                f" {out['pose'].shape[0]}: they must describe the same frames"
            )
        fit = Fit.make(h, w, height, width, fit_mode)
        out["tracks"], out["visible"] = fit.points(tr), vis
    return out


def preprocess_driving_video(path: Path, out_dir: Path, preprocess_cfg) -> list[str]:
    """Run ``fgbg-preprocess`` on one driving video into ``out_dir``; returns its shards."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from fgbg.preprocess import preprocess
    from fgbg.utils.config import CONF_DIR

    # Paths are set after composing: an override string breaks on names with spaces, '=' or brackets.
    overrides = ["input=unset", "output=unset", "workers=1"]
    if GlobalHydra.instance().is_initialized():  # inside fgbg-generate / fgbg-app: @hydra.main on the same conf/
        cfg = compose("preprocess", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("preprocess", overrides=overrides)
    cfg.input, cfg.output = str(path), str(out_dir)
    if preprocess_cfg:
        cfg = OmegaConf.merge(cfg, preprocess_cfg)
    summary = preprocess(cfg)
    shards = sorted(str(p) for p in out_dir.glob("*.tar"))
    if not shards:
        raise InputError(f"driving video {path}: preprocessing produced no clip ({summary})")
    return shards
