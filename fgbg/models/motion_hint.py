"""Dense motion hint from sparse background tracks (an option beyond the paper).

A per-frame affine motion is fitted to the background tracks (reference position
-> position at frame t) and the reference (latent or pixels), with its person masked
out, is warped by it to every frame; a validity channel says where the warp has
content. Measured in ``../shared/measured/LEARNABILITY.md``: without such a hint a
tiny concatenation model ignores the tracks entirely.

Coordinates follow ``fgbg.data.schema``: continuous pixel coordinates with the
origin at the top-left corner of the top-left pixel, the ``align_corners=False``
convention of ``grid_sample``. An affine ``A`` is a (2, 3) matrix mapping a
reference point ``(x, y)`` to ``A @ (x, y, 1)`` in frame t.

The affine is fitted robustly by default (``fit="irls"``, ``fit_affine_robust``): tracks
on something that moves on its own (a swaying tree, a passer-by, parallax of a near
object) are down-weighted to zero, so they do not bend the camera motion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fgbg.utils.geometry import (  # noqa: F401 - fit_affine, fit_affine_robust, warp_affine: re-exported
    FITS,
    cell_centres,
    dilate,
    fit_affine,
    fit_affine_robust,
    fit_motion,
    warp_affine,
)


def motion_hint(
    reference_latent: torch.Tensor,
    reference_mask: torch.Tensor | None,
    tracks: torch.Tensor,
    track_visible: torch.Tensor,
    track_anchor: torch.Tensor,
    track_anchor_visible: torch.Tensor,
    image_size: tuple[int, int],
    mask_dilation: int = 1,
    fit: str = "irls",
    local_sigma: float = 0.0,
) -> torch.Tensor:
    """Reference warped to every frame by the affine fitted to the tracks, plus validity.

    reference_latent: (B, c, h, w); reference_mask: (B, 1, H, W) person mask at pixel
    resolution (or None: nothing masked); tracks: (B, T, N, 2) pixels;
    track_visible: (B, T, N) bool; track_anchor: (B, N, 2); track_anchor_visible: (B, N).
    The person (mask dilated by ``mask_dilation`` px, then max-pooled to the latent
    grid) is removed before warping so it leaves no ghost. ``fit``: ``irls`` (robust to tracks
    that move on their own) or ``lstsq`` (:func:`fit_motion`). ``local_sigma`` > 0 (pixels): each track also
    carries its own neighbourhood (:func:`track_residual_offsets`), so content that moves against the fitted
    motion (a path drawn by hand, a passer-by) goes where its track says; 0: the affine alone (what the models
    are trained with). Returns (B, T, c + 1, h, w): the warped masked reference and a validity channel in [0, 1].
    """
    b, c, h, w = reference_latent.shape
    t = tracks.shape[1]
    weight = (track_visible & track_anchor_visible[:, None]).to(tracks.dtype)
    affine = fit_motion(track_anchor, tracks, weight, fit)  # (B, T, 2, 3)
    if reference_mask is None:
        valid = torch.ones(b, 1, h, w, dtype=reference_latent.dtype, device=reference_latent.device)
    else:
        m = dilate(reference_mask.to(reference_latent.dtype), mask_dilation)
        valid = 1.0 - F.adaptive_max_pool2d(m, (h, w))
    src = torch.cat([reference_latent * valid, valid], 1)  # (B, c + 1, h, w)
    src = src[:, None].expand(b, t, c + 1, h, w).reshape(b * t, c + 1, h, w)
    if local_sigma <= 0:
        warped = warp_affine(src, affine.reshape(b * t, 2, 3), image_size)
        return warped.reshape(b, t, c + 1, h, w)
    offsets = track_residual_offsets(affine, track_anchor, tracks, weight, (h, w), image_size, local_sigma)
    warped = warp_affine(src, affine.reshape(b * t, 2, 3), image_size, offsets.reshape(b * t, h, w, 2))
    return warped.reshape(b, t, c + 1, h, w)


def track_residual_offsets(
    affine: torch.Tensor,
    track_anchor: torch.Tensor,
    tracks: torch.Tensor,
    weight: torch.Tensor,
    size: tuple[int, int],
    image_size: tuple[int, int],
    sigma: float,
) -> torch.Tensor:
    """Where each output cell's source moves off the affine's, in reference pixels: (B, T, h, w, 2).

    Track k at frame t sits at p; the affine would show the reference at A^{-1} p there, the track says its
    anchor a. The residual A^{-1} p - a is subtracted from the source of the cells around p, with a Gaussian
    weight of ``sigma`` pixels (normalised where neighbourhoods overlap, never above 1), so the cell at p shows
    a. Tracks that follow the affine have no residual and change nothing. weight: (B, T, N) which tracks count.
    """
    h, w = size
    full = torch.cat([affine, affine.new_tensor([0.0, 0.0, 1.0]).expand(*affine.shape[:2], 1, 3)], 2)
    inv = torch.linalg.inv_ex(full)[0][..., :2, :]  # (B, T, 2, 3)
    src = torch.einsum("btij,btnj->btni", inv[..., :2], tracks) + inv[..., None, :, 2]  # A^{-1} p
    residual = (src - track_anchor[:, None]) * weight[..., None]  # (B, T, N, 2)
    cells = cell_centres(h, w, image_size, tracks).reshape(1, 1, h * w, 1, 2)
    d2 = (cells - tracks[:, :, None]).square().sum(-1)  # (B, T, P, N)
    g = torch.exp(-d2 / (2 * sigma**2)) * weight[:, :, None]
    g = g / g.sum(-1, keepdim=True).clamp_min(1.0)
    return (g[..., None] * residual[:, :, None]).sum(3).reshape(*tracks.shape[:2], h, w, 2)
