"""ClipShardWriter: a crash mid-shard keeps the finished shards and leaves no partial one."""

from __future__ import annotations

import pytest

from fgbg.data.shards import ClipShardWriter, iter_clips


def test_crash_mid_shard_keeps_finished_shards_and_leaves_no_partial_file(tmp_path, make_clip):
    with pytest.raises(RuntimeError, match="killed"):
        with ClipShardWriter(str(tmp_path / "train-%06d.tar"), max_count=2) as writer:
            for i in range(3):
                writer.write(make_clip(key=f"vid{i}_0000", seed=i))
            raise RuntimeError("killed while writing shard 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]
    assert len(list(iter_clips([str(tmp_path / "train-000000.tar")]))) == 2
