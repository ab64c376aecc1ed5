"""resume=auto: a run SIGKILLed after a checkpoint and rerun ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fgbg.train import find_resume_checkpoint

REPO = Path(__file__).resolve().parents[1]
# 8 steps, 2 steps per epoch, a .ckpt every 2 steps: every checkpoint falls on an epoch boundary.
RUN = [
    "experiment=synthetic_tiny_image",
    "trainer.max_steps=8",
    "trainer.val_check_interval=null",
    "trainer.limit_val_batches=0",
    "trainer.log_every_n_steps=1",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.epoch_len=4",
    "data.resolution=32",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.stage_weights.every_n_train_steps=100",
    "callbacks.sample_video.every_n_steps=0",
    "callbacks.sample_video.num_samples=1",
    "callbacks.sample_video.num_inference_steps=2",
    "extras.print_config=false",
    "logger=csv",
]


def _cmd(log_dir: Path, shards: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fgbg.train", f"paths.log_dir={log_dir}", f"data.train_shards={shards}", *RUN, *extra]


ENV = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1")


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_find_resume_checkpoint_prefers_last_then_highest_step(tmp_path):
    assert find_resume_checkpoint(str(tmp_path / "missing")) is None
    for name in ("step000002.ckpt", "step000010.ckpt", "step000004.ckpt", "other.ckpt"):
        (tmp_path / name).touch()
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / "step000010.ckpt")
    (tmp_path / "last.ckpt").touch()
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / "last.ckpt")


@pytest.mark.slow
def test_sigkill_then_resume_auto_matches_uninterrupted_run(tmp_path, synth_shard):
    shards = synth_shard
    _run(_cmd(tmp_path / "straight", shards, "run_name=straight"))
    straight = tmp_path / "straight" / "synthetic_tiny_image" / "runs" / "straight" / "checkpoints"

    run_dir = tmp_path / "killed" / "synthetic_tiny_image" / "runs" / "r1"
    proc = subprocess.Popen(_cmd(tmp_path / "killed", shards, "run_name=r1"), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    first_ckpt = run_dir / "checkpoints" / "step000002.ckpt"
    deadline = time.monotonic() + 300
    while not first_ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert first_ckpt.exists(), "the run never wrote its first checkpoint"
    assert not (run_dir / "checkpoints" / "image.safetensors").exists(), "killed too late: the run had finished"
    resumed_from = find_resume_checkpoint(str(run_dir / "checkpoints"))

    _run(_cmd(tmp_path / "killed", shards, "run_name=r1", "resume=auto"))
    log_text = (run_dir / "synthetic_tiny_image.log").read_text()
    assert "resuming from" in log_text, log_text[-2000:]
    for name in ("image.safetensors", "image_ema.safetensors"):
        a, b = load_file(straight / name), load_file(run_dir / "checkpoints" / name)
        assert a.keys() == b.keys()
        worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
        assert worst <= 1e-6, f"{name}: resumed from {resumed_from}, max |diff| = {worst:.3g}"


def test_resume_state_stores_wandb_id_and_restores_rng(tmp_path):
    import random
    from types import SimpleNamespace

    import numpy as np
    import torch
    from lightning.pytorch.loggers import WandbLogger

    from fgbg.callbacks.resume_state import ResumeState, read_resume_record

    trainer = SimpleNamespace(loggers=[WandbLogger(id="run42abc", offline=True, save_dir=str(tmp_path))])
    ckpt: dict = {"state_dict": {}}
    ResumeState().on_save_checkpoint(trainer, None, ckpt)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(ckpt, tmp_path / "x.ckpt")
    record = read_resume_record(str(tmp_path / "x.ckpt"))
    assert record["wandb_run_id"] == "run42abc"
    ResumeState().on_load_checkpoint(trainer, None, {"fgbg_resume": record})
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
