"""check_train_config / check_generate_config: each bad value is named with what is allowed, before any work."""

from __future__ import annotations

import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from fgbg.config_checks import ConfigError, check_generate_config, check_train_config, spatial_factor
from fgbg.train import CONF_DIR, train


def _train_cfg(shards: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=["experiment=synthetic_tiny_video", "model.init_from=x.safetensors",
                       f"data.train_shards={shards}", f"data.val_shards={shards}", *overrides],
        )  # fmt: skip


@pytest.fixture
def shard(tmp_path) -> str:
    path = tmp_path / "train-000000.tar"
    path.write_bytes(b"")  # existence is all the config check looks at
    return str(path)


def test_the_shipped_experiments_pass(shard):
    check_train_config(_train_cfg(shard))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        check_train_config(compose("train", overrides=["experiment=synthetic_tiny_image"]), check_paths=False)
        check_generate_config(compose("generate"))


def test_spatial_factor_counts_unet_and_vae_downsampling():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        assert spatial_factor(compose("train").model) == 4  # tiny: 3 UNet blocks, pixel space
        assert spatial_factor(compose("train", overrides=["model=fgbg_sd15"]).model) == 64  # 4 blocks x VAE 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.resolution=30", r"data.resolution=30: expected a positive multiple of 4"),
        ("data.clip_len=0", r"data.clip_len=0: expected an integer >= 1"),
        ("data.clip_len=33", r"data.clip_len=33: stage video allows at most .*motion_max_seq_length=32"),
        ("data.min_tracks=0", r"data.min_tracks=0, data.max_tracks=50: expected integers with 1 <= min <= max"),
        ("data.min_tracks=60", r"data.min_tracks=60, data.max_tracks=50"),
        ("model.cfg_dropout.pose=1.5", r"model.cfg_dropout.pose=1.5: expected a rate in \[0, 1\]"),
        ("model.link_prob=-0.1", r"model.link_prob=-0.1: expected a probability in \[0, 1\]"),
    ],
)
def test_each_bad_value_is_named_with_what_is_allowed(shard, override, message):
    with pytest.raises(ConfigError, match=message):
        check_train_config(_train_cfg(shard, override))


def test_all_problems_are_reported_together_and_missing_shards_are_named(tmp_path, shard):
    cfg = _train_cfg(shard, "data.resolution=31", "model.link_prob=2")
    with open_dict(cfg):
        cfg.data.train_shards = str(tmp_path / "train-{000000..000003}.tar")
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    text = str(err.value)
    assert "data.resolution=31" in text and "model.link_prob=2" in text
    assert "data.train_shards: 3 of 4 shards" in text and "train-000001.tar" in text


def test_train_fails_fast_before_building_anything(tmp_path, shard):
    cfg = _train_cfg(shard, "data.clip_len=64", f"paths.output_dir={tmp_path / 'run'}")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="data.clip_len=64"):
        train(cfg)
    assert time.perf_counter() - start < 2.0
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("scale", [-1.0, float("nan"), "high"])
def test_negative_or_non_numeric_guidance_is_refused(scale):
    cfg = OmegaConf.create({"guidance": {"reference": 1.0, "pose": scale, "tracks": 1.0}})
    with pytest.raises(ConfigError, match=r"guidance.pose=.*: expected a classifier-free guidance scale >= 0"):
        check_generate_config(cfg)
