"""A larger decoder for an existing latent space (model.encoder_from, experiment=synthetic_tiny_vae_decoder):
diffusers' AsymmetricAutoencoderKL built, saved and loaded by fgbg's VAE code; its encoder copied and frozen;
the CLI run keeping the encoder's scaling factor; bundles that decode a trained model's latents with it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from safetensors import safe_open

from fgbg.eval.vae import evaluate_vae
from fgbg.models.bundle import bundle_names, load_bundle, save_bundle, swap_decoder
from fgbg.models.latent import VAELatent, build_autoencoder, load_autoencoder
from fgbg.models.vae import VAEModule, encoder_state, save_vae
from tests.conftest import REPO, run_synth
from tests.test_model import H
from tests.test_tiny_latent import MINI_VAE, latent_cfg, vae_dir  # noqa: F401 - module fixture

C = MINI_VAE["latent_channels"]
MINI_ASYM = {  # the mini VAE's encoder, a decoder twice as wide
    "_class_name": "AsymmetricAutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": C,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "down_block_out_channels": [8, 8, 8], "layers_per_down_block": 1,
    "up_block_types": ["UpDecoderBlock2D"] * 3, "up_block_out_channels": [16, 16, 16], "layers_per_up_block": 1,
    "norm_num_groups": 4, "scaling_factor": 1.0,
}  # fmt: skip


def test_asymmetric_vae_builds_saves_and_loads(tmp_path):
    from diffusers import AsymmetricAutoencoderKL

    torch.manual_seed(0)
    vae = build_autoencoder(MINI_ASYM)
    assert isinstance(vae, AsymmetricAutoencoderKL)
    folder = save_vae(vae, tmp_path / "vae", scaling_factor=0.25)
    loaded = load_autoencoder(str(folder), "model.latent.pretrained")
    assert isinstance(loaded, AsymmetricAutoencoderKL) and loaded.config.scaling_factor == 0.25
    # a saved config (what a bundle embeds: block_out_channels and force_upcast recorded by the class) rebuilds it
    rebuilt = build_autoencoder({k: v for k, v in dict(loaded.config).items() if not k.startswith("_")})
    assert isinstance(rebuilt, AsymmetricAutoencoderKL)
    rebuilt.load_state_dict(loaded.state_dict())
    latent = VAELatent(str(folder), subfolder=None, sample_posterior=False)
    assert latent.factor == 4 and latent.channels == C
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = latent.encode(x)
    assert z.shape == (2, C, 4, 4) and latent.decode(z).shape == x.shape
    with pytest.raises(ValueError, match="same length"):
        build_autoencoder(MINI_ASYM | {"up_block_out_channels": [16, 16]})
    (folder / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(ValueError, match="expected one of"):
        load_autoencoder(str(folder), "model.latent.pretrained")


def test_encoder_from_copies_and_freezes_the_encoder(vae_dir):  # noqa: F811
    source = load_autoencoder(str(vae_dir), "src")
    torch.manual_seed(1)
    module = VAEModule(config=MINI_ASYM, encoder_from=str(vae_dir), crop=8)
    assert module.fixed_scaling_factor == 0.5
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for k, v in encoder_state(source).items():
        assert torch.equal(module.vae.state_dict()[k], v), k
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("vae.encoder.", "vae.quant_conv.", "vae.decoder.condition_encoder."))
                          for n in frozen)  # fmt: skip
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in module.parameters() if p.requires_grad
    )
    batch = {"frames": torch.rand(2, 1, 3, 16, 16) * 2 - 1, "reference": torch.rand(2, 3, 16, 16) * 2 - 1}
    module.training_step(batch, 0).backward()
    optimizer.step()
    after = module.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("vae.decoder.", "vae.post_quant_conv.")) for k in changed)
    assert not any("condition_encoder" in k for k in changed)
    # an encoder of another size is refused, naming what to give
    with pytest.raises(ValueError, match="does not fit model.config"):
        VAEModule(config=MINI_ASYM | {"down_block_out_channels": [8, 8, 16]}, encoder_from=str(vae_dir))


def test_fgbg_train_decoder_experiment_keeps_the_latent_space(vae_dir, tmp_path):  # noqa: F811
    """The real CLI: a few steps of experiment=synthetic_tiny_vae_decoder on the mini VAE's encoder."""
    shards = run_synth(tmp_path / "synth", num_videos=4, num_frames=4)
    val = run_synth(tmp_path / "val", num_videos=2, num_frames=4, seed=1)
    cmd = [sys.executable, "-m", "fgbg.train", "experiment=synthetic_tiny_vae_decoder", f"paths.log_dir={tmp_path}/runs",
           "run_name=t", f"data.train_shards={shards}/train-000000.tar", f"data.val_shards={val}/train-000000.tar",
           "data.batch_size=2", "data.num_workers=0", "trainer.max_steps=3", "trainer.val_check_interval=3",
           "trainer.limit_val_batches=1", "callbacks.vae_export.every_n_train_steps=2", "extras.print_config=false",
           f"model.encoder_from={vae_dir}", "model.config.down_block_out_channels=[8,8,8]",
           "model.config.up_block_out_channels=[16,16,16]", "model.config.norm_num_groups=4"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "runs" / "synthetic_tiny_vae_decoder" / "runs" / "t" / "vae"
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "AsymmetricAutoencoderKL"
    assert config["scaling_factor"] == 0.5  # the encoder's, not re-measured
    old, new = VAELatent(str(vae_dir), subfolder=None, sample_posterior=False), VAELatent(str(folder), subfolder=None,
                                                                                          sample_posterior=False)  # fmt: skip
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(old.encode(x), new.encode(x))  # the same latents
    metrics = evaluate_vae(str(folder), f"{val}/train-000000.tar", max_images=4)
    assert metrics["images"] == 4 and metrics["psnr_mean"] > 0


def test_bundle_decodes_a_models_latents_with_a_new_decoder(vae_dir, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    decoder = VAEModule(config=MINI_ASYM, encoder_from=str(vae_dir)).vae
    decoder_dir = save_vae(decoder, tmp_path / "dec", scaling_factor=0.5)
    cfg = latent_cfg(vae_dir, stage="video")
    cfg.latent.sample_posterior = False
    model = instantiate(cfg).eval()
    x = torch.rand(2, 3, H, H) * 2 - 1
    z = model.latent.encode(x)
    digest = swap_decoder(model, str(decoder_dir))
    assert len(digest) == 64 and torch.equal(model.latent.encode(x), z)
    path = save_bundle(model, tmp_path / "b.safetensors", cfg, {"resolution": H, "clip_len": 3})
    with safe_open(str(path), framework="pt") as f:  # not a shipped asset: embedded, with its class
        assert any(k.startswith("latent.vae.decoder.") for k in f.keys()) and bundle_names(model) <= set(f.keys())
    loaded, info = load_bundle(path)
    assert info.model_config.latent.config.up_block_out_channels == [16, 16, 16]
    assert torch.equal(loaded.latent.encode(x), z)
    assert torch.allclose(loaded.latent.decode(z), load_autoencoder(str(decoder_dir), "d").decode(z / 0.5).sample
                          .clamp(-1, 1), atol=1e-6)  # fmt: skip
    # a VAE with another encoder would decode the model's latents wrongly: refused
    torch.manual_seed(7)
    other = save_vae(build_autoencoder(MINI_ASYM), tmp_path / "other", scaling_factor=0.5)
    with pytest.raises(ValueError, match="not the one the model was trained on"):
        swap_decoder(instantiate(cfg), str(other))
    same_encoder_other_factor = save_vae(decoder, tmp_path / "factor", scaling_factor=0.7)
    with pytest.raises(ValueError, match="scaling_factor"):
        swap_decoder(instantiate(cfg), str(same_encoder_other_factor))


@pytest.mark.parametrize("asset", ["tiny_vae_c16", "tiny_vae_dc"])
def test_a_model_on_a_16_channel_vae_names_it(tmp_path, asset):
    """fgbg/assets/tiny_vae_c16 and tiny_vae_dc (16x16x16 latents) are shipped VAEs too: a bundle names them
    instead of a copy."""
    from fgbg.utils.config import asset_path

    torch.manual_seed(0)
    cfg = latent_cfg(asset_path(asset), stage="video")
    cfg.latent.pretrained = "${fgbg_asset:" + asset + "}"
    cfg.latent.sample_posterior = False
    cfg.unet.config.in_channels = cfg.unet.config.out_channels = 16
    model = instantiate(cfg).eval()
    assert model.latent.channels == 16 and model.latent.factor == 4
    path = save_bundle(model, tmp_path / "c16.safetensors", cfg, {"resolution": H, "clip_len": 3}, half=True)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == bundle_names(model)  # no latent.* tensors
    loaded, info = load_bundle(path)
    assert info.latent["asset"] == asset
    x = torch.rand(1, 3, H, H) * 2 - 1
    assert torch.equal(loaded.latent.encode(x), model.latent.encode(x))
