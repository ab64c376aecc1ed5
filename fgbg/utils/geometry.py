"""Affine geometry on pixel tracks: least-squares and robust affine fits, warping, mask dilation.

Shared by the model's motion hint (``fgbg.models.motion_hint``) and the evaluation's camera recovery
(``fgbg.eval.longvideo.camera_from_tracks``), so it sits on the floor both may import.

Coordinates follow ``fgbg.data.schema``: continuous pixel coordinates with the origin at the
top-left corner of the top-left pixel, the ``align_corners=False`` convention of ``grid_sample``.
An affine ``A`` is a (2, 3) matrix mapping a reference point ``(x, y)`` to ``A @ (x, y, 1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_affine(anchor: torch.Tensor, points: torch.Tensor, weight: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Weighted least-squares affine per frame, batched.

    anchor: (B, N, 2) reference positions; points: (B, T, N, 2) positions at each
    frame; weight: (B, T, N) >= 0 (0 for invisible or padded points).
    Returns (B, T, 2, 3). With 3 or more weighted points: the least-squares affine
    (a small ridge towards the best translation keeps collinear points stable);
    with 1 or 2: the weighted mean translation; with none: the identity.
    Computed in float32 at least with autocast off (under bf16 autocast the products would come back in
    bfloat16 and the solve refuse mixed dtypes), returned in the dtype of ``points``.
    """
    out_dtype = points.dtype
    work = torch.promote_types(out_dtype, torch.float32)
    with torch.autocast(points.device.type, enabled=False):
        affine = _fit_affine(anchor.to(work), points.to(work), weight.to(work), ridge)
    return affine.to(out_dtype)


def _fit_affine(anchor: torch.Tensor, points: torch.Tensor, weight: torch.Tensor, ridge: float) -> torch.Tensor:
    b, t, n, _ = points.shape
    dtype = points.dtype
    w = weight.to(dtype)
    count = (w > 0).sum(-1)  # (B, T)
    wsum = w.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, T, 1)
    anchor_t = anchor[:, None].expand(b, t, n, 2)
    shift = ((points - anchor_t) * w[..., None]).sum(-2) / wsum  # (B, T, 2) mean displacement

    eye = torch.zeros(b, t, 2, 3, dtype=dtype, device=points.device)
    eye[..., 0, 0] = 1.0
    eye[..., 1, 1] = 1.0
    translation = eye.clone()
    translation[..., 2] = shift

    # Centre the anchors for conditioning; solve for (linear part, offset) in centred coords.
    centre = (anchor_t * w[..., None]).sum(-2) / wsum  # (B, T, 2)
    xc = anchor_t - centre[..., None, :]
    x = torch.cat([xc, torch.ones_like(xc[..., :1])], -1)  # (B, T, N, 3)
    xtw = (x * w[..., None]).transpose(-1, -2)  # (B, T, 3, N)
    scale = (xc.square().sum(-1) * w).sum(-1) / wsum[..., 0]  # (B, T) mean squared radius
    reg = torch.diag_embed(torch.stack([scale, scale, torch.zeros_like(scale)], -1)) * ridge + 1e-9 * torch.eye(
        3, dtype=dtype, device=points.device
    )
    prior = torch.zeros(b, t, 3, 2, dtype=dtype, device=points.device)  # translation-only solution
    prior[..., 0, 0] = 1.0
    prior[..., 1, 1] = 1.0
    prior[..., 2, :] = centre + shift
    lhs = xtw @ x + reg
    rhs = xtw @ points + reg @ prior
    sol = torch.linalg.solve_ex(lhs, rhs)[0]  # (B, T, 3, 2): rows = coefficients of xc, yc, 1
    lin = sol[..., :2, :].transpose(-1, -2)  # (B, T, 2, 2)
    offset = sol[..., 2, :] - (lin @ centre[..., None])[..., 0]
    affine = torch.cat([lin, offset[..., None]], -1)

    out = torch.where((count >= 3)[..., None, None], affine, translation)
    return torch.where((count == 0)[..., None, None], eye, out)


FITS = ("irls", "lstsq")


def _hash_keys(hypotheses: int, n: int, device: torch.device) -> torch.Tensor:
    """(hypotheses, n) fixed pseudo-random numbers in [0, 1), made on ``device`` (no generator, no copy)."""
    i = torch.arange(hypotheses * n, device=device, dtype=torch.float32).reshape(hypotheses, n)
    return torch.frac(torch.sin(i * 12.9898 + 78.233) * 43758.5453)


def fit_affine_robust(
    anchor: torch.Tensor,
    points: torch.Tensor,
    weight: torch.Tensor,
    hypotheses: int = 64,
    inlier_px: float = 2.0,
    iterations: int = 5,
    tukey_c: float = 4.0,
    min_scale: float = 0.5,
    ridge: float = 1e-3,
) -> torch.Tensor:
    """:func:`fit_affine` made robust to tracks that move on their own, batched; same arguments and result.

    1. Hypotheses: ``hypotheses`` affines per frame, each the fit to 3 of the frame's weighted points
       (the same fixed pseudo-random triples in every call, so the fit is deterministic).
    2. The hypothesis with the least truncated loss ``sum weight * min(r^2, inlier_px^2)`` over all
       points (``r``: a point's residual in pixels) starts the refinement: with 30% of the tracks on a
       swaying element, least squares is bent by several pixels and a reweighting started from it
       stays there; among 64 triples one is all background unless the outliers are placed adversarially
       (with 30% outliers at random, none is with probability 0.66^64, about 2e-12).
    3. ``iterations`` rounds of iteratively reweighted least squares with Tukey's biweight: weights
       ``weight * (1 - (r / (tukey_c * s))^2)^2``, 0 beyond ``tukey_c * s``, where the scale
       ``s = max(median r over the frame's weighted points, min_scale)``.

    Only tensor operations with fixed shapes and iteration counts (no data-dependent branch, no host
    sync), so it runs inside a training step on the GPU. With tracks that one affine explains to well
    under ``min_scale`` px, every final weight is 1 to within ``(r / (tukey_c * min_scale))^2`` and the
    result is the least-squares fit. Computed in float32 at least, returned in the dtype of ``points``.
    """
    dtype = points.dtype
    work = torch.promote_types(dtype, torch.float32)
    anchor, points, base = anchor.to(work), points.to(work), weight.to(work)
    b, t, n, _ = points.shape
    on = base > 0
    # 1. triples: the 3 weighted points with the highest keys of each hypothesis (unweighted ones rank below)
    keys = torch.where(on[:, :, None], _hash_keys(hypotheses, n, points.device).to(work), -1.0)  # (B, T, H, N)
    triple = torch.zeros_like(keys).scatter_(-1, keys.topk(min(3, n), dim=-1).indices, 1.0) * base[:, :, None]
    many = points[:, :, None].expand(b, t, hypotheses, n, 2).reshape(b, t * hypotheses, n, 2)
    hyps = fit_affine(anchor, many, triple.reshape(b, t * hypotheses, n), ridge).reshape(b, t, hypotheses, 2, 3)
    # 2. the hypothesis most points agree with
    anchor_h = torch.cat([anchor, torch.ones_like(anchor[..., :1])], -1)  # (B, N, 3)
    r2 = (torch.einsum("bthij,bnj->bthni", hyps, anchor_h) - points[:, :, None]).square().sum(-1)
    loss = (r2.clamp(max=inlier_px**2) * base[:, :, None]).sum(-1)  # (B, T, H)
    best = torch.nan_to_num(loss, nan=torch.inf).argmin(-1)
    affine = torch.gather(hyps, 2, best[..., None, None, None].expand(b, t, 1, 2, 3))[:, :, 0]
    # 3. Tukey IRLS from there
    anchor_h = anchor_h[:, None].expand(b, t, n, 3)
    for _ in range(iterations):
        residual = (anchor_h @ affine.transpose(-1, -2) - points).norm(dim=-1)  # (B, T, N)
        median = torch.nanmedian(torch.where(on, residual, torch.nan), dim=-1).values  # NaN for an empty frame
        scale = torch.nan_to_num(median, nan=min_scale).clamp_min(min_scale)
        robust = (1 - (residual / (tukey_c * scale[..., None])).square()).clamp_min(0).square()
        affine = fit_affine(anchor, points, base * robust, ridge)
    return affine.to(dtype)


def fit_motion(anchor: torch.Tensor, points: torch.Tensor, weight: torch.Tensor, fit: str = "irls") -> torch.Tensor:
    """The per-frame affine by ``fit``: ``irls`` (:func:`fit_affine_robust`) or ``lstsq`` (:func:`fit_affine`)."""
    if fit == "irls":
        with torch.autocast(points.device.type, enabled=False):  # residuals and medians in float32 at least
            return fit_affine_robust(anchor, points, weight)
    if fit == "lstsq":
        return fit_affine(anchor, points, weight)
    raise ValueError(f"model.motion_hint_fit={fit!r}: expected one of {FITS}")


def _normaliser(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(3, 3) matrix taking pixel coords (corner origin) to grid_sample coords (align_corners=False)."""
    n = torch.zeros(3, 3, dtype=like.dtype, device=like.device)
    n[0, 0], n[0, 2] = 2.0 / width, -1.0
    n[1, 1], n[1, 2] = 2.0 / height, -1.0
    n[2, 2] = 1.0
    return n


def cell_centres(h: int, w: int, image_size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates (corner origin) of the centres of an (h, w) grid covering an ``image_size`` (H, W) image:
    (h * w, 2) as (x, y), row by row, in ``like``'s dtype and device."""
    height, width = image_size
    ys = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) * (height / h)
    xs = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) * (width / w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1).reshape(-1, 2)


def warp_affine(
    image: torch.Tensor, affine: torch.Tensor, image_size: tuple[int, int], offsets: torch.Tensor | None = None
) -> torch.Tensor:
    """Warp ``image`` (M, C, h, w) forward by ``affine`` (M, 2, 3) given in pixel coords of ``image_size`` (H, W).

    Output pixel q shows the input at ``A^{-1} q``; zeros where that falls outside.
    ``image`` may be at a lower resolution than ``image_size`` (a latent): both
    share the normalised grid, so no rescaling of ``affine`` is needed. ``offsets`` (M, h, w, 2), pixels of
    ``image_size``: subtracted from each output cell's source position (``A^{-1} q - offset``).
    """
    height, width = image_size
    m = affine.shape[0]
    full = torch.cat([affine, affine.new_tensor([0.0, 0.0, 1.0]).expand(m, 1, 3)], 1)  # (M, 3, 3)
    n = _normaliser(height, width, affine)
    theta = n @ torch.linalg.inv_ex(full)[0] @ torch.linalg.inv_ex(n)[0]  # output normalised -> input normalised
    grid = F.affine_grid(theta[:, :2], list(image.shape), align_corners=False)
    if offsets is not None:
        grid = grid - offsets * offsets.new_tensor([2.0 / width, 2.0 / height])
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary/soft dilation of (M, 1, H, W) masks by a square of side 2 * radius + 1."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)
