"""Inputs of long-video generation: the reference image and the driving motion.

Motion file formats (documented in ``docs/generation.md``):

- pose sequence: ``.npy`` float (T, 18, 3) x, y, confidence in the pixels of
  ``pose_size`` (given in the config), or ``.json``
  ``{"width": W, "height": H, "fps": f, "keypoints": [[[x, y, c] x 18] x T]}``;
- tracks: ``.npz`` with ``tracks`` (T, N, 2), ``visible`` (T, N) and
  ``size`` = [H, W], or ``.json`` ``{"width", "height", "tracks", "visible"}``;
- a preprocessed sample: a shard ``.tar`` (first sample, or ``motion_key``)
  holding pose, tracks and frames in the schema of ``docs/data.md``.

Everything is mapped to the output size with the same fit as the reference
(``crop``: scale to cover and centre-crop; ``pad``: scale to fit and pad).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fgbg.data.schema import NUM_KEYPOINTS, Clip


class InputError(ValueError):
    """A generation input that cannot be used; the message names the file and the expectation."""


@dataclass(frozen=True)
class Fit:
    """How a (src_h, src_w) image maps onto the (dst_h, dst_w) output: x' = s * x + ox."""

    scale: float
    offset_x: float
    offset_y: float

    @staticmethod
    def make(src_h: int, src_w: int, dst_h: int, dst_w: int, mode: str = "crop") -> Fit:
        if mode not in ("crop", "pad"):
            raise InputError(f"fit mode must be 'crop' or 'pad', got {mode!r}")
        s = (max if mode == "crop" else min)(dst_h / src_h, dst_w / src_w)
        return Fit(s, (dst_w - s * src_w) / 2.0, (dst_h - s * src_h) / 2.0)

    def points(self, p: np.ndarray) -> np.ndarray:
        out = p.astype(np.float32).copy()
        out[..., 0] = p[..., 0] * self.scale + self.offset_x
        out[..., 1] = p[..., 1] * self.scale + self.offset_y
        return out

    def image(self, img: Image.Image, dst_h: int, dst_w: int, fill=(255, 255, 255)) -> np.ndarray:
        """Resample ``img`` into the output frame (exactly the point mapping above)."""
        inv = (1 / self.scale, 0, -self.offset_x / self.scale, 0, 1 / self.scale, -self.offset_y / self.scale)
        # PIL's affine maps output pixel *centres* with a corner-origin transform like ours.
        k = max(1, int(1 / self.scale))  # box-reduce first when shrinking a lot (anti-aliasing)
        src = img.reduce(k) if k > 1 else img
        if k > 1:  # reduced pixels: x_red = x / k in the corner-origin convention
            inv = (inv[0] / k, 0, inv[2] / k, 0, inv[4] / k, inv[5] / k)
        out = src.transform(
            (dst_w, dst_h), Image.Transform.AFFINE, inv, resample=Image.Resampling.BICUBIC, fillcolor=fill
        )
        return np.asarray(out)


def load_reference(path: str | os.PathLike, height: int, width: int, fit: str = "crop") -> tuple[np.ndarray, Fit]:
    """Any image file (RGB, RGBA, grey, palette, large) -> (H, W, 3) uint8 RGB and its ``Fit``.

    Transparent pixels are composited on white.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"reference image {path} does not exist (expected an image file: PNG, JPEG, ...)")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(bg, rgba).convert("RGB")
            else:
                img = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"reference image {path} is not a readable image: {err}") from None
    f = Fit.make(img.height, img.width, height, width, fit)
    return f.image(img, height, width), f


def _load_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{what} file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} file {path}: expected a JSON object")
    return data


def _load_array(path: Path, what: str, allowed: tuple[str, ...]):
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist")
    if path.suffix not in allowed:
        raise InputError(f"{what} file {path}: expected one of {allowed}, got {path.suffix!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{what} file {path} is not a plain numeric NumPy file: {err}") from None


def load_pose(path: str | os.PathLike, size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Pose sequence file -> ((T, 18, 3) float32, (H, W) of its pixel frame)."""
    path = Path(path)
    if path.suffix == ".json":
        data = _load_json(path, "pose")
        try:
            pose = np.asarray(data["keypoints"], np.float32)
            hw = (int(data["height"]), int(data["width"]))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"pose file {path}: expected keys width, height, keypoints ({err})") from None
    else:
        pose = np.asarray(_load_array(path, "pose", (".npy", ".json")), np.float32)
        if size is None:
            raise InputError(f"pose file {path}: a .npy pose needs pose_size=[H, W] in the config")
        hw = (int(size[0]), int(size[1]))
    if pose.ndim != 3 or pose.shape[1:] != (NUM_KEYPOINTS, 3):
        raise InputError(f"pose file {path}: expected shape (T, {NUM_KEYPOINTS}, 3), got {pose.shape}")
    if not np.all(np.isfinite(pose)):
        raise InputError(f"pose file {path}: contains NaN or infinite values")
    return pose, hw


def load_tracks(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Tracks file -> ((T, N, 2) float32, (T, N) bool, (H, W))."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            data = _load_json(path, "tracks")
            tracks = np.asarray(data["tracks"], np.float32)
            visible = np.asarray(data["visible"], bool)
            hw = (int(data["height"]), int(data["width"]))
        else:
            data = _load_array(path, "tracks", (".npz", ".json"))
            tracks = np.asarray(data["tracks"], np.float32)
            visible = np.asarray(data["visible"], bool)
            hw = tuple(int(v) for v in data["size"])
    except KeyError as err:
        raise InputError(f"tracks file {path}: missing {err}; expected tracks, visible and the frame size") from None
    if tracks.ndim != 3 or tracks.shape[2] != 2 or visible.shape != tracks.shape[:2]:
        raise InputError(
            f"tracks file {path}: expected tracks (T, N, 2) and visible (T, N), got {tracks.shape} and {visible.shape}"
        )
    return tracks, visible, hw


def load_sample(path: str | os.PathLike, key: str | None = None) -> Clip:
    """One preprocessed sample (a clip) from a shard, by key or the first one."""
    from fgbg.data.shards import SkipCounter, iter_clips

    path = Path(path)
    if not path.is_file():
        raise InputError(f"motion shard {path} does not exist")
    counter = SkipCounter()
    for clip in iter_clips([str(path)], counter):
        if key is None or clip.key == key:
            return clip
    if counter.total:
        raise InputError(
            f"motion shard {path}: no readable sample{'' if key is None else f' with key {key!r}'} ({counter.as_dict()})"
        )
    raise InputError(f"motion shard {path}: no sample{'' if key is None else f' with key {key!r}'}")
