"""The robust affine fit of the motion hint (``fgbg.models.motion_hint.fit_affine_robust``, model.motion_hint_fit)."""

from __future__ import annotations

import math

import pytest
import torch

from fgbg.models.motion_hint import fit_affine, fit_affine_robust, fit_motion, motion_hint

H = W = 256
FRAMES = 16


def camera(frames: int = FRAMES) -> torch.Tensor:
    """(T, 2, 3): a pan of 12 px right and 4 px up, a 2 degree rotation and a 3% zoom about the centre, growing
    over the clip."""
    s = torch.linspace(0, 1, frames)
    angle, zoom = torch.deg2rad(2.0 * s), 1 + 0.03 * s
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    a = torch.zeros(frames, 2, 3)
    a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = cos, -sin, sin, cos
    centre = torch.tensor([W / 2, H / 2])
    a[:, :, 2] = centre - a[:, :, :2] @ centre + torch.stack([12 * s, -4 * s], -1)
    return a


def scene(batch: int, seed: int, outliers: float = 0.3, noise: float = 0.2, n: int = 50):
    """Tracks of the camera motion with ``noise`` px of jitter, ``outliers`` of them on a swaying tree (a cluster
    on the right whose points also swing up to about 15 px sideways, more the higher they are)."""
    g = torch.Generator().manual_seed(seed)
    anchor = torch.rand(batch, n, 2, generator=g) * torch.tensor([W, H])
    k = round(outliers * n)
    anchor[:, :k, 0] = W * 0.7 + torch.rand(batch, k, generator=g) * W * 0.25
    anchor[:, :k, 1] = H * 0.1 + torch.rand(batch, k, generator=g) * H * 0.6
    true = camera().expand(batch, FRAMES, 2, 3)
    points = torch.einsum("btij,bnj->btni", true[..., :2], anchor) + true[:, :, None, :, 2]
    points = points + noise * torch.randn(points.shape, generator=g)
    s = torch.linspace(0, 1, FRAMES)
    height = (H * 0.7 - anchor[:, :k, 1]).clamp_min(0) / (H * 0.6)
    sway = 10.0 * torch.sin(2 * math.pi * 1.5 * s)[None, :, None] * (0.5 + height[:, None])
    points[:, :, :k, 0] += sway
    points[:, :, :k, 1] += 0.3 * sway.abs()
    return anchor, points, true


def max_error_px(fit: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Largest displacement difference of two affines over the frame (at a corner: the difference is affine)."""
    corners = torch.tensor([[0, 0, 1], [W, 0, 1], [0, H, 1], [W, H, 1]], dtype=fit.dtype, device=fit.device)
    return ((fit - true.to(fit)) @ corners.T).norm(dim=-2).amax(-1)


def test_swaying_tracks_bend_least_squares_but_not_the_robust_fit():
    anchor, points, true = scene(batch=8, seed=0)
    weight = torch.ones(points.shape[:3])
    plain = max_error_px(fit_affine(anchor, points, weight), true)  # (B, T)
    robust = max_error_px(fit_affine_robust(anchor, points, weight), true)
    # least squares is judged where the tree is away from its rest position (at least half its swing)
    swaying = torch.sin(2 * math.pi * 1.5 * torch.linspace(0, 1, FRAMES)).abs() > 0.5
    assert plain[:, swaying].min() > 2.0, f"least squares should be bent by the tree: {plain[:, swaying].min():.2f} px"
    assert robust.max() < 0.5, f"robust fit off by {robust.max():.3f} px (least squares: {plain.max():.2f} px)"


def test_clean_tracks_give_the_least_squares_affine():
    anchor, points, _ = scene(batch=4, seed=1, outliers=0.0, noise=0.0)
    weight = (torch.rand(points.shape[:3], generator=torch.Generator().manual_seed(2)) > 0.2).float()
    torch.testing.assert_close(
        fit_affine_robust(anchor, points, weight), fit_affine(anchor, points, weight), atol=1e-4, rtol=0
    )
    # small jitter (well under min_scale) keeps every weight near 1: still the least-squares fit
    anchor, points, _ = scene(batch=4, seed=3, outliers=0.0, noise=0.05)
    torch.testing.assert_close(
        fit_affine_robust(anchor, points, weight), fit_affine(anchor, points, weight), atol=2e-3, rtol=0
    )


def test_invisible_tracks_are_ignored_and_few_points_fall_back():
    anchor, points, true = scene(batch=2, seed=4)
    weight = torch.ones(points.shape[:3])
    weight[:, :, 20:30] = 0  # invisible: their positions are garbage
    garbage = points.clone()
    garbage[:, :, 20:30] += 500.0
    torch.testing.assert_close(
        fit_affine_robust(anchor, garbage, weight), fit_affine_robust(anchor, points, weight), atol=1e-4, rtol=0
    )
    assert max_error_px(fit_affine_robust(anchor, garbage, weight), true).max() < 0.5
    # 2 visible points: the least-squares fallback (their mean translation); none: the identity
    few = torch.zeros_like(weight)
    few[0, :, 35:37] = 1
    fit = fit_affine_robust(anchor, points, few)
    torch.testing.assert_close(fit[0], fit_affine(anchor, points, few)[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(fit[1], torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(FRAMES, 2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_batched_shapes_dtypes_and_devices(dtype):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    anchor, points, true = scene(batch=3, seed=5)
    weight = torch.ones(points.shape[:3], dtype=torch.bool)
    for device in devices:
        a, p, w = anchor.to(device, dtype), points.to(device, dtype), weight.to(device)
        fit = fit_affine_robust(a, p, w)
        assert fit.shape == (3, FRAMES, 2, 3) and fit.dtype == dtype and fit.device.type == device
        assert torch.isfinite(fit).all()
        tolerance = 0.5 if dtype != torch.bfloat16 else 3.0  # bf16 tracks are rounded to 1 px at 256 px
        assert max_error_px(fit.double(), true.double().to(device)).max() < tolerance
    # each sample is fitted on its own: a batch of one equals its row of the batch
    torch.testing.assert_close(
        fit_affine_robust(anchor[1:2], points[1:2], weight[1:2]), fit_affine_robust(anchor, points, weight)[1:2]
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_robust_fit_does_not_synchronise_the_gpu():
    anchor, points, _ = scene(batch=4, seed=6)
    anchor, points, weight = anchor.cuda(), points.cuda(), torch.ones(points.shape[:3], device="cuda")
    fit_affine_robust(anchor, points, weight)  # warm-up (lazy CUDA initialisation may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fit_affine_robust(anchor, points, weight)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_fit_choice_reaches_the_hint_and_bad_names_fail():
    anchor, points, _ = scene(batch=1, seed=7)
    visible = torch.ones(points.shape[:3], dtype=torch.bool)
    ref = torch.rand(1, 3, 32, 32)
    hints = {
        fit: motion_hint(ref, None, points, visible, anchor, visible[:, 0], (H, W), fit=fit)
        for fit in ("irls", "lstsq")
    }
    assert hints["irls"].shape == (1, FRAMES, 4, 32, 32)
    assert not torch.allclose(hints["irls"], hints["lstsq"])
    with pytest.raises(ValueError, match="motion_hint_fit='ransac'"):
        fit_motion(anchor, points, visible.float(), "ransac")


def test_model_takes_motion_hint_fit_from_its_config():
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from tests.test_model import small_model_cfg

    assert instantiate(small_model_cfg()).motion_hint_fit == "irls"
    with pytest.raises(InstantiationException, match="motion_hint_fit='huber'.*irls"):
        instantiate(small_model_cfg(motion_hint_fit="huber"))
