"""Frame metrics: PSNR, SSIM, L1 and LPIPS, on the whole frame and inside / outside the person mask.

Conventions
  videos  float RGB in [0, 1], (T, 3, H, W) or (B, T, 3, H, W); every frame is scored on its own
  masks   (T, 1, H, W) or (B, T, 1, H, W), bool or float in {0, 1}, 1 on the person
  region  ``person`` = mask 1, ``background`` = mask 0
Per-frame values are averaged over frames; a frame with no pixel of a region does not count for
that region (its per-frame value is NaN). Identical frames give PSNR inf, SSIM 1, L1 0, LPIPS 0.

PSNR and SSIM on the whole frame come from torchmetrics (data range 1, Gaussian 11x11 window,
sigma 1.5). Masked variants are defined here:
  masked PSNR   10 log10(1 / MSE over the region's pixels and the 3 channels)
  masked SSIM   mean of torchmetrics' full SSIM map over the region's pixels and the 3 channels
                (torchmetrics 1.9 averages the same full map for the whole-frame value, so an
                all-ones mask reproduces it)
  masked L1     mean |pred - target| over the region's pixels and the 3 channels
  masked LPIPS  mean of the spatial LPIPS map (per-layer distances upsampled to H x W) over the
                region's pixels; whole-frame LPIPS is the standard spatially averaged value.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from fgbg.utils.weights import load_state_dict_file, load_strict

REGIONS = ("person", "background")

# LPIPS net type -> torchvision backbone architecture
LPIPS_BACKBONES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}


def as_frames(video: Tensor, name: str, channels: int = 3) -> Tensor:
    """(T, C, H, W) or (B, T, C, H, W) -> (N, C, H, W) with N = T or B * T."""
    if video.ndim == 5:
        video = video.flatten(0, 1)
    if video.ndim != 4 or video.shape[1] != channels:
        raise ValueError(
            f"{name}: expected (T, {channels}, H, W) or (B, T, {channels}, H, W), got {tuple(video.shape)}"
        )
    return video


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = as_frames(pred, "pred"), as_frames(target, "target")
    for name, x in (("pred", pred), ("target", target)):
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected float RGB in [0, 1], got {x.dtype}")
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"{name}: expected values in [0, 1], got [{x.min():.4g}, {x.max():.4g}] (clamp first)")
    return pred.float(), target.float()


def _check_mask(mask: Tensor, frames: Tensor) -> Tensor:
    """-> float (N, 1, H, W) in {0, 1} matching frames (N, 3, H, W)."""
    mask = as_frames(mask, "mask", channels=1)
    if mask.shape[0] != frames.shape[0] or mask.shape[-2:] != frames.shape[-2:]:
        raise ValueError(
            f"mask: expected {(frames.shape[0], 1, *frames.shape[-2:])} to match the frames, got {tuple(mask.shape)}"
        )
    mask = mask.float()
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("mask: expected values in {0, 1}")
    return mask


def _masked_mean(values: Tensor, weight: Tensor) -> Tensor:
    """values (N, C, H, W), weight (N, 1, H, W) in {0, 1} -> (N,) mean over weighted pixels, NaN where none."""
    count = weight.sum(dim=(1, 2, 3)) * values.shape[1]
    total = (values * weight).sum(dim=(1, 2, 3))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def _psnr_from_mse(mse: Tensor) -> Tensor:
    return 10 * torch.log10(1.0 / mse)  # mse 0 -> inf, NaN stays NaN


class LPIPS(nn.Module):
    """LPIPS (Zhang et al. 2018) on torchmetrics' network, built from local weights only.

    backbone_weights: the torchvision ImageNet state dict of the backbone (``alex``: alexnet, e.g.
        ``alexnet-owt-7be5be79.pth``; ``vgg``: vgg16; ``squeeze``: squeezenet1_1), as torchvision
        saves it; ``.safetensors`` with the same keys also works.
    lin_weights: the LPIPS v0.1 linear heads (keys ``lin{i}.model.1.weight``); default: the files
        torchmetrics ships in ``torchmetrics/functional/image/lpips_models/``.
    Inputs: (N, 3, H, W) float in [0, 1].
    """

    def __init__(self, backbone_weights: str | Path, net_type: str = "alex", lin_weights: str | Path | None = None):
        super().__init__()
        # torchmetrics' LearnedPerceptualImagePatchSimilarity always fetches ImageNet weights over the
        # network, so we build its (private, pinned torchmetrics==1.9.0) network with a random backbone
        # and load both parts from local files.
        from torchmetrics.functional.image import lpips as tm_lpips

        if net_type not in LPIPS_BACKBONES:
            raise ValueError(f"LPIPS net_type must be one of {sorted(LPIPS_BACKBONES)}, got {net_type!r}")
        arch = LPIPS_BACKBONES[net_type]
        self.net = tm_lpips._LPIPS(pretrained=False, net=net_type, pnet_rand=True, spatial=False)

        what = f"LPIPS {net_type} backbone weights"
        state = load_state_dict_file(backbone_weights, what, f"a torchvision {arch} ImageNet state dict")
        backbone = getattr(torchvision.models, arch)(weights=None)
        load_strict(backbone, state, what, backbone_weights)
        # torchmetrics splits torchvision's `features` into nn.Sequential slices that keep each layer's
        # index as its name; copy every layer and check that no backbone parameter is left random.
        slices = [m for m in self.net.net.modules() if isinstance(m, nn.Sequential)]
        copied = 0
        for block in slices:
            for index, layer in block.named_children():
                layer.load_state_dict(backbone.features[int(index)].state_dict())
                copied += sum(p.numel() for p in layer.parameters())
        if copied != sum(p.numel() for p in self.net.net.parameters()):
            raise RuntimeError(f"LPIPS {net_type}: torchmetrics' backbone layout changed; {copied} parameters copied")

        lin_path = lin_weights or Path(tm_lpips.__file__).parent / "lpips_models" / f"{net_type}.pth"
        lin_state = load_state_dict_file(
            lin_path, f"LPIPS {net_type} linear heads", "LPIPS v0.1 lin{i}.model.1.weight tensors"
        )
        heads = nn.ModuleDict({f"lin{i}": lin for i, lin in enumerate(self.net.lins)})
        load_strict(heads, lin_state, f"LPIPS {net_type} linear heads", lin_path)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:  # noqa: ARG002 - always eval (dropout in the heads)
        return super().train(False)

    def _run(self, pred: Tensor, target: Tensor, spatial: bool) -> Tensor:
        self.net.spatial = spatial  # read in _LPIPS.forward: per-layer maps upsampled vs spatially averaged
        return self.net(pred, target, normalize=True)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """(N, 3, H, W) x 2 -> (N,) standard LPIPS distance."""
        return self._run(pred, target, spatial=False).flatten()

    def distance_map(self, pred: Tensor, target: Tensor) -> Tensor:
        """(N, 3, H, W) x 2 -> (N, 1, H, W) per-pixel LPIPS distance."""
        return self._run(pred, target, spatial=True)


@torch.no_grad()
def per_frame_metrics(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, lpips: LPIPS | None = None, chunk: int = 32
) -> dict[str, Tensor]:
    """Per-frame metrics, each an (N,) float tensor (N = T or B * T), NaN where a region is empty.

    Keys: ``psnr``, ``ssim``, ``l1`` (and ``lpips`` if given); with ``mask`` also
    ``{metric}_person`` and ``{metric}_background``. See the module doc for definitions.
    """
    pred, target = _check_pair(pred, target)
    regions = {}
    if mask is not None:
        person = _check_mask(mask, pred)
        regions = {"person": person, "background": 1 - person}
    out: dict[str, list[Tensor]] = {}

    def add(key: str, value: Tensor) -> None:
        out.setdefault(key, []).append(value.detach().float().cpu())

    for start in range(0, pred.shape[0], chunk):
        p, t = pred[start : start + chunk], target[start : start + chunk]
        add("psnr", peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3)))
        ssim, ssim_map = structural_similarity_index_measure(
            p, t, data_range=1.0, reduction="none", return_full_image=True
        )
        add("ssim", ssim)
        abs_err = (p - t).abs()
        add("l1", abs_err.mean(dim=(1, 2, 3)))
        lpips_map = None
        if lpips is not None:
            add("lpips", lpips(p, t))
            if regions:
                lpips_map = lpips.distance_map(p, t)
        for region, weight in regions.items():
            w = weight[start : start + chunk]
            add(f"psnr_{region}", _psnr_from_mse(_masked_mean(abs_err.square(), w)))
            add(f"ssim_{region}", _masked_mean(ssim_map, w))
            add(f"l1_{region}", _masked_mean(abs_err, w))
            if lpips_map is not None:
                add(f"lpips_{region}", _masked_mean(lpips_map, w))
    return {key: torch.cat(values) for key, values in out.items()}


def frame_metrics(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, lpips: LPIPS | None = None
) -> dict[str, float]:
    """``per_frame_metrics`` averaged over frames (NaN frames skipped; NaN if no frame counts).

    Identical videos give ``psnr`` inf (any inf frame makes the mean inf), ``ssim`` 1.0, ``l1`` 0.0.
    """
    result = {}
    for key, values in per_frame_metrics(pred, target, mask, lpips).items():
        counted = values[~values.isnan()]
        result[key] = float(counted.mean()) if counted.numel() else math.nan
    return result


def person_mask_by_local_colour(frame: Tensor, truth: Tensor, mask: Tensor, radius: int = 2, k: int = 3) -> Tensor:
    """Segment a generated ``frame`` (3, H, W) into person / background using the labelled ``truth`` frame.

    Each pixel takes the majority label of the ``k`` truth pixels nearest to it in RGB among those within
    ``radius`` pixels of it (``mask`` (H, W) or (1, H, W) is the truth's person mask). A global colour
    classifier cannot tell a slightly blurred person in the right place from one in the wrong place, since
    the synthetic backgrounds share the clothes' colours (measured on held-out clips at 32x32: a 3x3-blurred
    truth scores IoU 0.50, the reference frame with the person in another pose 0.44); the local one can
    (0.75 vs 0.53 at radius 2), while a whole-frame shift of 3 px drops it to 0.30. Returns a bool (H, W).
    """
    if frame.ndim != 3 or frame.shape != truth.shape or frame.shape[0] != 3:
        raise ValueError(f"frame and truth must both be (3, H, W); got {tuple(frame.shape)} and {tuple(truth.shape)}")
    mask = mask.reshape(truth.shape[-2:]).float()
    c, h, w = truth.shape
    side = 2 * radius + 1
    if k > side * side:
        raise ValueError(f"k={k} exceeds the {side * side} pixels within radius {radius}")
    far = float(truth.abs().max()) * 10 + 10  # padding pixels are never a colour's nearest neighbour
    window = F.unfold(F.pad(truth[None].float(), (radius,) * 4, value=far), side).view(c, side * side, h * w)
    labels = F.unfold(F.pad(mask[None, None], (radius,) * 4), side).view(side * side, h * w)
    dist = ((window - frame.float().reshape(c, 1, h * w)) ** 2).sum(0)
    nearest = dist.topk(k, dim=0, largest=False).indices
    return (labels.gather(0, nearest).mean(0) > 0.5).view(h, w)


def mask_iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)
