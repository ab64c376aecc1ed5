"""The sample schema: one WebDataset sample is one video clip.

Coordinate convention (used everywhere in fgbg): points are continuous pixel
coordinates ``(x, y)`` with the origin at the *top-left corner* of the top-left
pixel; the centre of pixel ``(row i, column j)`` is ``(j + 0.5, i + 0.5)``.
Resizing by a factor ``s`` maps ``x -> s * x``, a horizontal flip maps
``x -> W - x``, a crop at ``(x0, y0)`` maps ``x -> x - x0``.  This is the
``align_corners=False`` convention of ``torch.nn.functional.grid_sample``.

Files of a sample (``<key>.<ext>`` inside the tar; see ``docs/data.md``):

=================  ===========================================================
``frames.png``     T RGB frames stacked vertically into one lossless PNG
                   (``frames.jpg`` for real footage, smaller), shape (T*H, W, 3)
``mask.png``       T person masks stacked vertically, 8-bit grey, 255 = person
``pose.npy``       float32 (T, K, 3): x, y, confidence per keypoint;
                   K = 18 (OpenPose-18 body order, ``OPENPOSE18_NAMES``)
``tracks.npy``     float32 (T, N, 2): background point tracks, x and y
``visible.npy``    uint8 (T, N): 1 where the point is visible in that frame
``meta.json``      fps, height, width, num_frames, source, pose_estimator,
                   tracker, schema_version, plus free-form extras
=================  ===========================================================
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1

# OpenPose-18 (COCO-18) body keypoints, in order.
OPENPOSE18_NAMES = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip
NUM_KEYPOINTS = len(OPENPOSE18_NAMES)

# Bones (limbs) as pairs of keypoint indices, in OpenPose's drawing order.
OPENPOSE18_BONES = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7),
    (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip

# OpenPose's per-keypoint colours (RGB), also used for the bones.
OPENPOSE18_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
    (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
    (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
    (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

# Index permutation that swaps left and right joints (for horizontal flips).
OPENPOSE18_FLIP = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)

REQUIRED_KEYS = ("frames", "mask.png", "pose.npy", "tracks.npy", "visible.npy", "meta.json")
FRAME_KEYS = ("frames.png", "frames.jpg")
META_REQUIRED = ("fps", "height", "width", "num_frames", "source", "pose_estimator", "tracker", "schema_version")


class SampleError(ValueError):
    """A sample that does not follow the schema; the message names key and expectation."""

    def __init__(self, key: str, message: str, sample_key: str | None = None):
        self.key = key
        self.sample_key = sample_key
        where = f"sample {sample_key!r}, " if sample_key else ""
        super().__init__(f"{where}key {key!r}: {message}")


@dataclass
class Clip:
    """One decoded clip.

    frames:   uint8 (T, H, W, 3) RGB
    masks:    bool (T, H, W), True on the person
    pose:     float32 (T, K, 3), x/y in pixels (corner origin), confidence in [0, 1]
    tracks:   float32 (T, N, 2), x/y in pixels (corner origin)
    visible:  bool (T, N)
    meta:     dict, see ``META_REQUIRED``
    key:      the sample's ``__key__``
    """

    frames: np.ndarray
    masks: np.ndarray
    pose: np.ndarray
    tracks: np.ndarray
    visible: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def validate(self) -> None:
        """Raise ``SampleError`` naming the key when shapes or dtypes disagree."""
        k = self.key or None
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise SampleError("frames", f"expected uint8 (T, H, W, 3), got {self.frames.dtype} {self.frames.shape}", k)
        t, h, w, _ = self.frames.shape
        if t < 1:
            raise SampleError("frames", "expected at least one frame", k)
        if self.masks.shape != (t, h, w):
            raise SampleError("mask.png", f"expected ({t}, {h}, {w}) to match frames, got {self.masks.shape}", k)
        if self.pose.ndim != 3 or self.pose.shape[0] != t or self.pose.shape[2] != 3:
            raise SampleError("pose.npy", f"expected ({t}, K, 3) to match {t} frames, got {self.pose.shape}", k)
        if self.tracks.ndim != 3 or self.tracks.shape[0] != t or self.tracks.shape[2] != 2:
            raise SampleError("tracks.npy", f"expected ({t}, N, 2) to match {t} frames, got {self.tracks.shape}", k)
        if self.visible.shape != self.tracks.shape[:2]:
            raise SampleError(
                "visible.npy", f"expected {self.tracks.shape[:2]} to match tracks, got {self.visible.shape}", k
            )
        for name, arr in (("pose.npy", self.pose), ("tracks.npy", self.tracks)):
            if not np.all(np.isfinite(arr)):
                raise SampleError(name, "contains NaN or infinite values", k)
        missing = [m for m in META_REQUIRED if m not in self.meta]
        if missing:
            raise SampleError("meta.json", f"missing fields {missing}", k)


def _stack_png(images: np.ndarray) -> bytes:
    """(T, H, W[, C]) uint8 -> one PNG with the frames stacked vertically."""
    t = images.shape[0]
    strip = images.reshape(t * images.shape[1], *images.shape[2:])
    buf = io.BytesIO()
    # compress_level is fixed so equal inputs give byte-identical files.
    Image.fromarray(strip).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode_clip(clip: Clip, frame_format: str = "png", jpeg_quality: int = 95) -> dict[str, bytes | str]:
    """Clip -> dict of WebDataset entries (``__key__`` plus file bytes).

    ``num_frames``, ``height``, ``width`` and ``schema_version`` of the metadata
    are filled in from the arrays.
    """
    meta = dict(clip.meta)
    meta.setdefault("schema_version", SCHEMA_VERSION)
    meta["num_frames"], meta["height"], meta["width"] = clip.num_frames, *clip.size
    meta = {k: v for k, v in meta.items() if not k.startswith("__")}
    Clip(clip.frames, clip.masks, clip.pose, clip.tracks, clip.visible, meta, clip.key).validate()
    if frame_format == "png":
        frames = ("frames.png", _stack_png(clip.frames))
    elif frame_format == "jpg":
        t, h, w, _ = clip.frames.shape
        buf = io.BytesIO()
        Image.fromarray(clip.frames.reshape(t * h, w, 3)).save(buf, format="JPEG", quality=jpeg_quality)
        frames = ("frames.jpg", buf.getvalue())
    else:
        raise ValueError(f"frame_format must be 'png' or 'jpg', got {frame_format!r}")
    return {
        "__key__": clip.key,
        frames[0]: frames[1],
        "mask.png": _stack_png(clip.masks.astype(np.uint8) * 255),
        "pose.npy": _npy_bytes(clip.pose.astype(np.float32)),
        "tracks.npy": _npy_bytes(clip.tracks.astype(np.float32)),
        "visible.npy": _npy_bytes(clip.visible.astype(np.uint8)),
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
    }


def _decode_image(data: bytes, key: str, mode: str, sample_key: str | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert(mode))
    except Exception as err:  # PIL raises many types for bad bytes
        raise SampleError(key, f"not a readable image ({type(err).__name__}: {err})", sample_key) from None


def _decode_npy(data: bytes, key: str, sample_key: str | None) -> np.ndarray:
    try:
        # allow_pickle=False: an object array (a pickle payload) raises instead of running code.
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:
        raise SampleError(key, f"not a plain numeric .npy array ({type(err).__name__}: {err})", sample_key) from None
    if arr.dtype.kind not in "fiub":
        raise SampleError(key, f"expected a numeric array, got dtype {arr.dtype}", sample_key)
    return arr


def decode_clip(entries: dict[str, bytes], key: str = "") -> Clip:
    """Dict of raw entries (file extension -> bytes) -> validated ``Clip``.

    Only the known keys are decoded, each with an explicit decoder; nothing is
    ever unpickled. Raises ``SampleError`` naming the missing or bad key.
    """
    key = key or str(entries.get("__key__", ""))
    fkey = next((k for k in FRAME_KEYS if k in entries), None)
    if fkey is None:
        raise SampleError("frames", f"missing: expected one of {FRAME_KEYS}", key)
    for k in REQUIRED_KEYS[1:]:
        if k not in entries:
            raise SampleError(k, "missing", key)
    try:
        meta = json.loads(entries["meta.json"])
    except Exception as err:
        raise SampleError("meta.json", f"not valid JSON ({err})", key) from None
    if not isinstance(meta, dict):
        raise SampleError("meta.json", "expected a JSON object", key)
    t = meta.get("num_frames")
    if not isinstance(t, int) or t < 1:
        raise SampleError("meta.json", f"num_frames must be a positive integer, got {t!r}", key)
    strip = _decode_image(entries[fkey], fkey, "RGB", key)
    if strip.shape[0] % t:
        raise SampleError(fkey, f"height {strip.shape[0]} is not a multiple of num_frames={t}", key)
    h = strip.shape[0] // t
    frames = strip.reshape(t, h, strip.shape[1], 3)
    mstrip = _decode_image(entries["mask.png"], "mask.png", "L", key)
    if mstrip.shape != (t * h, strip.shape[1]):
        raise SampleError("mask.png", f"expected {(t * h, strip.shape[1])} to match frames, got {mstrip.shape}", key)
    masks = mstrip.reshape(t, h, strip.shape[1]) > 127
    clip = Clip(
        frames=frames,
        masks=masks,
        pose=_decode_npy(entries["pose.npy"], "pose.npy", key).astype(np.float32, copy=False),
        tracks=_decode_npy(entries["tracks.npy"], "tracks.npy", key).astype(np.float32, copy=False),
        visible=_decode_npy(entries["visible.npy"], "visible.npy", key).astype(bool),
        meta=meta,
        key=key,
    )
    clip.validate()
    return clip
