"""The tiny latent configuration's AutoencoderDC (model=tiny_vae_dc, experiment=synthetic_tiny_vae_dc): diffusers'
deterministic autoencoder with space-to-depth shortcuts, built, trained, exported, loaded and evaluated by fgbg's
VAE code, and a latent model on it that trains, samples and bundles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fgbg.eval.vae import evaluate_vae
from fgbg.models.bundle import load_bundle, save_bundle
from fgbg.models.latent import VAELatent, build_autoencoder, encode_posterior, load_autoencoder
from fgbg.models.vae import VAEModule, latent_scaling_factor, save_vae
from tests.conftest import REPO, run_synth
from tests.test_model import H, random_batch
from tests.test_tiny_latent import latent_cfg

MINI_DC = {  # conf/model/tiny_vae_dc.yaml's shape (3 stages: downsampling 4), narrower
    "_class_name": "AutoencoderDC", "in_channels": 3, "latent_channels": 16, "attention_head_dim": 8,
    "encoder_block_types": "ResBlock", "decoder_block_types": "ResBlock",
    "encoder_block_out_channels": [8, 16, 16], "decoder_block_out_channels": [8, 16, 16],
    "encoder_layers_per_block": [1, 1, 1], "decoder_layers_per_block": [1, 1, 1],
    "encoder_qkv_multiscales": [[], [], []], "decoder_qkv_multiscales": [[], [], []],
    "decoder_norm_types": "rms_norm", "decoder_act_fns": "silu", "scaling_factor": 1.0,
}  # fmt: skip
C = MINI_DC["latent_channels"]


def test_the_shipped_recipe_config_builds_an_autoencoder_dc():
    from diffusers import AutoencoderDC

    cfg = OmegaConf.load(REPO / "conf" / "model" / "tiny_vae_dc.yaml")
    vae = build_autoencoder(cfg.config)
    assert isinstance(vae, AutoencoderDC) and vae.config.latent_channels == 16
    z, posterior = encode_posterior(vae, torch.rand(1, 3, 64, 64) * 2 - 1)
    assert posterior is None and z.shape == (1, 16, 16, 16), "64x64 frames -> 16x16x16 latents"
    assert 0.5e6 < sum(p.numel() for p in vae.parameters()) < 1e6
    # the shortcut averages groups of channels: sizes that do not divide are named before diffusers fails
    with pytest.raises(ValueError, match=r"encoder_block_out_channels \[8, 24, 16\].*8 x 4 vs 24"):
        build_autoencoder(MINI_DC | {"encoder_block_out_channels": [8, 24, 16]})
    with pytest.raises(ValueError, match="same length"):
        build_autoencoder(MINI_DC | {"decoder_block_out_channels": [8, 16]})


def test_dc_saves_loads_and_is_a_latent_space(tmp_path):
    torch.manual_seed(0)
    vae = build_autoencoder(MINI_DC).eval()
    batches = [torch.rand(4, 3, 16, 16) * 2 - 1 for _ in range(2)]
    factor = latent_scaling_factor(vae, batches)
    folder = save_vae(vae, tmp_path / "vae", factor)
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "AutoencoderDC"
    loaded = load_autoencoder(str(folder), "model.latent.pretrained")
    assert type(loaded).__name__ == "AutoencoderDC"
    # a bundle embeds the config without _class_name: its keys tell the class
    rebuilt = build_autoencoder({k: v for k, v in dict(loaded.config).items() if not k.startswith("_")})
    rebuilt.load_state_dict(loaded.state_dict())
    latent = VAELatent(str(folder), subfolder=None, sample_posterior=True)
    assert latent.factor == 4 and latent.channels == C
    x = torch.cat(batches)
    z = latent.encode(x, torch.Generator().manual_seed(0))
    assert torch.equal(z, latent.encode(x, torch.Generator().manual_seed(1))), "deterministic: nothing sampled"
    assert float(z.std()) == pytest.approx(1.0, abs=0.15), "the scaling factor gives unit-variance latents"
    assert latent.decode(z).shape == x.shape


def test_vae_module_trains_dc_without_a_kl_and_refuses_one():
    torch.manual_seed(0)
    module = VAEModule(config=MINI_DC, kl_weight=0.0, crop=8)
    batch = {"frames": torch.rand(2, 1, 3, 16, 16) * 2 - 1, "reference": torch.rand(2, 3, 16, 16) * 2 - 1}
    terms = module.losses(module.random_crops(batch["reference"]), sample=False)
    assert float(terms["kl"]) == 0.0 and torch.isfinite(terms["loss"])
    loss = module.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is not None for p in module.parameters())
    with pytest.raises(ValueError, match=r"model.kl_weight=1e-06: AutoencoderDC has no posterior.*expected 0"):
        VAEModule(config=MINI_DC, kl_weight=1e-6)
    with pytest.raises(ValueError, match=r"model.sample_posterior=True: AutoencoderDC has no posterior"):
        VAEModule(config=MINI_DC, kl_weight=0.0, sample_posterior=True)


def test_fgbg_train_dc_experiment_writes_a_folder_a_latent_model_uses(tmp_path):
    """The real CLI: a few steps of experiment=synthetic_tiny_vae_dc -> <run>/vae, evaluated by fgbg.eval.vae,
    then a latent model on that folder trains a step, samples a clip and bundles with the VAE embedded."""
    shards = run_synth(tmp_path / "synth", num_videos=4, num_frames=4)
    cmd = [sys.executable, "-m", "fgbg.train", "experiment=synthetic_tiny_vae_dc", f"paths.log_dir={tmp_path}/runs",
           "run_name=t", f"data.train_shards={shards}/train-000000.tar", f"data.val_shards={shards}/train-000000.tar",
           "data.batch_size=2", "data.num_workers=0", "trainer.max_steps=3", "trainer.val_check_interval=3",
           "trainer.limit_val_batches=1", "callbacks.vae_export.every_n_train_steps=2", "extras.print_config=false",
           "model.config.encoder_block_out_channels=[8,16,16]", "model.config.decoder_block_out_channels=[8,16,16]",
           "model.config.attention_head_dim=8"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "runs" / "synthetic_tiny_vae_dc" / "runs" / "t" / "vae"
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderDC" and config["scaling_factor"] != 1.0
    metrics = evaluate_vae(str(folder), f"{shards}/train-000000.tar", max_images=8)
    assert metrics["images"] == 8 and 0 < metrics["psnr_mean"] < 60

    torch.manual_seed(0)
    cfg = latent_cfg(folder, stage="video")
    cfg.unet.config.in_channels = cfg.unet.config.out_channels = C
    model = instantiate(cfg)
    out = model.compute_loss(random_batch(t=3), torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and not any(p.requires_grad for n, p in model.named_parameters()
                                                   if n.startswith("latent."))  # fmt: skip
    model.eval()
    from tests.test_hint_anchor import sample, setup

    ctx, cond = setup(model)
    clip = sample(model, ctx, cond, hint_anchor=1.0, anchor_finish="latent")
    assert clip.shape == (1, 2, 3, H, H) and torch.isfinite(clip).all()
    path = save_bundle(model, tmp_path / "b.safetensors", cfg, {"resolution": H, "clip_len": 3})
    loaded, info = load_bundle(path)
    assert info.model_config.latent.pretrained is None, "a small VAE travels in the bundle"
    assert type(loaded.latent.vae).__name__ == "AutoencoderDC"
    x = torch.rand(2, 3, H, H) * 2 - 1
    assert torch.equal(loaded.latent.encode(x), model.latent.encode(x))
