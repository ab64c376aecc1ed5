"""The tiny latent configuration: the autoencoder it trains (experiment=synthetic_tiny_vae), the model that
uses it frozen (model=fgbg_tiny_latent) and bundles that carry the small VAE inside them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors import safe_open

from fgbg.config_checks import ConfigError, check_train_config
from fgbg.eval.vae import evaluate_vae
from fgbg.models.bundle import bundle_names, embedded_latent_names, load_bundle, save_bundle
from fgbg.models.checkpoint import load_init_weights
from fgbg.models.latent import VAELatent, build_autoencoder
from fgbg.models.vae import (
    TINY_VAE_CONFIG,
    VAEModule,
    latent_scaling_factor,
    save_vae,
)
from tests.conftest import REPO, run_synth, train_config
from tests.test_model import H, random_batch, small_model_cfg

MINI_VAE = dict(TINY_VAE_CONFIG, block_out_channels=[8, 8, 8], norm_num_groups=4)  # factor 4, the tiny VAE's channels
C = TINY_VAE_CONFIG["latent_channels"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    vae = build_autoencoder(MINI_VAE)
    return save_vae(vae, tmp_path_factory.mktemp("vae") / "vae", scaling_factor=0.5)


def latent_cfg(vae_dir: Path, **overrides):
    cfg = small_model_cfg(**overrides)
    cfg.latent = {"_target_": "fgbg.models.latent.VAELatent", "pretrained": str(vae_dir), "subfolder": None}
    cfg.unet.config.in_channels = cfg.unet.config.out_channels = C
    cfg.controlnet.conditioning_embedding_out_channels = [8, 8, 8]
    cfg.link_augment = {"prob": 0.5, "max_t": 0.3}
    cfg.video_trainable = ["denoiser.unet.conv_in"]
    return cfg


def test_vae_losses_and_crops_are_as_documented():
    torch.manual_seed(0)
    module = VAEModule(config=MINI_VAE, crop=8)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    crops = module.random_crops(images)
    assert crops.shape == (3, 3, 8, 8)
    # each crop is a window of its own image
    assert all(any(torch.equal(c, im[:, y : y + 8, x : x + 8]) for y in range(9) for x in range(9))
               for c, im in zip(crops, images, strict=True))  # fmt: skip
    terms = module.losses(images, sample=False)
    expected = sum(module.weights[k] * terms[k] for k in ("l1", "mse", "grad", "kl"))
    assert torch.allclose(terms["loss"], expected)
    assert float(terms["kl"].detach()) >= 0 and 0 < float(terms["psnr"]) < 60
    terms["loss"].backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_vae_person_weight_weighs_the_person_and_crops_its_mask():
    torch.manual_seed(0)
    plain = VAEModule(config=MINI_VAE, crop=None)
    weighted = VAEModule(config=MINI_VAE, crop=None, person_weight=5.0)
    weighted.vae.load_state_dict(plain.vae.state_dict())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:12, 6:10] = 1.0
    with torch.no_grad():
        recon = plain.vae.decode(plain.vae.encode(images).latent_dist.mode()).sample
        err = (recon - images).abs()
        w = 1.0 + 4.0 * masks
        terms = weighted.losses(images, sample=False, masks=masks)
        # a mean weighted 5:1 inside the mask, normalised so a uniform error keeps its value
        assert torch.allclose(terms["l1"], (err * w).sum() / (w.sum() * 3), atol=1e-6)
        assert not torch.allclose(terms["l1"], plain.losses(images, sample=False)["l1"])
        # weight 1 with masks: the plain terms, plus the person's PSNR
        same = plain.losses(images, sample=False, masks=masks)
        assert torch.equal(same["l1"], plain.losses(images, sample=False)["l1"])
        person_mse = (((recon.clamp(-1, 1) - images) / 2).square() * masks).sum() / (masks.sum() * 3)
        assert float(same["psnr_person"]) == pytest.approx(float(10 * torch.log10(1 / person_mse)), abs=1e-3)
    # training crops the mask from the image's window
    batch = {"frames": images[:, None], "reference": images.flip(0), "masks": masks[:, None],
             "reference_mask": masks.flip(0)}  # fmt: skip
    cropped = VAEModule(config=MINI_VAE, crop=8, person_weight=5.0)
    seen = []
    cropped.losses = lambda im, sample, masks: seen.append((im, masks)) or {"loss": im.sum() * 0}  # type: ignore
    cropped.log_dict = cropped.log = lambda *a, **k: None  # type: ignore
    cropped.training_step(batch, 0)
    ((im, m),) = seen
    assert im.shape == (4, 3, 8, 8) and m.shape == (4, 1, 8, 8)
    full = torch.cat([torch.cat([images, images.flip(0)]), torch.cat([masks, masks.flip(0)])], 1)
    assert all(any(torch.equal(torch.cat([a, b]), f[:, y : y + 8, x : x + 8]) for y in range(9) for x in range(9))
               for a, b, f in zip(im, m, full, strict=True))  # fmt: skip
    # without masks in the batch a person weight cannot apply: the error names the setting and the keys
    with pytest.raises(ValueError, match=r"model.person_weight=5.0: the batch has no person masks"):
        cropped.training_step({"frames": images[:, None], "reference": images}, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop": 12}, "model.crop=12"),
        ({"kl_weight": -1.0}, "model.kl_weight=-1.0"),
        ({"config": None}, "give `config`"),
        ({"person_weight": 0.5}, "model.person_weight=0.5"),
    ],
)
def test_vae_module_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        VAEModule(**({"config": MINI_VAE} | kwargs))


def test_scaling_factor_gives_unit_variance_latents(vae_dir):
    torch.manual_seed(1)
    vae = build_autoencoder(MINI_VAE).eval()
    batches = [torch.rand(4, 3, 16, 16) * 2 - 1 for _ in range(3)]
    factor = latent_scaling_factor(vae, batches)
    folder = save_vae(vae, vae_dir.parent / "scaled", factor)
    assert json.loads((folder / "config.json").read_text())["scaling_factor"] == pytest.approx(factor)
    latent = VAELatent(str(folder), subfolder=None, sample_posterior=False)
    z = torch.cat([latent.encode(b) for b in batches])
    assert z.shape == (12, C, 4, 4)
    assert float(z.std()) == pytest.approx(1.0, abs=0.15)
    with pytest.raises(ValueError, match="no images"):
        latent_scaling_factor(vae, [])


def test_fgbg_train_vae_experiment_writes_a_loadable_folder(tmp_path):
    """The real CLI: a few steps of experiment=synthetic_tiny_vae on fgbg-synth shards -> <run>/vae."""
    shards = run_synth(tmp_path / "synth", num_videos=4, num_frames=4)
    val = run_synth(tmp_path / "val", num_videos=2, num_frames=4, seed=1)
    cmd = [sys.executable, "-m", "fgbg.train", "experiment=synthetic_tiny_vae", f"paths.log_dir={tmp_path}/runs",
           "run_name=t", f"data.train_shards={shards}/train-000000.tar", f"data.val_shards={val}/train-000000.tar",
           "data.batch_size=2", "data.num_workers=0", "trainer.max_steps=3", "trainer.val_check_interval=3",
           "trainer.limit_val_batches=1", "callbacks.vae_export.every_n_train_steps=2", "extras.print_config=false",
           "model.config.block_out_channels=[8,8,8]", "model.config.norm_num_groups=4"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "runs" / "synthetic_tiny_vae" / "runs" / "t" / "vae"
    config = json.loads((folder / "config.json").read_text())
    assert config["latent_channels"] == C and config["scaling_factor"] != 1.0
    latent = VAELatent(str(folder), subfolder=None)
    assert latent.factor == 4 and latent.channels == C
    sheet = tmp_path / "sheet.png"
    metrics = evaluate_vae(str(folder), f"{val}/train-000000.tar", max_images=8, sheet=str(sheet), sheet_images=4)
    assert metrics["images"] == 8 and metrics["psnr_mean"] > 0 and metrics["lpips"] is None
    # the person's own PSNR and appearance error (synthetic clips always show one); a random VAE is far off
    assert 0 < metrics["psnr_person"] < 60 and metrics["appearance_person"] > 0
    from PIL import Image

    with Image.open(sheet) as im:  # 4 pairs of 64x64 frames, 3 pairs a row -> 2 rows, upscaled 3x
        assert im.size == (3 * (3 * (2 * 64 + 2) + 2 * 6), 3 * (2 * 64 + 2))


def test_config_checks_know_the_autoencoder(tmp_path):
    shards = run_synth(tmp_path / "synth", num_videos=2, num_frames=4)
    base = ["experiment=synthetic_tiny_vae", f"data.train_shards={shards}/train-000000.tar",
            f"data.val_shards={shards}/train-000000.tar"]  # fmt: skip
    check_train_config(train_config(tmp_path / "a", base))  # no UNet keys: the dual-motion checks are skipped
    with pytest.raises(ConfigError, match=r"data.resolution=66: expected a positive multiple of 4"):
        check_train_config(train_config(tmp_path / "b", base + ["data.resolution=66"]))
    latent = ["experiment=synthetic_tiny_latent_image", f"data.train_shards={shards}/train-000000.tar",
              f"data.val_shards={shards}/train-000000.tar"]  # fmt: skip
    check_train_config(train_config(tmp_path / "c", latent))
    with pytest.raises(ConfigError, match=r"data.resolution=56: expected a positive multiple of 16"):
        check_train_config(train_config(tmp_path / "d", latent + ["data.resolution=56"]))


def test_fgbg_tiny_latent_config_builds_on_the_bundled_vae(tmp_path):
    from fgbg.utils.config import asset_path

    cfg = train_config(tmp_path, ["model=fgbg_tiny_latent"]).model
    assert cfg.latent.pretrained == asset_path("tiny_vae")
    assert (Path(asset_path("tiny_vae")) / "config.json").is_file()
    model = instantiate(cfg)
    assert isinstance(model.latent, VAELatent) and model.latent.factor == 4 and model.latent.channels == C
    assert model.latent.scaling_factor != 1.0  # measured on data at export
    assert model.link_level_channel and model.link_augment == {"prob": 0.5, "max_t": 0.3}


@pytest.mark.parametrize("stage", ["image", "video"])
def test_latent_model_trains_a_step(vae_dir, stage):
    torch.manual_seed(0)
    model = instantiate(latent_cfg(vae_dir, stage=stage))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("latent.")}
    out = model.compute_loss(random_batch(t=1 if stage == "image" else 3), torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("latent."))
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert trained and not any(n.startswith("latent.") for n in trained)
    if stage == "video":
        assert any(n.startswith("denoiser.unet.conv_in") for n in trained)  # the link channels learn
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def anchored_on_the_shipped_vae():
    """A tiny latent model on the shipped VAE (a random one reconstructs nothing) with pixel-space hints, the
    held-pose setup of tests/test_hint_anchor.py: (model, ctx, cond, weight, hint, err), ``err`` the mean error
    against the hint's pixels where its weight is ~1."""
    from tests.test_hint_anchor import anchor_of, setup

    torch.manual_seed(0)
    model = instantiate(latent_cfg(REPO / "fgbg" / "assets" / "tiny_vae", hint_space="pixel")).eval()
    ctx, cond = setup(model)
    pixels, weight = anchor_of(model, ctx, cond)
    covered = (weight > 0.99).unflatten(0, (1, 2))
    hint = pixels.unflatten(0, (1, 2)).clamp(-1, 1)
    err = lambda x: (x - hint).abs().mul(covered).sum().item() / (3 * covered.sum().item())  # noqa: E731
    return model, ctx, cond, weight, hint, err


def test_hint_anchor_pastes_the_hint_through_the_vae():
    """generation's hint_anchor on a latent model: the paste goes through the VAE's decoder and encoder (the
    shipped tiny VAE: a random one reconstructs nothing), and the decoded frames come closer to the hint's pixels
    where the hint is valid (tests/test_hint_anchor.py: pixel space)."""
    from tests.test_hint_anchor import sample

    model, ctx, cond, weight, hint, err = anchored_on_the_shipped_vae()
    free, anchored = sample(model, ctx, cond), sample(model, ctx, cond, hint_anchor=1.0)
    floor = err(model.latent.decode(model.latent.encode(hint.flatten(0, 1), mean=True)).unflatten(0, (1, 2)))
    assert torch.isfinite(anchored).all() and err(anchored) < 0.5 * err(free), (err(anchored), err(free))
    assert err(anchored) < floor + 0.1, ("near the VAE's own round trip of the hint", err(anchored), floor)


def test_anchor_finish_keeps_the_paste_to_the_vae_round_trip_or_exactly():
    """anchor_finish: ``latent`` ends the clip on the paste's encoding where the hints cover a latent cell, so the
    covered pixels are the VAE's round trip of the hint (``blend`` only moves the model's latents by the paste's
    change); ``pixel`` also overlays the hint's pixels by their weight: exact where the weight is 1. Outside the
    hints' cover the three finishes decode the same latents' neighbourhood (no global change)."""
    from tests.test_hint_anchor import sample

    model, ctx, cond, weight, hint, err = anchored_on_the_shipped_vae()
    roundtrip = model.latent.decode(model.latent.encode(hint.flatten(0, 1), mean=True)).unflatten(0, (1, 2))
    out = {f: sample(model, ctx, cond, hint_anchor=1.0, anchor_finish=f) for f in ("blend", "latent", "pixel")}
    assert torch.equal(out["blend"], sample(model, ctx, cond, hint_anchor=1.0)), "blend is the default"
    # latent: inside cells the hint covers whole, the frame comes near the round trip of the pasted frame (not equal:
    # the decoder sees neighbouring cells, and DDIM's last step stops at alpha_cumprod[0], not 1)
    inner = (F.avg_pool2d(weight, 4) > 0.999).float()
    inner = F.interpolate(inner, scale_factor=4).unflatten(0, (1, 2)).bool().expand_as(hint)
    assert inner.any()
    assert (out["latent"] - roundtrip)[inner].abs().mean() < 0.8 * (out["blend"] - roundtrip)[inner].abs().mean()
    assert err(out["pixel"]) < 1e-5, "the overlay puts the hint's pixels where its weight is 1"
    free = (weight < 0.01).unflatten(0, (1, 2)).expand_as(hint)
    assert torch.allclose(out["pixel"][free], out["latent"][free], atol=1e-5), "the overlay is only where pasted"
    with pytest.raises(ValueError, match=r"anchor_finish='exact': expected one of \('blend', 'latent', 'pixel'\)"):
        sample(model, ctx, cond, hint_anchor=1.0, anchor_finish="exact")


def test_bundle_embeds_a_small_vae_and_stands_alone(vae_dir, tmp_path):
    import shutil

    torch.manual_seed(0)
    cfg = latent_cfg(vae_dir, stage="video")
    model = instantiate(cfg).eval()
    own_vae = tmp_path / "own_vae"
    shutil.copytree(vae_dir, own_vae)
    cfg.latent.pretrained = str(own_vae)
    path = save_bundle(model, tmp_path / "b.safetensors", cfg, {"resolution": H, "clip_len": 3})
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert embedded_latent_names(model) and embedded_latent_names(model) <= keys
    assert keys == bundle_names(model) | embedded_latent_names(model)
    shutil.rmtree(own_vae)  # the folder the training config named is gone: the bundle does not need it
    loaded, info = load_bundle(path)
    assert info.model_config.latent.pretrained is None and info.model_config.latent.config.latent_channels == C
    x = torch.rand(2, 3, H, H) * 2 - 1
    assert torch.equal(loaded.latent.encode(x, torch.Generator().manual_seed(0)),
                       model.latent.encode(x, torch.Generator().manual_seed(0)))  # fmt: skip
    # model.init_from=<bundle>: the fine-tuned model takes the bundle's VAE too
    torch.manual_seed(5)
    other = instantiate(latent_cfg(vae_dir, stage="image"))
    assert load_init_weights(other, str(path)) == "bundle"
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in other.named_parameters()
               if n.startswith("latent."))  # fmt: skip


def test_bundle_names_the_shipped_vae_and_checks_its_digest(tmp_path, monkeypatch):
    """A model on fgbg/assets/tiny_vae: the bundle names the asset (no copy of its weights) and loading refuses an
    installed asset whose weights differ from the ones the model was trained with."""
    from diffusers import AutoencoderKL

    from fgbg.utils.config import asset_path

    torch.manual_seed(0)
    cfg = latent_cfg(Path(asset_path("tiny_vae")), stage="video")
    cfg.latent.pretrained = "${fgbg_asset:tiny_vae}"
    cfg.latent.sample_posterior = False  # as model=fgbg_tiny_latent: the posterior's mean
    model = instantiate(cfg).eval()
    data = {"resolution": H, "clip_len": 3}
    named = save_bundle(model, tmp_path / "named.safetensors", cfg, data, half=True)
    embedded = save_bundle(model, tmp_path / "embedded.safetensors", cfg, data, half=True, embed_vae=True)
    with safe_open(str(named), framework="pt") as f:
        assert set(f.keys()) == bundle_names(model)  # no latent.* tensors
    vae_bytes = 2 * sum(p.numel() for n, p in model.named_parameters() if n.startswith("latent."))
    assert embedded.stat().st_size - named.stat().st_size >= vae_bytes
    loaded, info = load_bundle(named)
    assert info.latent["asset"] == "tiny_vae" and len(info.latent["sha256"]) == 64
    assert "fgbg_asset:tiny_vae" in str(OmegaConf.to_container(info.model_config)["latent"]["pretrained"])
    x = torch.rand(2, 3, H, H) * 2 - 1
    assert torch.equal(loaded.latent.encode(x), model.latent.encode(x))  # the asset's float32 weights, exactly
    # A retrained asset (one weight nudged) must not decode this bundle's latents silently.
    vae = AutoencoderKL.from_pretrained(asset_path("tiny_vae"), local_files_only=True)
    with torch.no_grad():
        vae.decoder.conv_out.bias += 1e-3
    vae.save_pretrained(tmp_path / "assets" / "tiny_vae")
    monkeypatch.setattr("fgbg.utils.config.ASSETS_DIR", str(tmp_path / "assets"))
    with pytest.raises(ValueError, match="retrained since"):
        load_bundle(named)
    assert load_bundle(embedded)[1].latent == {}  # a bundle that embeds its VAE does not depend on the asset


def test_pixel_bundles_are_unchanged(tmp_path):
    torch.manual_seed(0)
    cfg = small_model_cfg(stage="video")
    model = instantiate(cfg)
    assert embedded_latent_names(model) == set()
    path = save_bundle(model, tmp_path / "p.safetensors", cfg, {"resolution": H})
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == bundle_names(model)


def test_real_demo_fine_tunes_a_bundle_with_its_own_experiment(vae_dir, tmp_path):
    """bench/real_demo.py --demo <bundle>: a latent bundle fine-tunes as synthetic_tiny_latent_*, pixels as before."""
    from bench.real_demo import experiment_of, train_command

    torch.manual_seed(0)
    cfg = latent_cfg(vae_dir, stage="video")
    latent = save_bundle(instantiate(cfg).eval(), tmp_path / "l.safetensors", cfg, {"resolution": H, "clip_len": 3})
    pixel_cfg = small_model_cfg(stage="video")
    pixel = save_bundle(instantiate(pixel_cfg), tmp_path / "p.safetensors", pixel_cfg, {"resolution": H})
    assert experiment_of(latent) == "synthetic_tiny_latent" and experiment_of(pixel) == "synthetic_tiny"
    cmd = train_command("image", latent, tmp_path / "manifest.json", experiment_of(latent))
    assert "experiment=synthetic_tiny_latent_image" in cmd and f"model.init_from={latent}" in cmd
    # the experiment composes with the bundle as init_from (the checks fgbg-train runs before training)
    overrides = [a for a in cmd[1:] if not a.startswith(("data.train_shards", "data.val_shards", "paths."))]
    assert train_config(tmp_path / "cfg", overrides).model.init_from == str(latent)
