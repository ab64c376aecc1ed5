"""data=shards on fgbg-preprocess output (issue 15, point 2): ``split_val`` holds out whole videos, and
fgbg-train runs from ``data=shards data.train_shards=<manifest>``, validating on the held-out videos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fgbg.data.shards import expand_shards, iter_clips
from tests.test_preprocess_train import train_two_debug_steps
from tests.test_preprocess_videos import carphone_frames, run, segments  # noqa: F401  (fixtures)


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
    # validates on the held-out video(s): val/loss is logged
    train_two_debug_steps("data=shards", f"data.train_shards={split_output / 'manifest.json'}",
                          f"paths.output_dir={tmp_path / 'run'}", metric="val/loss")  # fmt: skip
