"""Person appearance (Lab histogram EMD, person-box LPIPS) and background structure (SSIM, gradient
correlation) against the truth, and their per-clip curves, on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fgbg.eval import appearance_metrics, clip_index, per_clip
from fgbg.eval.longvideo import rgb_to_lab
from fgbg.eval.metrics import LPIPS


def _scene(t: int = 4, h: int = 48, w: int = 48, seed: int = 0):
    """A textured background (smooth noise) and a person: a red shirt over blue trousers, (T, 3, H, W)."""
    g = torch.Generator().manual_seed(seed)
    bg = F.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=g), size=(h, w), mode="bilinear")[0]
    video = bg.expand(t, 3, h, w).clone()
    mask = torch.zeros(t, 1, h, w)
    y0, x0 = 10, 16
    shirt = torch.tensor([0.8, 0.15, 0.1])[:, None, None] + 0.05 * torch.rand(3, 12, 14, generator=g)
    video[:, :, y0 : y0 + 12, x0 : x0 + 14] = shirt.clamp(0, 1)
    video[:, :, y0 + 12 : y0 + 26, x0 + 2 : x0 + 12] = torch.tensor([0.1, 0.2, 0.6])[:, None, None]
    mask[:, :, y0 : y0 + 12, x0 : x0 + 14] = 1
    mask[:, :, y0 + 12 : y0 + 26, x0 + 2 : x0 + 12] = 1
    return video, mask


def test_identical_videos_give_zero_error_and_correlation_one():
    video, mask = _scene()
    m = appearance_metrics(video, video.clone(), mask)
    assert set(m) == {"appearance_hist", "ssim_background", "gradcorr_background"}
    assert torch.all(m["appearance_hist"].abs() < 1e-9)
    torch.testing.assert_close(m["ssim_background"], torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(m["gradcorr_background"], torch.ones(4), atol=1e-5, rtol=0)


def _hue_rotate(rgb: torch.Tensor) -> torch.Tensor:
    return rgb[[1, 2, 0]]  # red shirt -> green shirt, same brightness pattern


def test_a_recoloured_shirt_raises_the_error_and_a_small_shift_barely_does():
    video, mask = _scene()
    recoloured = video.clone()
    shirt = mask.bool().expand_as(video).clone()
    shirt[:, :, 22:] = False  # the shirt rows only
    recoloured[shirt] = torch.stack([_hue_rotate(f) for f in video])[shirt]
    hue = appearance_metrics(recoloured, video, mask)["appearance_hist"]
    shifts = [appearance_metrics(torch.roll(video, (dy, dx), dims=(2, 3)), video, mask)["appearance_hist"]
              for dy, dx in ((1, 0), (0, 2), (2, 1))]  # fmt: skip
    worst_shift = max(float(s.max()) for s in shifts)
    assert float(hue.min()) > 10, hue  # Lab units: a red -> green shirt is a large change
    assert worst_shift < 0.25 * float(hue.min()), (worst_shift, hue)


def test_blurring_the_background_lowers_gradient_correlation_and_ssim():
    video, mask = _scene(seed=1)
    blurred = video.clone()
    k = torch.ones(3, 1, 5, 5) / 25
    soft = F.conv2d(F.pad(video, (2, 2, 2, 2), mode="replicate"), k, groups=3)
    bg = (mask == 0).expand_as(video)
    blurred[bg] = soft[bg]
    same = appearance_metrics(video, video, mask)
    blur = appearance_metrics(blurred, video, mask)
    assert torch.all(blur["gradcorr_background"] < same["gradcorr_background"] - 0.1), blur["gradcorr_background"]
    assert torch.all(blur["ssim_background"] < same["ssim_background"] - 0.05), blur["ssim_background"]
    assert torch.all(blur["appearance_hist"] < 1e-9)  # the person is untouched


def test_per_clip_indexing_of_a_three_clip_video_with_link_frames():
    # 3 clips of 4 frames; the link frame of clip k is the last frame of clip k-1 and belongs to clip k-1.
    assert clip_index(12, 4).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # fgbg-evaluate scores frames 1..T-1 (frame 0 is the reference): entry i is frame i + 1.
    assert clip_index(11, 4, first_frame=1).tolist() == [0] * 3 + [1] * 4 + [2] * 4
    # A generator that stores each later clip's link frame again at its start: repeats are not counted.
    assert clip_index(14, 4, repeated_link=True).tolist() == [0] * 4 + [-1] + [1] * 4 + [-1] + [2] * 4
    video, mask = _scene(t=12)
    pred = video.clone()
    pred[4:8] = pred[4:8].flip(-1)  # only clip 1 is wrong
    values = appearance_metrics(pred[1:], video[1:], mask[1:])["gradcorr_background"]
    curve = per_clip(values, clip_index(11, 4, first_frame=1))
    assert len(curve) == 3 and curve[0] == pytest.approx(1) and curve[2] == pytest.approx(1)
    assert curve[1] < 0.9


def test_empty_masks_give_nan_without_crashing():
    video, _ = _scene()
    nobody = torch.zeros(4, 1, 48, 48)
    m = appearance_metrics(video, video, nobody)
    assert torch.all(m["appearance_hist"].isnan())
    assert torch.all(m["gradcorr_background"] > 0.999)
    everybody = torch.ones(4, 1, 48, 48)
    m = appearance_metrics(video, video, everybody)
    assert torch.all(m["ssim_background"].isnan()) and torch.all(m["gradcorr_background"].isnan())
    assert per_clip(torch.full((4,), math.nan), np.zeros(4, int)) == [pytest.approx(math.nan, nan_ok=True)]


@pytest.fixture(scope="module")
def squeeze_weights(tmp_path_factory):
    import torchvision

    path = tmp_path_factory.mktemp("lpips") / "squeezenet1_1.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    return path


def test_person_box_lpips_with_local_weights(squeeze_weights):
    video, mask = _scene()
    lpips = LPIPS(squeeze_weights, net_type="squeeze")
    same = appearance_metrics(video, video, mask, lpips=lpips)["appearance_lpips"]
    assert same.abs().max() < 1e-6
    noisy = (video + 0.3 * torch.randn(video.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert torch.all(appearance_metrics(noisy, video, mask, lpips=lpips)["appearance_lpips"] > 1e-4)
    mask[1] = 0
    assert appearance_metrics(video, video, mask, lpips=lpips)["appearance_lpips"][1].isnan()


def test_lab_of_the_shirt_is_red():
    video, _ = _scene()
    assert float(rgb_to_lab(video[0, :, 12, 20][:, None, None])[1]) > 40  # a* of the shirt: red


def test_fgbg_evaluate_reports_means_and_a_per_clip_curve():
    from fgbg.evaluate import _mean_curves, frame_and_clip_metrics

    truth, mask = _scene(t=9)  # frame 0 is the reference; frames 1..8 are two clips of 4
    gen = truth.clone()
    gen[5:] = gen[5:].flip(-1)  # the second clip loses the background's structure
    means, curves = frame_and_clip_metrics(gen, truth, mask, clip_len=4)
    assert means["appearance_hist"] > 0 and means["ssim"] < 1 and "psnr_background" in means
    assert set(curves) == {"appearance_hist", "ssim_background", "gradcorr_background", "psnr_person"}
    assert len(curves["gradcorr_background"]) == 3  # frames 1-3 (clip 0), 4-7 (clip 1), 8 (clip 2)
    assert curves["gradcorr_background"][0] == pytest.approx(1) and curves["gradcorr_background"][2] < 0.9
    assert _mean_curves([{"per_clip": {"x": [1.0, 3.0]}}, {"per_clip": {"x": [3.0]}}, {}]) == {"x": [2.0, 3.0]}
