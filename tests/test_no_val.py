"""Training without validation data (issue 15, point 3): it runs, and sample videos come from the first
training batch, with a one-line notice."""

from __future__ import annotations

import logging

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from fgbg.train import CONF_DIR, train
from tests.test_train import FAST


def test_train_without_val_shards_samples_the_first_training_batch(tmp_path, synth_shard, caplog):
    fast = [o for o in FAST if not o.startswith(("trainer.val_check_interval", "trainer.limit_val_batches"))]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=synthetic_tiny_image", f"data.train_shards={synth_shard}", "data.val_shards=null",
                       "+callbacks.sample_video.at_start=true", *fast],
            return_hydra_config=True,
        )  # fmt: skip
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            cfg.paths.log_dir = str(tmp_path)
            cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig().set_config(cfg)
        with caplog.at_level(logging.INFO, logger="fgbg.callbacks.sample_video"):
            metrics = train(cfg)
    assert "train/loss" in metrics and "val/loss" not in metrics
    sheets = sorted(p.name for p in (tmp_path / "samples").glob("*_sheet.png"))
    assert sheets == ["step000000_sheet.png", "step000002_sheet.png"], sheets  # at start and at the end of fit
    notices = [r.getMessage() for r in caplog.records if "first training batch" in r.getMessage()]
    assert len(notices) == 1 and "data.val_shards" in notices[0], notices
