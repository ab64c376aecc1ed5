"""Appearance and background-structure measures against the truth, per frame and per generation clip.

Does the generated person keep the reference's clothes, and does the background keep its structure
over a long video? Each measure is per frame (an ``(N,)`` tensor, NaN where a region is empty), so a
long video's curve over generation clips shows drift (``per_clip``).

  appearance_hist     Earth mover's distance (Wasserstein-1) between the CIE Lab histograms of the
                      generated and the true person (pixels inside the true person mask), per
                      channel L, a, b, averaged over the three; in Lab units (Delta E-like). The
                      histogram forgets where a colour is, so a 1-2 px misalignment only moves the
                      mask's border pixels, while a recoloured shirt moves a whole mode of a / b.
                      EMD rather than chi-square / Bhattacharyya: a small colour shift costs little
                      (its bins are close), not as much as a different colour (no saturation).
  appearance_lpips    LPIPS of the person box (the true mask's bounding box, padded) cropped from
                      both frames and resized to ``box_size``; only with local LPIPS weights.
  ssim_background     ``fgbg.eval.metrics``' masked SSIM of the background (same definition).
  gradcorr_background Pearson correlation of the Sobel gradient magnitudes of the two frames' luma
                      over the background pixels at least one pixel away from the person (1 for
                      identical structure; blur or lost texture lowers it; NaN on a flat region).

Videos are float RGB in [0, 1], (T, 3, H, W); masks (T, 1, H, W) in {0, 1}, 1 on the person
(conventions of ``fgbg.eval.metrics``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from fgbg.eval.longvideo import rgb_to_lab
from fgbg.eval.metrics import LPIPS, _check_mask, _check_pair, _masked_mean

# Histogram ranges of the CIE Lab channels (sRGB gamut: L in [0, 100], a in [-86, 98], b in [-108, 95]).
LAB_RANGES = ((0.0, 100.0), (-110.0, 110.0), (-110.0, 110.0))
_LUMA = (0.299, 0.587, 0.114)


def lab_histograms(lab: Tensor, weight: Tensor, bins: int = 64) -> Tensor:
    """lab (N, 3, H, W), weight (N, 1, H, W) in {0, 1} -> (N, 3, bins) histograms, each summing to 1 (0 if empty)."""
    n = lab.shape[0]
    out = torch.zeros(n, 3, bins, dtype=torch.float64, device=lab.device)
    w = weight.flatten(1).double()
    for c, (lo, hi) in enumerate(LAB_RANGES):
        idx = ((lab[:, c].flatten(1) - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)
        out[:, c].scatter_add_(1, idx, w)
    total = out.sum(-1, keepdim=True)
    return out / total.clamp_min(1e-12)


def histogram_emd(a: Tensor, b: Tensor) -> Tensor:
    """1-D Earth mover's distance between (..., C, bins) histograms over LAB_RANGES -> (..., C) in Lab units."""
    widths = torch.tensor([(hi - lo) / a.shape[-1] for lo, hi in LAB_RANGES[: a.shape[-2]]], dtype=a.dtype)
    return (a.cumsum(-1) - b.cumsum(-1)).abs().sum(-1) * widths.to(a.device)


def person_boxes(mask: Tensor, pad: int = 2) -> list[tuple[int, int, int, int] | None]:
    """(N, 1, H, W) -> per frame the mask's bounding box (y0, y1, x0, x1) grown by ``pad`` px, None if empty."""
    boxes: list[tuple[int, int, int, int] | None] = []
    h, w = mask.shape[-2:]
    for m in mask[:, 0] > 0.5:
        ys, xs = torch.nonzero(m, as_tuple=True)
        if ys.numel() == 0:
            boxes.append(None)
            continue
        y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + 1 + pad, h)
        x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + 1 + pad, w)
        boxes.append((y0, y1, x0, x1))
    return boxes


def _box_crops(frames: Tensor, boxes: list, size: int) -> Tensor:
    """The non-empty boxes cropped from their frames and resized to size x size, (M, 3, size, size)."""
    crops = []
    for frame, box in zip(frames, boxes, strict=True):
        if box is not None:
            y0, y1, x0, x1 = box
            crop = frame[None, :, y0:y1, x0:x1]
            crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(crops).clamp(0, 1)


def sobel_magnitude(frames: Tensor) -> Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) Sobel gradient magnitude of the luma (replicate padding)."""
    luma = torch.einsum("c,nchw->nhw", torch.tensor(_LUMA, dtype=frames.dtype, device=frames.device), frames)[:, None]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=frames.dtype, device=frames.device)
    kernels = torch.stack((kx, kx.T))[:, None] / 8
    g = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernels)
    return g.square().sum(1, keepdim=True).sqrt()


def _masked_correlation(a: Tensor, b: Tensor, weight: Tensor) -> Tensor:
    """Pearson correlation of a and b (N, 1, H, W) over weighted pixels -> (N,); NaN if empty or flat."""
    count = weight.sum(dim=(1, 2, 3))
    n = count.clamp_min(1)[:, None, None, None]
    da = a - (a * weight).sum(dim=(1, 2, 3), keepdim=True) / n
    db = b - (b * weight).sum(dim=(1, 2, 3), keepdim=True) / n
    cov = (da * db * weight).sum(dim=(1, 2, 3))
    var = (da.square() * weight).sum(dim=(1, 2, 3)) * (db.square() * weight).sum(dim=(1, 2, 3))
    ok = (count > 1) & (var > 1e-12)
    return torch.where(ok, cov / var.clamp_min(1e-12).sqrt(), torch.full_like(cov, math.nan))


@torch.no_grad()
def appearance_metrics(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    lpips: LPIPS | None = None,
    bins: int = 64,
    box_size: int = 64,
    ssim_background: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-frame person appearance and background structure of ``pred`` against ``target``.

    pred, target (T, 3, H, W) or (B, T, 3, H, W) in [0, 1]; mask like them with one channel, 1 on the
    (true) person. Returns (N,) float tensors, NaN where a frame's region is empty: ``appearance_hist``,
    ``ssim_background``, ``gradcorr_background`` and, with ``lpips``, ``appearance_lpips``.
    ``ssim_background``: pass ``per_frame_metrics``' values to skip computing them again.
    """
    pred, target = _check_pair(pred, target)
    person = _check_mask(mask, pred)
    background = 1 - person
    out: dict[str, Tensor] = {}
    hist_p = lab_histograms(rgb_to_lab(pred), person, bins)
    hist_t = lab_histograms(rgb_to_lab(target), person, bins)
    emd = histogram_emd(hist_p, hist_t).mean(-1).float()
    out["appearance_hist"] = torch.where(person.sum(dim=(1, 2, 3)) > 0, emd, torch.full_like(emd, math.nan)).cpu()
    if lpips is not None:
        boxes = person_boxes(person)
        values = torch.full((pred.shape[0],), math.nan)
        present = [i for i, b in enumerate(boxes) if b is not None]
        if present:
            values[present] = lpips(_box_crops(pred, boxes, box_size), _box_crops(target, boxes, box_size)).cpu()
        out["appearance_lpips"] = values
    if ssim_background is None:
        _, ssim_map = structural_similarity_index_measure(
            pred, target, data_range=1.0, reduction="none", return_full_image=True
        )
        ssim_background = _masked_mean(ssim_map, background)
    out["ssim_background"] = ssim_background.float().cpu()
    # Sobel sees 1 px around each pixel: keep background pixels whose 3x3 neighbourhood has no person.
    core = 1 - F.max_pool2d(person, 3, stride=1, padding=1)
    out["gradcorr_background"] = _masked_correlation(sobel_magnitude(pred), sobel_magnitude(target), core).cpu()
    return out


def clip_index(num_frames: int, clip_length: int, first_frame: int = 0, repeated_link: bool = False) -> np.ndarray:
    """The generation clip of each frame of a long video (``fgbg.eval.longvideo``'s layout), (num_frames,) int.

    Frame ``first_frame + i`` of the full video is entry i (``fgbg-evaluate`` scores frames 1..T-1, so
    ``first_frame=1``). Plain layout: frame t is in clip ``t // clip_length`` (clip k's link frame, the last
    frame of clip k-1, belongs to clip k-1). ``repeated_link=True``: a generator that stores clip k > 0
    as its link frame again followed by ``clip_length`` new frames; the repeats get -1 (not counted).
    """
    if clip_length < 1:
        raise ValueError(f"clip_length must be >= 1, got {clip_length}")
    t = np.arange(first_frame, first_frame + num_frames)
    if not repeated_link:
        return t // clip_length
    k = np.where(t < clip_length, 0, 1 + (t - clip_length) // (clip_length + 1))
    repeat = (t >= clip_length) & ((t - clip_length) % (clip_length + 1) == 0)
    return np.where(repeat, -1, k)


def per_clip(values: Tensor | np.ndarray, clips: np.ndarray) -> list[float]:
    """Mean of per-frame ``values`` for each clip 0..max(clips) (NaN frames skipped; NaN for a clip with none)."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape != clips.shape:
        raise ValueError(f"values: expected {clips.shape} like the clip indices, got {v.shape}")
    out = []
    for k in range(int(clips.max()) + 1 if clips.size else 0):
        sel = v[(clips == k) & ~np.isnan(v)]
        out.append(float(sel.mean()) if sel.size else math.nan)
    return out
