"""Frame metrics (PSNR, SSIM, L1, LPIPS; whole frame and per region) on cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch.nn import functional as F

from fgbg.eval.metrics import LPIPS, frame_metrics, mask_iou, per_frame_metrics, person_mask_by_local_colour
from fgbg.utils.weights import load_state_dict_file


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny convolutions: with the second core busy (other test processes), OpenMP's barrier waits
    made a 5-image Inception forward take 3.5 s on 2 threads against 0.05 s on 1."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _video(t: int = 4, h: int = 32, w: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(t, 3, h, w, generator=g) * 0.8 + 0.1  # room for +-0.1 offsets


def _person_mask(t: int = 4, h: int = 32, w: int = 40) -> torch.Tensor:
    mask = torch.zeros(t, 1, h, w)
    mask[:, :, 8:24, 10:26] = 1
    return mask


def test_identical_videos_give_inf_psnr_unit_ssim_zero_l1():
    video = _video()
    m = frame_metrics(video, video.clone(), _person_mask())
    assert m["psnr"] == math.inf and m["psnr_person"] == math.inf and m["psnr_background"] == math.inf
    for key in ("ssim", "ssim_person", "ssim_background"):
        assert m[key] == pytest.approx(1.0, abs=1e-6)
    for key in ("l1", "l1_person", "l1_background"):
        assert m[key] == 0.0


def test_constant_offset_gives_known_psnr_and_l1():
    target = _video()
    m = frame_metrics(target + 0.1, target)
    assert m["psnr"] == pytest.approx(20.0, abs=1e-3)  # MSE 0.01
    assert m["l1"] == pytest.approx(0.1, abs=1e-6)
    assert m["ssim"] < 1.0


def test_error_only_in_background_is_seen_only_there():
    target, mask = _video(), _person_mask()
    pred = target + 0.1 * (1 - mask)
    m = frame_metrics(pred, target, mask)
    assert m["psnr_person"] == math.inf and m["l1_person"] == 0.0
    assert m["psnr_background"] == pytest.approx(20.0, abs=1e-3)
    assert m["l1_background"] == pytest.approx(0.1, abs=1e-6)
    background_fraction = float((1 - mask).mean())
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / (0.01 * background_fraction)), abs=1e-3)
    assert m["ssim_person"] > m["ssim_background"]


def test_all_ones_mask_reproduces_whole_frame_values():
    target = _video()
    pred = (target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    per_frame = per_frame_metrics(pred, target, torch.ones(4, 1, 32, 40))
    for metric in ("psnr", "ssim", "l1"):
        torch.testing.assert_close(per_frame[f"{metric}_person"], per_frame[metric], atol=1e-4, rtol=1e-5)
        assert per_frame[f"{metric}_background"].isnan().all()  # no background pixel anywhere


def test_frames_without_a_region_are_skipped():
    target, mask = _video(), _person_mask()
    mask[1:] = 0  # the person is only in frame 0
    pred = target.clone()
    pred[0] += 0.1 * mask[0]
    pred[1:] += 0.05
    per_frame = per_frame_metrics(pred, target, mask)
    assert per_frame["l1_person"][1:].isnan().all()
    assert frame_metrics(pred, target, mask)["l1_person"] == pytest.approx(0.1, abs=1e-6)


def test_batched_videos_match_flattened_frames():
    target = torch.stack([_video(seed=0), _video(seed=1)])  # (B, T, 3, H, W)
    pred = (target * 0.9 + 0.05).clamp(0, 1)
    mask = torch.stack([_person_mask(), _person_mask()])
    batched = frame_metrics(pred, target, mask)
    flat = frame_metrics(pred.flatten(0, 1), target.flatten(0, 1), mask.flatten(0, 1))
    assert batched == pytest.approx(flat)


@pytest.mark.parametrize(
    ("pred", "target", "mask", "message"),
    [
        (torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 40), None, "same shape"),
        (torch.rand(4, 3, 32, 32) + 1, torch.rand(4, 3, 32, 32), None, r"\[0, 1\]"),
        (torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.rand(4, 1, 32, 32), r"\{0, 1\}"),
        (torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.ones(3, 1, 32, 32), "mask"),
        (torch.rand(4, 4, 32, 32), torch.rand(4, 4, 32, 32), None, r"\(T, 3, H, W\)"),
    ],
)
def test_bad_input_is_named(pred, target, mask, message):
    with pytest.raises(ValueError, match=message):
        frame_metrics(pred, target, mask)


@pytest.fixture(scope="module")
def squeeze_weights(tmp_path_factory):
    """A randomly initialised torchvision squeezenet1_1 saved as torchvision saves its weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "squeezenet1_1.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    return path


def test_lpips_loads_local_backbone_and_scores(squeeze_weights):
    lpips = LPIPS(squeeze_weights, net_type="squeeze")
    state = load_state_dict_file(squeeze_weights, "test", "test")
    torch.testing.assert_close(lpips.net.net.slices[0][0].weight, state["features.0.weight"])
    target, mask = _video(t=3, h=48, w=48), _person_mask(t=3, h=48, w=48)
    assert lpips(target, target).abs().max() < 1e-6
    pred = (target + 0.2 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2)) * (1 - mask)).clamp(
        0, 1
    )
    scores = lpips(pred, target)
    assert scores.shape == (3,) and (scores > 0).all()
    assert lpips.distance_map(pred, target).shape == (3, 1, 48, 48)
    m = frame_metrics(pred, target, mask, lpips=lpips)
    assert m["lpips"] == pytest.approx(float(scores.mean()), rel=1e-5)
    assert m["lpips_background"] > m["lpips_person"] >= 0
    lpips.train()
    assert not lpips.training  # dropout in the heads stays off


def test_lpips_accepts_safetensors_and_names_missing_or_wrong_files(squeeze_weights, tmp_path):
    state = torch.load(squeeze_weights, weights_only=True)
    save_file(state, tmp_path / "squeeze.safetensors")
    LPIPS(tmp_path / "squeeze.safetensors", net_type="squeeze")
    with pytest.raises(FileNotFoundError, match="nothere.pth.*squeezenet1_1"):
        LPIPS(tmp_path / "nothere.pth", net_type="squeeze")
    with pytest.raises(ValueError, match="does not match"):
        LPIPS(squeeze_weights, net_type="alex")  # squeezenet keys for an alexnet backbone
    with pytest.raises(ValueError, match="net_type"):
        LPIPS(squeeze_weights, net_type="resnet")


def _person_scene(h: int = 32, w: int = 32, seed: int = 0):
    """A textured background with the person's colours in it, and a 6x14 'person' of those colours on top."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor([[0.8, -0.6, 0.1], [-0.7, 0.5, 0.9], [0.2, 0.9, -0.8], [-0.2, -0.9, -0.3]])
    bg = palette[torch.randint(0, 4, (h // 4, w // 4), generator=g)].permute(2, 0, 1)
    frame = F.interpolate(bg[None], size=(h, w), mode="nearest")[0]
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[8:22, 12:18] = True
    frame[:, 8:15, 12:18] = palette[0][:, None, None]  # shirt: a colour the background also has
    frame[:, 15:22, 12:18] = palette[1][:, None, None]
    return frame, mask


def test_local_colour_segmentation_finds_the_person_and_notices_a_shift():
    frame, mask = _person_scene()
    # background cells of the shirt's colour touch the person: ties there make even the truth a little short of 1
    assert mask_iou(person_mask_by_local_colour(frame, frame, mask), mask) > 0.9
    blurred = F.avg_pool2d(frame[None], 3, 1, 1, count_include_pad=False)[0]
    shifted = torch.roll(frame, 6, dims=-1)
    iou_blur = mask_iou(person_mask_by_local_colour(blurred, frame, mask), mask)
    iou_shift = mask_iou(person_mask_by_local_colour(shifted, frame, mask), mask)
    assert iou_blur > 0.8 and iou_shift < 0.4, (iou_blur, iou_shift)  # measured 0.87 and 0.33


def test_local_colour_segmentation_names_bad_shapes():
    frame, mask = _person_scene()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        person_mask_by_local_colour(frame[:2], frame[:2], mask)
    with pytest.raises(ValueError, match="exceeds"):
        person_mask_by_local_colour(frame, frame, mask, radius=1, k=10)
    assert mask_iou(torch.zeros(4, 4, dtype=bool), torch.zeros(4, 4, dtype=bool)) == 1.0
