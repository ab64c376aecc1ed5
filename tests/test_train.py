"""fgbg-train: config composition, an in-process step, and the real CLI chaining stage image -> video."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from fgbg.train import CONF_DIR, train
from tests.conftest import train_config

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.epoch_len=4",
    "data.resolution=32",
    "callbacks.sample_video.every_n_steps=0",
    "callbacks.sample_video.num_inference_steps=2",
    "callbacks.sample_video.num_samples=1",
    "extras.print_config=false",
]


def test_every_experiment_composes():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for exp in ("synthetic_tiny_image", "synthetic_tiny_video"):
            cfg = compose("train", overrides=[f"experiment={exp}", "model.init_from=x.safetensors"])
            assert cfg.model._target_ == "fgbg.models.module.FgbgModule"
            assert cfg.model.stage == exp.rsplit("_", 1)[1]
            assert list(cfg.logger) == ["csv"]
        sd = compose("train", overrides=["model=fgbg_sd15", "model.unet.pretrained=/sd15"])
        assert sd.model.unet.config.block_out_channels == [320, 640, 1280, 1280]
        assert sd.model.latent.pretrained == "/sd15" and sd.model.noise_scheduler.prediction_type == "epsilon"


def test_train_in_process_writes_logs_and_stage_weights(tmp_path, synth_shard):
    cfg = train_config(tmp_path, ["experiment=synthetic_tiny_image", f"data.train_shards={synth_shard}",
                                  f"data.val_shards={synth_shard}", *FAST])  # fmt: skip
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/loss" in metrics
    assert (tmp_path / "checkpoints" / "image.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "image_ema.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "samples").glob("*_sheet.png"))


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fgbg.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _single_run(root: Path) -> Path:
    runs = [p for p in root.rglob("runs/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_cli_image_then_video_from_its_weights(tmp_path, synth_shard):
    data = [f"data.train_shards={synth_shard}", f"data.val_shards={synth_shard}", *FAST]
    _run_cli(["experiment=synthetic_tiny_image", f"paths.log_dir={tmp_path / 'img'}", "logger=csv_wandb", *data], REPO)
    img_run = _single_run(tmp_path / "img")
    rows = list(csv.DictReader(open(img_run / "csv" / "metrics.csv")))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/loss") for r in rows)
    assert list((img_run / "wandb").glob("offline-run-*"))
    weights = img_run / "checkpoints" / "image_ema.safetensors"
    assert weights.is_file()

    _run_cli(
        ["experiment=synthetic_tiny_video", f"model.init_from={weights}", f"paths.log_dir={tmp_path / 'vid'}",
         "data.clip_len=4", *data],
        REPO,
    )  # fmt: skip
    vid_run = _single_run(tmp_path / "vid")
    assert (vid_run / "checkpoints" / "video.safetensors").is_file()
    assert (vid_run / "checkpoints" / "video_ema.safetensors").is_file()


def test_bad_init_from_is_a_clear_error(tmp_path, synth_shard):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=synthetic_tiny_video", f"model.init_from={tmp_path / 'missing.safetensors'}",
                       f"data.train_shards={synth_shard}", f"data.val_shards={synth_shard}", *FAST],
            return_hydra_config=True,
        )  # fmt: skip
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig().set_config(cfg)
        with pytest.raises(Exception, match="missing.safetensors"):
            train(cfg)
