"""model.init_from=<bundle>: fine-tune a trained model (the demo model on one's own videos)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from fgbg.models.bundle import bundle_names, save_bundle
from fgbg.models.checkpoint import load_init_weights
from tests.test_model import small_model_cfg


def test_init_from_bundle_loads_both_stages_weights(tmp_path):
    cfg = small_model_cfg(stage="video")
    torch.manual_seed(0)
    trained = instantiate(cfg)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # no longer what a fresh build gives
    bundle = tmp_path / "model.safetensors"
    save_bundle(trained, bundle, cfg, {"resolution": 16, "clip_len": 4, "max_tracks": 6})

    # A stage-image run started from the bundle: every bundle weight arrives, motion modules included
    # (they are not trained in stage image, so a bundle of that run keeps them).
    image_cfg = small_model_cfg(stage="image")
    image_cfg.init_from = str(bundle)
    torch.manual_seed(1)
    tuned = instantiate(image_cfg)
    want, got = dict(trained.named_parameters()), dict(tuned.named_parameters())
    names = bundle_names(tuned)
    assert any("motion_modules" in n for n in names)
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=0, msg=n)


def test_init_from_rejects_a_bundle_of_another_model_and_names_it(tmp_path):
    cfg = small_model_cfg(stage="image")
    torch.manual_seed(0)
    model = instantiate(cfg)
    bad = tmp_path / "other.safetensors"
    tensors = {n: p.detach().clone() for n, p in model.named_parameters() if n in bundle_names(model)}
    tensors.pop("denoiser.unet.conv_in.weight")
    save_file(tensors, str(bad), metadata={"format": "fgbg-bundle-1"})
    with pytest.raises(ValueError, match=r"other\.safetensors: bundle does not match this model.*1 missing"):
        load_init_weights(model, str(bad))
    with pytest.raises(FileNotFoundError, match="model bundle"):
        load_init_weights(model, str(tmp_path / "nope.safetensors"))
