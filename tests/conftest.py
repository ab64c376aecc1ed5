"""Shared test fixtures: offline wandb, tiny random clips and shards in temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np
import pytest

from fgbg.data.schema import NUM_KEYPOINTS, Clip
from fgbg.data.shards import ClipShardWriter

REPO = Path(__file__).resolve().parents[1]


def train_config(run_dir: Path, overrides: list[str]):
    """``fgbg-train``'s config for ``overrides`` with its run folder at ``run_dir`` and Hydra's runtime set, as the
    CLI would (for calling ``fgbg.train.train`` in this process)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from fgbg.utils.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig().set_config(cfg)
    return cfg


def run_synth(out: Path, num_videos: int = 4, videos_per_shard: int | None = None, num_frames: int = 8,
              seed: int = 0) -> Path:  # fmt: skip
    """Write ``num_videos`` clips of ``num_frames`` frames into ``out`` with the real ``fgbg-synth`` (a subprocess)."""
    cmd = [sys.executable, "-m", "fgbg.synth", f"output={out}", f"num_videos={num_videos}",
           f"num_frames={num_frames}", f"seed={seed}"]  # fmt: skip
    if videos_per_shard is not None:
        cmd.append(f"videos_per_shard={videos_per_shard}")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, f"fgbg-synth failed:\n{done.stderr[-3000:]}"
    return out


def save_tiny_bundle(
    path: Path, resolution: int = 16, clip_len: int = 4, max_tracks: int = 12, seed: int = 0, extra: dict | None = None
) -> Path:
    """Save a seeded tiny random model (``tests.test_model.small_model_cfg``) as a self-describing bundle at ``path``
    (``extra``: its metadata's extra, e.g. ``{"generation": {"hint_anchor": 1.0}}``)."""
    import torch
    from hydra.utils import instantiate

    from fgbg.models.bundle import save_bundle
    from tests.test_model import small_model_cfg

    torch.manual_seed(seed)
    model_cfg = small_model_cfg()
    data = {"resolution": resolution, "clip_len": clip_len, "max_tracks": max_tracks}
    save_bundle(instantiate(model_cfg), path, model_cfg, data, extra=extra)
    return path


def record_path(tracked: Path, scratch: Path) -> Path:
    """Where a test writes a result that the repository keeps (a screenshot, a fuzzing tally): the tracked file
    only when ``FGBG_RECORD=1`` (``make test-browser`` sets it; ``FGBG_RECORD=1 make test-full`` records every
    one), else a scratch copy, so that an ordinary test run leaves the working tree as it found it."""
    return tracked if os.environ.get("FGBG_RECORD") == "1" else scratch / tracked.name


@pytest.fixture(scope="session")
def synth_shard(tmp_path_factory) -> str:
    """One shard of 4 small 8-frame clips written by the real fgbg-synth (shared by the training tests)."""
    shards = sorted(run_synth(tmp_path_factory.mktemp("synth")).glob("train-*.tar"))
    assert shards, "fgbg-synth wrote no train-*.tar"
    return str(shards[0])


def random_clip(key: str = "vid0_0000", t: int = 8, h: int = 32, w: int = 32, n: int = 12, seed: int = 0) -> Clip:
    """A schema-valid clip of random content (not a meaningful world)."""
    rng = np.random.default_rng(seed)
    pose = np.concatenate(
        [rng.uniform(0, [w, h], (t, NUM_KEYPOINTS, 2)), rng.uniform(0.5, 1.0, (t, NUM_KEYPOINTS, 1))], -1
    ).astype(np.float32)
    return Clip(
        frames=rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
        masks=rng.random((t, h, w)) > 0.7,
        pose=pose,
        tracks=rng.uniform(0, [w, h], (t, n, 2)).astype(np.float32),
        visible=rng.random((t, n)) > 0.2,
        meta={"fps": 8, "source": "random", "pose_estimator": "random", "tracker": "random"},
        key=key,
    )


@pytest.fixture
def make_clip():
    return random_clip


@pytest.fixture
def random_shards(tmp_path):
    """Write ``num_shards`` shards of ``per_shard`` random clips; returns the list of paths."""

    def _make(num_shards: int = 4, per_shard: int = 3, **clip_kwargs) -> list[str]:
        paths = []
        for s in range(num_shards):
            with ClipShardWriter(str(tmp_path / f"shard-{s:06d}-%d.tar"), max_count=per_shard) as w:
                for i in range(per_shard):
                    w.write(random_clip(key=f"vid{s}_{i:04d}", seed=s * 1000 + i, **clip_kwargs))
            paths += w.written
        return paths

    return _make
