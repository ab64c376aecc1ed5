"""Feature networks for FID and FVD, built only from local weight files, and the distances.

FID features: torchvision's ``inception_v3`` architecture, 2048-d pool features, weights from a
local state dict (torchvision's ImageNet file ``inception_v3_google-0cc3c7bd.pth``, or the same
keys in ``.safetensors``). This is *not* the TF-ported Inception of the original FID code, so
numbers are comparable between runs of this repository, not with published FID tables.

FVD features, by ``arch``:
  ``i3d_torchscript``  the TorchScript I3D (Kinetics-400) commonly used for FVD
                       (``i3d_torchscript.pt`` from StyleGAN-V), loaded with ``torch.jit.load``
                       and called as ``detector(x, rescale=False, resize=True, return_features=True)``
                       on x (N, 3, T, H, W) in [-1, 1]; it resizes to 224 itself; 1024-d.
  ``r3d_18`` | ``mc3_18`` | ``r2plus1d_18``  torchvision video ResNets (Kinetics-400 state
                       dicts), frames resized to 112, Kinetics normalisation, 512-d pooled features.
  ``s3d``              torchvision S3D, frames resized to 224, features averaged over time and
                       space, 1024-d.

Both distances are ``FrechetDistance``, a torchmetrics ``Metric`` (features accumulate and gather
across processes like any torchmetrics state) whose final step is written here: see
``frechet_distance_from_features`` for why not torchmetrics' ``FrechetInceptionDistance``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from fgbg.utils.weights import load_state_dict_file, load_strict, require_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

# arch -> (default frame size, feature dimension)
TORCHVISION_VIDEO_ARCHS = {"r3d_18": (112, 512), "mc3_18": (112, 512), "r2plus1d_18": (112, 512), "s3d": (224, 1024)}
VIDEO_ARCHS = ("i3d_torchscript", *TORCHVISION_VIDEO_ARCHS)


class _FrozenFeatures(nn.Module):
    """A feature network that stays in eval mode and never needs gradients."""

    num_features: int

    def train(self, mode: bool = True) -> _FrozenFeatures:  # noqa: ARG002 - always eval
        return super().train(False)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()


def _check_unit_range(x: Tensor, name: str, shape: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor {shape} in [0, 1], got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name}: expected values in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")


def _normalise(frames: Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, size, size), bilinear (antialiased) resize, then (x - mean) / std."""
    if frames.shape[-2:] != (size, size):
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, device=frames.device, dtype=frames.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=frames.device, dtype=frames.dtype).view(1, 3, 1, 1)
    return (frames - mean_t) / std_t


class InceptionFeatures(_FrozenFeatures):
    """(N, 3, H, W) float RGB in [0, 1] -> (N, 2048) pool features of torchvision's inception_v3.

    Frames are resized to ``image_size`` (299 for the ImageNet weights) and ImageNet-normalised;
    ``transform_input=True`` as torchvision sets it for its ImageNet weights.
    """

    num_features = 2048

    def __init__(self, weights_path: str | Path, image_size: int = 299):
        super().__init__()
        what = "FID Inception weights"
        expected = "a torchvision inception_v3 state dict (.pth/.pt loadable with weights_only=True, or .safetensors)"
        state = load_state_dict_file(weights_path, what, expected)
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
        load_strict(net, state, what, weights_path)
        net.AuxLogits = None  # only used in training mode
        net.fc = nn.Identity()
        self.net = net
        self.image_size = image_size
        self._freeze()

    def forward(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"InceptionFeatures: expected frames (N, 3, H, W), got {tuple(frames.shape)}")
        _check_unit_range(frames, "InceptionFeatures input", "(N, 3, H, W)")
        return self.net(_normalise(frames, self.image_size, IMAGENET_MEAN, IMAGENET_STD))


def _check_videos(videos: Tensor, name: str) -> None:
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"{name}: expected videos (N, T, 3, H, W), got {tuple(videos.shape)}")
    _check_unit_range(videos, f"{name} input", "(N, T, 3, H, W)")


class I3DTorchScriptFeatures(_FrozenFeatures):
    """(N, T, 3, H, W) float RGB in [0, 1] -> (N, D) features of a TorchScript I3D (see module doc).

    The real I3D needs T >= 10 frames (16 is usual for FVD). ``num_features`` is read from one
    forward pass on a dummy (1, ``probe_frames``, 3, 64, 64) video.
    """

    def __init__(self, path: str | Path, probe_frames: int = 16):
        super().__init__()
        path = require_file(path, "FVD I3D weights", "a TorchScript I3D file such as i3d_torchscript.pt")
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, but the public I3D exists only as TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                self.detector = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # torch.jit raises RuntimeError or ValueError on non-TorchScript files
            raise ValueError(
                f"FVD I3D weights: {str(path)!r} is not a TorchScript file ({type(err).__name__}: {err}); "
                "expected a TorchScript I3D such as i3d_torchscript.pt, or pick a torchvision arch "
                f"({', '.join(TORCHVISION_VIDEO_ARCHS)}) with a state dict"
            ) from None
        self._freeze()
        with torch.no_grad():
            self.num_features = int(self(torch.zeros(1, probe_frames, 3, 64, 64)).shape[-1])

    def forward(self, videos: Tensor) -> Tensor:
        _check_videos(videos, "I3DTorchScriptFeatures")
        x = videos.permute(0, 2, 1, 3, 4) * 2 - 1  # (N, 3, T, H, W) in [-1, 1]
        return self.detector(x, rescale=False, resize=True, return_features=True)


class TorchvisionVideoFeatures(_FrozenFeatures):
    """(N, T, 3, H, W) float RGB in [0, 1] -> (N, D) pooled features of a torchvision video network.

    arch: one of ``TORCHVISION_VIDEO_ARCHS``; weights: its state dict (e.g. torchvision's
    Kinetics-400 ``r3d_18-b3b3357e.pth``); frames are resized to ``image_size`` (default: the
    arch's training size) and Kinetics-normalised.
    """

    def __init__(self, arch: str, weights_path: str | Path, image_size: int | None = None):
        super().__init__()
        if arch not in TORCHVISION_VIDEO_ARCHS:
            raise ValueError(f"video feature arch must be one of {VIDEO_ARCHS}, got {arch!r}")
        what = f"FVD {arch} weights"
        expected = f"a torchvision {arch} state dict (.pth/.pt loadable with weights_only=True, or .safetensors)"
        state = load_state_dict_file(weights_path, what, expected)
        net = getattr(torchvision.models.video, arch)(weights=None)
        load_strict(net, state, what, weights_path)
        default_size, self.num_features = TORCHVISION_VIDEO_ARCHS[arch]
        self.image_size = image_size or default_size
        self.arch = arch
        if arch == "s3d":
            self.trunk = net.features  # global average instead of S3D's fixed (2, 7, 7) pool: any size works
        else:
            net.fc = nn.Identity()
            self.trunk = net
        self._freeze()

    def forward(self, videos: Tensor) -> Tensor:
        _check_videos(videos, "TorchvisionVideoFeatures")
        n, t = videos.shape[:2]
        frames = _normalise(videos.flatten(0, 1), self.image_size, KINETICS_MEAN, KINETICS_STD)
        x = frames.unflatten(0, (n, t)).permute(0, 2, 1, 3, 4)  # (N, 3, T, S, S)
        out = self.trunk(x)
        return out.mean(dim=(2, 3, 4)) if self.arch == "s3d" else out


def load_video_features(weights_path: str | Path, arch: str = "i3d_torchscript") -> _FrozenFeatures:
    """The FVD feature network ``arch`` (one of ``VIDEO_ARCHS``) from a local file."""
    if arch == "i3d_torchscript":
        return I3DTorchScriptFeatures(weights_path)
    if arch in TORCHVISION_VIDEO_ARCHS:
        return TorchvisionVideoFeatures(arch, weights_path)
    raise ValueError(f"video feature arch must be one of {VIDEO_ARCHS}, got {arch!r}")


def frechet_distance_from_features(real: Tensor, fake: Tensor) -> Tensor:
    """Frechet distance between Gaussian fits of real (N1, D) and fake (N2, D) features (float64 scalar).

    d = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), unbiased covariances. Written here rather
    than taken from torchmetrics' ``FrechetInceptionDistance``, whose general (non-symmetric)
    eigendecomposition of the D x D product S1 S2 took 47 s for D = 2048 with 6 samples on this
    CPU. With centred features A, B: tr sqrt(S1 S2) = ||A B^T||_* / sqrt((N1 - 1)(N2 - 1)) (nuclear
    norm; S1 S2 and A B^T B A^T share their non-zero eigenvalues), exact and O(min(N, D)^3); when
    both sets outnumber D, the symmetric form sqrt(S1) S2 sqrt(S1) is used instead.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N1, D) and (N2, D), got {tuple(real.shape)} and {tuple(fake.shape)}")
    n1, n2, dim = real.shape[0], fake.shape[0], real.shape[1]
    if n1 < 2 or n2 < 2:
        raise ValueError(f"the Frechet distance needs at least 2 samples per side, got {n1} real and {n2} fake")
    real, fake = real.double(), fake.double()
    mu1, mu2 = real.mean(0), fake.mean(0)
    a, b = real - mu1, fake - mu2
    trace1, trace2 = a.square().sum() / (n1 - 1), b.square().sum() / (n2 - 1)
    if min(n1, n2) <= dim:
        trace_sqrt = torch.linalg.svdvals(a @ b.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    else:
        values, vectors = torch.linalg.eigh(a.T @ a / (n1 - 1))
        root1 = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
        middle = root1 @ (b.T @ b / (n2 - 1)) @ root1
        trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return (mu1 - mu2).square().sum() + trace1 + trace2 - 2 * trace_sqrt


class FrechetDistance(Metric):
    """FID or FVD as a torchmetrics Metric over a feature network.

    features: ``InceptionFeatures`` (FID; ``update`` takes frames (N, 3, H, W)) or a video feature
    network (FVD; videos (N, T, 3, H, W)); inputs float in [0, 1]. ``update(x, real=True/False)``
    any number of times, ``compute()`` needs at least 2 samples per side. Features are kept
    (float64, D per sample: 16 KB for D = 2048) so the distance is exact.
    """

    full_state_update = False

    def __init__(self, features: nn.Module, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    def update(self, samples: Tensor, real: bool) -> None:
        with torch.no_grad():
            feats = self.features(samples).double()
        (self.real_features if real else self.fake_features).append(feats)

    def compute(self) -> Tensor:
        real, fake = self.real_features, self.fake_features
        if not real or not fake:
            raise ValueError("FrechetDistance: update() with both real=True and real=False samples first")
        return frechet_distance_from_features(dim_zero_cat(real), dim_zero_cat(fake))


@torch.no_grad()
def frechet_distance(features: nn.Module, real: Tensor, fake: Tensor, batch_size: int = 16) -> float:
    """FID or FVD (see ``FrechetDistance``) between ``real`` and ``fake`` samples, in batches."""
    metric = FrechetDistance(features)
    for side, samples in ((True, real), (False, fake)):
        for start in range(0, len(samples), batch_size):
            metric.update(samples[start : start + batch_size], real=side)
    return float(metric.compute())
