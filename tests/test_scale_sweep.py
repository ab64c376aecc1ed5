"""Hydra multirun: 2 jobs, 2 run folders, 2 wandb offline runs (one group, names by their override values) each
with a sample video at the trainer's step, the sweep metric returned."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fgbg.train import sweep_metric
from tests.wandb_records import history_rows, offline_run_file, read_records, run_record

REPO = Path(__file__).resolve().parents[1]


def test_sweep_metric_is_the_named_metric_or_a_clear_error():
    assert sweep_metric({"val/loss": 0.5, "train/loss": 0.7}, "val/loss", required=True) == 0.5
    assert sweep_metric({"train/loss": 0.7}, None, required=True) is None
    assert sweep_metric({"train/loss": 0.7}, "val/loss", required=False) is None
    with pytest.raises(KeyError, match=r"val/loss.*train/loss"):
        sweep_metric({"train/loss": 0.7}, "val/loss", required=True)


def test_two_job_multirun_gives_two_runs_with_wandb_sample_videos(tmp_path):
    synth = tmp_path / "synth"
    subprocess.run([sys.executable, "-m", "fgbg.synth", f"output={synth}", "num_videos=4", "num_frames=8", "seed=0"],
                   check=True, capture_output=True, cwd=REPO)  # fmt: skip
    shard = sorted(synth.glob("train-*.tar"))[0]
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fgbg.train", "-m", "experiment=synthetic_tiny_image", "debug=default",
         "model.optimizer.lr=1e-4,2e-4", "logger=csv_wandb", f"paths.log_dir={tmp_path / 'logs'}",
         f"data.train_shards={shard}", f"data.val_shards={shard}", "data.resolution=32",
         "callbacks.sample_video.num_inference_steps=2", "callbacks.sample_video.at_end=true",
         "extras.print_config=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sweep,) = (tmp_path / "logs" / "debug" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    lrs, names, groups = [], [], set()
    for job in jobs:
        (wandb_run,) = (job / "wandb").glob("offline-run-*")
        videos = list((wandb_run / "files" / "media" / "videos").rglob("*.mp4"))
        assert videos and videos[0].stat().st_size > 0, f"{wandb_run}: no sample video logged"
        records = read_records(offline_run_file(job / "wandb"))
        run = run_record(records)
        names.append(run.display_name)
        groups.add(run.run_group)
        assert run.job_type == "train-image"
        video_steps = [r["trainer/global_step"] for r in history_rows(records) if "samples/video" in r]
        assert video_steps == [2], video_steps  # the end-of-fit sample, at the trainer's step
        rows = list(csv.DictReader(open(job / "csv" / "metrics.csv")))
        assert any(r.get("val/loss") for r in rows)
        lrs += [float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")][:1]
        log_text = (job / "debug.log").read_text()
        assert "sweep metric val/loss = " in log_text, log_text[-2000:]
    assert len(set(lrs)) == 2, f"both jobs ran with the same learning rate: {lrs}"
    assert names == ["0:model.optimizer.lr=0.0001", "1:model.optimizer.lr=0.0002"], names  # trials by swept values
    assert groups == {f"debug/{sweep.name}"}, groups  # one group for the sweep
