"""FID and FVD from feature networks saved locally in their public formats (randomly initialised)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import Tensor, nn

from fgbg.eval.features import (
    FrechetDistance,
    I3DTorchScriptFeatures,
    InceptionFeatures,
    TorchvisionVideoFeatures,
    frechet_distance,
    frechet_distance_from_features,
    load_video_features,
)
from fgbg.utils.weights import load_state_dict_file


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny convolutions: with the second core busy (other test processes), OpenMP's barrier waits
    made a 5-image Inception forward take 3.5 s on 2 threads against 0.05 s on 1."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _reference_frechet(real: Tensor, fake: Tensor) -> float:
    """The textbook formula with scipy's matrix square root."""
    import numpy as np
    from scipy.linalg import sqrtm

    real, fake = real.double().numpy(), fake.double().numpy()
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = sqrtm(s1 @ s2).real
    return float(((real.mean(0) - fake.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize(("n_real", "n_fake", "dim"), [(40, 30, 6), (5, 7, 16), (9, 30, 12)])
def test_frechet_distance_matches_the_textbook_formula(n_real, n_fake, dim):
    g = torch.Generator().manual_seed(dim)
    real = torch.randn(n_real, dim, generator=g)
    fake = torch.randn(n_fake, dim, generator=g) @ torch.randn(dim, dim, generator=g) * 0.5 + 1.0
    ours = float(frechet_distance_from_features(real, fake))
    assert ours == pytest.approx(_reference_frechet(real, fake), rel=1e-6, abs=1e-6)
    assert float(frechet_distance_from_features(real, real.clone())) == pytest.approx(0.0, abs=1e-9)


def test_frechet_metric_accumulates_batches_and_needs_both_sides():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(10, 3, 8, 8, generator=g), torch.rand(7, 3, 8, 8, generator=g) ** 2
    flatten = nn.Flatten()
    flatten.num_features = 192
    metric = FrechetDistance(flatten)
    metric.update(real, real=True)
    with pytest.raises(ValueError, match="real=False"):
        metric.compute()
    metric.update(fake[:3], real=False)
    metric.update(fake[3:], real=False)
    expected = frechet_distance_from_features(real.flatten(1), fake.flatten(1))
    torch.testing.assert_close(metric.compute(), expected)
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(flatten, real[:1], fake)


class TinyI3D(nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature, (N, 3, T, H, W) in [-1, 1] -> (N, D)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 12, kernel_size=3, padding=1)
        self.logits = nn.Linear(12, 5)

    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> Tensor:
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 24, 24), mode="trilinear", align_corners=False)
        features = torch.relu(self.conv(x)).mean(dim=(2, 3, 4)) + x.mean(dim=(1, 2, 3, 4))[:, None]
        return features if return_features else self.logits(features)


def _frames(n: int, seed: int, bright: bool = False) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return 0.5 + 0.5 * x if bright else 0.5 * x


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path_factory.mktemp("fid") / "inception_v3.safetensors"
    save_file(net.state_dict(), path)
    return path


def test_fid_from_local_inception_is_zero_for_identical_sets_and_positive_otherwise(inception_file):
    features = InceptionFeatures(inception_file, image_size=75)  # 75: smallest inception_v3 input, fast
    real = _frames(5, seed=0)
    assert features(real).shape == (5, 2048)
    same = frechet_distance(features, real, real.clone())
    same_distribution = frechet_distance(features, real, _frames(5, seed=2))
    shifted = frechet_distance(features, real, _frames(5, seed=1, bright=True))
    assert shifted > same_distribution > 0
    assert abs(same) < 1e-3 * same_distribution


def test_fid_weights_errors_name_the_file(tmp_path, inception_file):
    with pytest.raises(FileNotFoundError, match="FID Inception weights.*missing.pth.*inception_v3"):
        InceptionFeatures(tmp_path / "missing.pth")
    save_file({"w": torch.zeros(2)}, tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match="wrong.safetensors.*does not match"):
        InceptionFeatures(tmp_path / "wrong.safetensors")
    features = InceptionFeatures(inception_file, image_size=75)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        features(_frames(2, seed=0) * 255)


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fvd") / "i3d_torchscript.pt"
    with pytest.warns(FutureWarning, match="jit"):  # deprecated, but it is the format i3d_torchscript.pt uses
        torch.jit.script(TinyI3D()).save(str(path))
    return path


def _videos(n: int, seed: int, drift: float = 0.0) -> Tensor:
    """(N, T, 3, H, W): frames that brighten by ``drift`` per frame."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 3, 20, 20, generator=g) * 0.5
    return (base + drift * torch.arange(8).view(1, 8, 1, 1, 1)).clamp(0, 1)


def test_fvd_from_torchscript_i3d(i3d_file):
    features = load_video_features(i3d_file, "i3d_torchscript")
    assert isinstance(features, I3DTorchScriptFeatures) and features.num_features == 12
    real = _videos(5, seed=0)
    same = frechet_distance(features, real, real.clone())
    different = frechet_distance(features, real, _videos(5, seed=1, drift=0.06))
    assert different > 0
    assert abs(same) < 1e-3 * different


def test_fvd_from_torchvision_video_network_state_dict(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "mc3_18.pth"
    torch.save(torchvision.models.video.mc3_18(weights=None).state_dict(), path)
    features = TorchvisionVideoFeatures("mc3_18", path, image_size=16)
    assert features.num_features == 512
    torch.testing.assert_close(
        features.trunk.stem[0].weight, load_state_dict_file(path, "test", "test")["stem.0.weight"]
    )
    real = _videos(4, seed=0)
    assert features(real).shape == (4, 512)
    same = frechet_distance(features, real, real.clone())
    different = frechet_distance(features, real, _videos(4, seed=1, drift=0.06))
    assert different > 0
    assert abs(same) < 1e-3 * different


def test_fvd_weights_errors_name_the_file_and_format(tmp_path, i3d_file):
    with pytest.raises(FileNotFoundError, match="FVD I3D weights.*i3d_missing.pt.*TorchScript"):
        load_video_features(tmp_path / "i3d_missing.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match="state_dict.pt.*not a TorchScript file"):
        load_video_features(tmp_path / "state_dict.pt", "i3d_torchscript")
    with pytest.raises(ValueError, match="arch must be one of"):
        load_video_features(i3d_file, "videomae")
    with pytest.raises(ValueError, match=r"\(N, T, 3, H, W\)"):
        load_video_features(i3d_file)(torch.rand(2, 3, 20, 20))


def test_torch_file_with_code_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": nn.ReLU()}, tmp_path / "pickled.pth")  # a module: unpickling runs code
    with pytest.raises(ValueError, match="cannot read.*pickled.pth"):
        load_state_dict_file(tmp_path / "pickled.pth", "LPIPS backbone", "a state dict")
