"""Shared test fixtures: offline wandb, tiny random clips and shards in temporary folders."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np
import pytest

from fgbg.data.schema import NUM_KEYPOINTS, Clip
from fgbg.data.shards import ClipShardWriter


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
