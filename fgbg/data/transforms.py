"""Joint geometric transforms of a ``Clip``: crop, resize, horizontal flip.

Every function is pure (returns a new ``Clip``) and moves frames, masks,
keypoints and tracks together under the corner-origin convention of
``fgbg.data.schema``: a crop at ``(x0, y0)`` maps ``x -> x - x0``, a resize by
``s`` maps ``x -> s * x`` (cv2 / ``align_corners=False`` pixel-centre
sampling), a flip maps ``x -> W - x`` and swaps left and right joints with
``OPENPOSE18_FLIP``.  Points that end outside ``[0, W) x [0, H)`` are marked:
keypoints get confidence 0, tracks get ``visible = False``; their positions are
kept so a track can come back into view.

Random parameters are drawn from a ``numpy.random.Generator`` passed in, so a
seeded generator gives a reproducible augmentation.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from fgbg.data.schema import NUM_KEYPOINTS, OPENPOSE18_FLIP, Clip

CropBox = tuple[int, int, int, int]  # x0, y0, width, height in whole pixels

_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST_EXACT,  # pixel-centre nearest: exact for integer upscales
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
}


def inside_frame(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., 2) x/y -> (...) bool, True where the point lies in ``[0, W) x [0, H)``."""
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def mark_out_of_frame(clip: Clip) -> Clip:
    """Zero the confidence of keypoints and clear the visibility of tracks outside the frame."""
    h, w = clip.size
    pose = clip.pose.copy()
    pose[..., 2] = np.where(inside_frame(pose[..., :2], h, w), pose[..., 2], 0.0)
    visible = clip.visible & inside_frame(clip.tracks, h, w)
    return replace(clip, pose=pose, visible=visible)


def crop_clip(clip: Clip, box: CropBox) -> Clip:
    """Crop every frame to ``box = (x0, y0, width, height)`` (integer pixels, inside the frame)."""
    x0, y0, cw, ch = (int(v) for v in box)
    h, w = clip.size
    if cw < 1 or ch < 1 or x0 < 0 or y0 < 0 or x0 + cw > w or y0 + ch > h:
        raise ValueError(f"crop box {box} (x0, y0, width, height) does not fit a {w}x{h} frame")
    offset = np.array([x0, y0], np.float32)
    pose = clip.pose.copy()
    pose[..., :2] -= offset
    out = replace(
        clip,
        frames=clip.frames[:, y0 : y0 + ch, x0 : x0 + cw],
        masks=clip.masks[:, y0 : y0 + ch, x0 : x0 + cw],
        pose=pose,
        tracks=clip.tracks - offset,
    )
    return mark_out_of_frame(out)


def _resize_stack(stack: np.ndarray, height: int, width: int, flag: int) -> np.ndarray:
    """(T, H, W[, C]) uint8 -> (T, height, width[, C]) in one cv2 call (time folded into channels)."""
    t, h, w = stack.shape[:3]
    c = stack.shape[3] if stack.ndim == 4 else 1
    folded = np.ascontiguousarray(np.moveaxis(stack.reshape(t, h, w, c), 0, 2).reshape(h, w, t * c))
    chunks = []
    # cv2 resizes at most 512 channels per call, and INTER_AREA at most 4 at non-integer factors.
    step = 4 if flag == cv2.INTER_AREA else 512
    for start in range(0, t * c, step):
        part = cv2.resize(folded[..., start : start + step], (width, height), interpolation=flag)
        chunks.append(part.reshape(height, width, -1))
    resized = np.concatenate(chunks, -1) if len(chunks) > 1 else chunks[0]
    out = np.moveaxis(resized.reshape(height, width, t, c), 2, 0)
    return np.ascontiguousarray(out if stack.ndim == 4 else out[..., 0])


def resize_clip(clip: Clip, height: int, width: int, interpolation: str = "auto") -> Clip:
    """Resize frames and masks to ``height x width`` and scale points per axis.

    ``interpolation``: ``auto`` (area when shrinking, linear when enlarging),
    ``area``, ``linear`` or ``nearest`` (pixel-centre nearest neighbour).
    Masks use the same filter and are thresholded at one half.
    """
    h, w = clip.size
    if (h, w) == (height, width):
        return clip
    if interpolation == "auto":
        interpolation = "area" if height * width < h * w else "linear"
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of auto, {', '.join(_INTERPOLATIONS)}; got {interpolation!r}")
    flag = _INTERPOLATIONS[interpolation]
    scale = np.array([width / w, height / h], np.float32)
    pose = clip.pose.copy()
    pose[..., :2] *= scale
    masks = _resize_stack(clip.masks.astype(np.uint8) * 255, height, width, flag) > 127
    return replace(
        clip,
        frames=_resize_stack(clip.frames, height, width, flag),
        masks=masks,
        pose=pose,
        tracks=clip.tracks * scale,
    )


def hflip_clip(clip: Clip) -> Clip:
    """Mirror left-right: ``x -> W - x``, left joints move into the right joints' slots."""
    _, w = clip.size
    if clip.pose.shape[1] != NUM_KEYPOINTS:
        raise ValueError(f"hflip needs OpenPose-18 keypoints, got K={clip.pose.shape[1]} (sample {clip.key!r})")
    pose = clip.pose[:, list(OPENPOSE18_FLIP)].copy()
    pose[..., 0] = w - pose[..., 0]
    tracks = clip.tracks.copy()
    tracks[..., 0] = w - tracks[..., 0]
    out = replace(
        clip,
        frames=np.ascontiguousarray(clip.frames[:, :, ::-1]),
        masks=np.ascontiguousarray(clip.masks[:, :, ::-1]),
        pose=pose,
        tracks=tracks,
    )
    return mark_out_of_frame(out)  # x = 0 maps to W, just outside


def largest_box(src_height: int, src_width: int, aspect: float) -> tuple[int, int]:
    """(width, height) of the largest box of ``aspect = width / height`` inside the frame."""
    if src_width >= src_height * aspect:
        return max(1, min(src_width, round(src_height * aspect))), src_height
    return src_width, max(1, min(src_height, round(src_width / aspect)))


def center_crop_box(src_height: int, src_width: int, out_height: int, out_width: int) -> CropBox:
    """The centred largest box with the output's aspect ratio."""
    cw, ch = largest_box(src_height, src_width, out_width / out_height)
    return (src_width - cw) // 2, (src_height - ch) // 2, cw, ch


def random_crop_box(
    rng: np.random.Generator,
    src_height: int,
    src_width: int,
    out_height: int,
    out_width: int,
    scale: tuple[float, float] = (0.8, 1.0),
) -> CropBox:
    """A random box with the output's aspect ratio.

    Its sides are ``s`` times those of the largest such box, ``s ~ U(scale)``;
    its position is uniform over the integer offsets where it fits.
    """
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
    bw, bh = largest_box(src_height, src_width, out_width / out_height)
    s = rng.uniform(lo, hi)
    cw, ch = max(1, round(bw * s)), max(1, round(bh * s))
    x0 = int(rng.integers(0, src_width - cw + 1))
    y0 = int(rng.integers(0, src_height - ch + 1))
    return x0, y0, cw, ch


def augment_clip(
    clip: Clip,
    rng: np.random.Generator,
    height: int,
    width: int,
    crop_scale: tuple[float, float] = (0.8, 1.0),
    flip_prob: float = 0.5,
    interpolation: str = "auto",
) -> Clip:
    """Random crop (aspect of the output kept), resize to ``height x width``, random flip."""
    box = random_crop_box(rng, *clip.size, height, width, crop_scale)
    flip = rng.random() < flip_prob
    out = resize_clip(crop_clip(clip, box), height, width, interpolation)
    return hflip_clip(out) if flip else out


def fit_clip(clip: Clip, height: int, width: int, interpolation: str = "auto") -> Clip:
    """Deterministic: centre crop to the output's aspect ratio, then resize."""
    box = center_crop_box(*clip.size, height, width)
    if box[2:] != (clip.size[1], clip.size[0]):
        clip = crop_clip(clip, box)
    return mark_out_of_frame(resize_clip(clip, height, width, interpolation))
