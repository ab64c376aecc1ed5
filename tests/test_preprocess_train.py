"""The shards of fgbg-preprocess train: fgbg-train runs a few steps of the tiny synthetic experiment on them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_preprocess_videos import SEGMENT, carphone_frames, run, write_mp4  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def train_two_debug_steps(*overrides: str, metric: str = "train/loss") -> None:
    """``fgbg-train experiment=synthetic_tiny_image debug=default logger=csv *overrides`` (a subprocess): it
    stops at max_steps=2 and prints a finite ``metric`` in (0, 10)."""
    cmd = [str(Path(sys.executable).parent / "fgbg-train"), "experiment=synthetic_tiny_image", "debug=default",
           "logger=csv", *overrides]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=2` reached" in log
    loss = re.search(rf"'{metric}': ([0-9.eE+-]+)", log)
    assert loss and 0.0 < float(loss.group(1)) < 10.0, log[-2000:]


def test_fgbg_train_runs_on_preprocessed_shards(tmp_path, carphone_frames):  # noqa: F811
    pytest.importorskip("fgbg.train")
    video = write_mp4(tmp_path / "carphone.mp4", carphone_frames[:SEGMENT])
    (entry,) = run(video, tmp_path / "shards")["videos"].values()
    assert entry["status"] == "done" and entry["clips"] == 2
    shards = ",".join(str(tmp_path / "shards" / s) for s in entry["shards"])
    train_two_debug_steps(
        f"data.train_shards=[{shards}]", f"data.val_shards=[{shards}]", f"paths.output_dir={tmp_path / 'run'}"
    )
