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
) -> torch.Tensor:
    """Reference warped to every frame by the affine fitted to the tracks, plus validity.

    reference_latent: (B, c, h, w); reference_mask: (B, 1, H, W) person mask at pixel
    resolution (or None: nothing masked); tracks: (B, T, N, 2) pixels;
    track_visible: (B, T, N) bool; track_anchor: (B, N, 2); track_anchor_visible: (B, N).
    The person (mask dilated by ``mask_dilation`` px, then max-pooled to the latent
    grid) is removed before warping so it leaves no ghost. ``fit``: ``irls`` (robust to tracks
    that move on their own) or ``lstsq`` (:func:`fit_motion`). Returns (B, T, c + 1, h, w):
    the warped masked reference and a validity channel in [0, 1].
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
    warped = warp_affine(src, affine.reshape(b * t, 2, 3), image_size)
    return warped.reshape(b, t, c + 1, h, w)
