"""fgbg-evaluate end to end with a tiny random model bundle on synthetic held-out shards."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fgbg.evaluate import evaluate
from fgbg.synth.app import synthesize
from fgbg.train import CONF_DIR
from tests.conftest import save_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    save_tiny_bundle(d / "model.safetensors", resolution=16, clip_len=4)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        scfg = compose("synth", overrides=[f"output={d / 'shards'}", "num_videos=2", "height=32", "width=32",
                                           "num_frames=9", "seed=3", "split=test"])  # fmt: skip
    shards = synthesize(scfg)
    return d, shards


def test_cli_writes_metrics_for_every_sample(setup, tmp_path):
    d, shards = setup
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "fgbg.evaluate", f"ckpt_path={d / 'model.safetensors'}", f"data.val_shards={shards[0]}",
           "steps=2", "clip_len=4", f"output_dir={out}"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["samples"] == 2 and len(report["per_sample"]) == 2
    mean = report["mean"]
    for key in ("psnr", "psnr_person", "psnr_background", "ssim", "l1", "track_error_px", "seam_score",
                "colour_drift_background_last"):  # fmt: skip
        assert key in mean and not math.isnan(mean[key]), key
    assert report["per_sample"][0]["frames"] == 9 and (out / "sheet.png").stat().st_size > 0
    output = proc.stdout + proc.stderr  # not a terminal: one plain progress line per sample, no bar
    assert "sample 1/2 (50.0%)" in output and "sample 2/2 (100.0%)" in output and "\r" not in output, output[-3000:]
    assert output.count("GPU available:") == 1, "one Lightning Trainer for all samples"


def test_existing_metrics_are_not_overwritten_and_missing_shards_are_named(setup, tmp_path):
    d, shards = setup
    (tmp_path / "metrics.json").write_text("{}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt_path={d / 'model.safetensors'}", f"data.val_shards={shards[0]}",
                                             f"output_dir={tmp_path}"])  # fmt: skip
        with pytest.raises(FileExistsError, match="overwrite=true"):
            evaluate(cfg)
        cfg = compose("evaluate", overrides=[f"ckpt_path={d / 'model.safetensors'}",
                                             f"data.val_shards={tmp_path / 'nope-000000.tar'}", f"output_dir={tmp_path / 'x'}"])  # fmt: skip
        with pytest.raises(FileNotFoundError, match="nope-000000.tar"):
            evaluate(cfg)


from .test_metrics_features import i3d_file, inception_file  # noqa: E402,F401 - fixtures (random nets saved locally)


def test_fid_and_fvd_from_local_weights(setup, tmp_path, inception_file, i3d_file):  # noqa: F811
    d, shards = setup
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            f"ckpt_path={d / 'model.safetensors'}", f"data.val_shards={shards[0]}", "steps=1", "clip_len=4",
            f"output_dir={tmp_path}", f"fid_weights={inception_file}", "fid_image_size=75",
            f"fvd_weights={i3d_file}", "fvd_clip_frames=4",
        ])  # fmt: skip
    report = evaluate(cfg)
    # a random tiny model against the truth: finite and clearly above 0
    assert math.isfinite(report["fid"]) and report["fid"] > 0
    assert math.isfinite(report["fvd"]) and report["fvd"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["fid"] == pytest.approx(report["fid"])
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            f"ckpt_path={d / 'model.safetensors'}", f"data.val_shards={shards[0]}", "steps=1", "clip_len=4",
            f"output_dir={tmp_path / 'missing'}", f"fid_weights={tmp_path / 'nope.pth'}",
        ])  # fmt: skip
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        evaluate(cfg)
    assert not (tmp_path / "missing" / "metrics.json").exists()


def test_rescore_scores_saved_frames_again_without_generating(setup, tmp_path):
    from fgbg.evaluate import rescore

    d, shards = setup
    out = tmp_path / "eval"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt_path={d / 'model.safetensors'}", f"data.val_shards={shards[0]}",
                                             "steps=2", "clip_len=4", f"output_dir={out}", "save_frames=true"])  # fmt: skip
        first = evaluate(cfg)
        # what an older evaluation wrote: without today's per-clip track error and seen-background colour error
        old = json.loads((out / "metrics.json").read_text())
        for m in old["per_sample"]:
            for key in ("track_error_clip_px", "colour_error_seen_background_last"):
                m.pop(key)
        (out / "metrics.json").write_text(json.dumps(old))
        # no ckpt_path: nothing is generated
        again = rescore(compose("evaluate", overrides=[f"data.val_shards={shards[0]}", f"output_dir={out}",
                                                       "rescore=true"]))  # fmt: skip
    assert again["rescored"]["from"].startswith("frames")
    assert [m["key"] for m in again["per_sample"]] == [m["key"] for m in first["per_sample"]]
    for key in ("psnr", "psnr_background", "seam_score", "track_error_px", "colour_error_background_last"):
        assert again["mean"][key] == pytest.approx(first["mean"][key], rel=0.02, abs=0.05), key  # uint8 frames
    for key in ("track_error_clip_px", "colour_error_seen_background_last", "track_trusted_fraction"):
        assert key in again["per_sample"][0], key
    assert json.loads((out / "metrics.json").read_text())["rescored"]
    # frames missing: named, and metrics.json untouched
    next((out / "frames").iterdir()).unlink()
    before = (out / "metrics.json").read_text()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        with pytest.raises(FileNotFoundError, match="save_frames=true"):
            rescore(compose("evaluate", overrides=[f"data.val_shards={shards[0]}", f"output_dir={out}"]))
    assert (out / "metrics.json").read_text() == before
