"""Training without validation data (issue 15, point 3): it runs, and sample videos come from the first
training batch, with a one-line notice."""

from __future__ import annotations

import logging

from fgbg.train import train
from tests.conftest import train_config
from tests.test_train import FAST


def test_train_without_val_shards_samples_the_first_training_batch(tmp_path, synth_shard, caplog):
    fast = [o for o in FAST if not o.startswith(("trainer.val_check_interval", "trainer.limit_val_batches"))]
    cfg = train_config(tmp_path, ["experiment=synthetic_tiny_image", f"data.train_shards={synth_shard}",
                                  "data.val_shards=null", "+callbacks.sample_video.at_start=true", *fast])  # fmt: skip
    with caplog.at_level(logging.INFO, logger="fgbg.callbacks.sample_video"):
        metrics = train(cfg)
    assert "train/loss" in metrics and "val/loss" not in metrics
    sheets = sorted(p.name for p in (tmp_path / "samples").glob("*_sheet.png"))
    assert sheets == ["step000000_sheet.png", "step000002_sheet.png"], sheets  # at start and at the end of fit
    notices = [r.getMessage() for r in caplog.records if "first training batch" in r.getMessage()]
    assert len(notices) == 1 and "data.val_shards" in notices[0], notices
