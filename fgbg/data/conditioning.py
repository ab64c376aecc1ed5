"""The per-sample conditioning arrays of the training batch contract.

``build_conditions`` is the one function that turns a clip window (already
cropped and resized), a reference frame, an optional link frame and a set of
tracks into the arrays the model consumes. The datamodule calls it for every
training sample; the generation app calls it with a user's reference image and
tracks from a camera preset (no target frames, no true masks).

All positions are pixels with the corner origin of ``fgbg.data.schema``.
Images come in as uint8 (H, W, 3) and leave as float32 (3, H, W) in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fgbg.data.render import render_body_region, render_pose_maps, render_track_maps


def image_to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    chw = np.moveaxis(images, -1, -3)
    return np.ascontiguousarray(chw, dtype=np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def select_tracks(
    rng: np.random.Generator,
    visible_in_reference: np.ndarray,
    min_tracks: int,
    max_tracks: int,
) -> np.ndarray:
    """Indices of a random track subset of size ``n ~ U{min_tracks..max_tracks}``.

    Drawn from the tracks visible in the reference frame first, topped up with
    the others when there are too few; when the clip holds fewer tracks than
    ``n`` all of them are taken. Returns int64 (n,), reference-visible first.
    """
    if not 0 <= min_tracks <= max_tracks:
        raise ValueError(f"need 0 <= min_tracks <= max_tracks, got {min_tracks} and {max_tracks}")
    n = int(rng.integers(min_tracks, max_tracks + 1))
    seen = np.flatnonzero(visible_in_reference)
    unseen = np.flatnonzero(~visible_in_reference)
    take_seen = rng.permutation(seen)[:n]
    take_unseen = rng.permutation(unseen)[: max(0, n - len(take_seen))]
    return np.concatenate([take_seen, take_unseen]).astype(np.int64)


def build_conditions(
    *,
    height: int,
    width: int,
    reference_frame: np.ndarray,
    reference_keypoints: np.ndarray,
    keypoints: np.ndarray,
    tracks: np.ndarray,
    track_visible: np.ndarray,
    track_anchor: np.ndarray,
    track_anchor_visible: np.ndarray,
    max_tracks: int,
    frames: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    reference_mask: np.ndarray | None = None,
    link_frame: np.ndarray | None = None,
    pose_conf_threshold: float = 0.3,
    pose_line_scale: float = 1.0,
    track_sigma: float | None = None,
    body_limb_scale: float = 1.0,
    key: str = "",
) -> dict[str, Any]:
    """Arrays of one sample of the batch contract (numpy; ``collate_conditions`` batches them).

    Inputs (T frames of the window, N <= max_tracks tracks, K keypoints):
      reference_frame (H, W, 3) uint8; reference_keypoints (K, 3);
      keypoints (T, K, 3); tracks (T, N, 2); track_visible (T, N) bool;
      track_anchor (N, 2) positions in the reference; track_anchor_visible (N,) bool;
      optional: frames (T, H, W, 3) uint8, masks (T, H, W) bool,
      reference_mask (H, W) bool, link_frame (H, W, 3) uint8.
    Output keys and shapes: see the batch contract (without the batch axis).
    Optional inputs that are None leave ``frames``, ``masks`` and
    ``reference_mask`` out; a missing link frame gives zeros and
    ``link_available = False``. Tracks are padded to ``max_tracks``.
    """
    t_len, n = track_visible.shape
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints must be (T, K, 3), got {keypoints.shape} (sample {key!r})")
    if keypoints.shape[0] != t_len or tracks.shape != (t_len, n, 2):
        raise ValueError(
            f"keypoints {keypoints.shape}, tracks {tracks.shape} and track_visible {track_visible.shape} "
            f"must share T frames and N points (sample {key!r})"
        )
    if track_anchor.shape != (n, 2) or track_anchor_visible.shape != (n,):
        raise ValueError(
            f"track_anchor {track_anchor.shape} / track_anchor_visible {track_anchor_visible.shape} "
            f"must be ({n}, 2) / ({n},) (sample {key!r})"
        )
    if n > max_tracks:
        raise ValueError(f"{n} tracks given but max_tracks={max_tracks} (sample {key!r}): select a subset first")
    for name, img in (("reference_frame", reference_frame), ("link_frame", link_frame)):
        if img is not None and img.shape != (height, width, 3):
            raise ValueError(f"{name} must be ({height}, {width}, 3) uint8, got {img.shape} (sample {key!r})")
    if frames is not None and frames.shape != (t_len, height, width, 3):
        raise ValueError(f"frames must be ({t_len}, {height}, {width}, 3), got {frames.shape} (sample {key!r})")

    pad = max_tracks - n
    tracks_p = np.pad(tracks.astype(np.float32), ((0, 0), (0, pad), (0, 0)))
    visible_p = np.pad(track_visible.astype(bool), ((0, 0), (0, pad)))
    anchor_p = np.pad(track_anchor.astype(np.float32), ((0, pad), (0, 0)))
    anchor_visible_p = np.pad(track_anchor_visible.astype(bool), (0, pad))
    valid = np.arange(max_tracks) < n

    out: dict[str, Any] = {
        "key": key,
        "reference": image_to_unit_range(reference_frame),
        "reference_keypoints": reference_keypoints.astype(np.float32),
        "keypoints": keypoints.astype(np.float32),
        "pose_maps": render_pose_maps(keypoints, height, width, pose_conf_threshold, pose_line_scale),
        "body_region": render_body_region(keypoints, height, width, pose_conf_threshold, body_limb_scale),
        "tracks": tracks_p,
        "track_visible": visible_p,
        "track_valid": valid,
        "track_anchor": anchor_p,
        "track_anchor_visible": anchor_visible_p,
        "track_maps": render_track_maps(tracks_p, visible_p, anchor_p, anchor_visible_p, height, width, track_sigma),
        "link_available": np.bool_(link_frame is not None),
        "link_frame": (
            image_to_unit_range(link_frame) if link_frame is not None else np.zeros((3, height, width), np.float32)
        ),
    }
    if frames is not None:
        out["frames"] = image_to_unit_range(frames)
    if masks is not None:
        out["masks"] = masks[:, None].astype(np.float32)
    if reference_mask is not None:
        out["reference_mask"] = reference_mask[None].astype(np.float32)
    return out


def collate_conditions(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample dicts from ``build_conditions`` into a batch of torch tensors.

    Numeric arrays gain a leading batch axis (bool stays bool); ``key`` becomes
    a list of strings. All samples must carry the same keys.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    names = samples[0].keys()
    for s in samples[1:]:
        if s.keys() != names:
            raise ValueError(
                f"samples carry different keys: {sorted(names)} vs {sorted(s.keys())} (sample {s['key']!r})"
            )
    batch: dict[str, Any] = {}
    for name in names:
        if name == "key":
            batch[name] = [str(s[name]) for s in samples]
        else:
            batch[name] = torch.from_numpy(np.stack([np.asarray(s[name]) for s in samples]))
    return batch
