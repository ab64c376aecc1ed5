"""data=shards on fgbg-preprocess output (issue 15, point 2): ``split_val`` holds out whole videos, and
fgbg-train runs from ``data=shards data.train_shards=<manifest>``, validating on the held-out videos."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fgbg.data.shards import expand_shards, iter_clips
from tests.test_preprocess_videos import carphone_frames, run, segments  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def split_output(segments, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("real")
    run(segments, out, "split_val=0.3", "clips.resolution=[64,64]")
    return out


def test_split_val_holds_out_whole_videos(split_output, segments):  # noqa: F811
    manifest = json.loads((split_output / "manifest.json").read_text())
    done = sorted(v for v, e in manifest["videos"].items() if e["status"] == "done")
    assert len(done) == 3, manifest["videos"]
    held_out = manifest["split"]["val"]
    assert manifest["split"]["by"] == "video" and 1 <= len(held_out) <= 2
    videos = {}
    for side in ("train", "val"):
        clips = list(iter_clips(expand_shards(str(split_output / "manifest.json"), split=side)))
        assert clips, side
        videos[side] = {c.meta["video_id"] for c in clips}
        assert all(c.key.startswith(c.meta["video_id"] + "_") for c in clips)
    assert videos["val"] == set(held_out) and videos["train"] == set(done) - set(held_out)
    # a rerun without split_val (nothing left to do) keeps the split; split_val=0 removes it
    assert run(segments, split_output, "clips.resolution=[64,64]")["split"]["val"] == held_out
    with pytest.raises(ValueError, match=r"split_val=1.5: expected null or a fraction of videos in \[0, 1\)"):
        run(segments, split_output, "clips.resolution=[64,64]", "split_val=1.5")


def test_fgbg_train_runs_from_data_shards_and_a_manifest(split_output, tmp_path):
    cmd = [
        str(Path(sys.executable).parent / "fgbg-train"),
        "experiment=synthetic_tiny_image",
        "debug=default",
        "logger=csv",
        "data=shards",
        f"data.train_shards={split_output / 'manifest.json'}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=2` reached" in log
    loss = re.search(r"'val/loss': ([0-9.eE+-]+)", log)  # validated on the held-out video(s)
    assert loss and 0.0 < float(loss.group(1)) < 10.0, log[-2000:]
