"""ClipDataModule: contract batches, epoch length, reproducibility, exactly-once validation, bad shards."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import webdataset as wds
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fgbg.data.schema import NUM_KEYPOINTS, Clip, encode_clip
from fgbg.datamodules import ClipDataModule, ExampleBuilder
from tests.conftest import random_clip

CONF = Path(__file__).resolve().parents[1] / "conf" / "data" / "synthetic.yaml"
CLIP = dict(t=8, h=32, w=32, n=60)  # stored clips: 8 frames, 60 tracks


def make_dm(train=None, val=None, **kw) -> ClipDataModule:
    args = dict(resolution=32, clip_len=4, batch_size=2, num_workers=0, epoch_len=8, shuffle_buffer=8, seed=0)
    args.update(kw)
    return ClipDataModule(train_shards=train, val_shards=val, **args)


def all_keys(num_shards: int, per_shard: int) -> list[str]:
    return sorted(f"vid{s}_{i:04d}" for s in range(num_shards) for i in range(per_shard))


def check_contract(batch: dict, b: int, t: int, res: int, min_tracks: int, max_tracks: int) -> None:
    image = {"frames": (b, t, 3, res, res), "reference": (b, 3, res, res), "link_frame": (b, 3, res, res)}
    unit = {"pose_maps": (b, t, 3, res, res), "body_region": (b, t, 1, res, res)}
    binary = {"masks": (b, t, 1, res, res), "reference_mask": (b, 1, res, res)}
    for group, (lo, hi) in ((image, (-1, 1)), (unit, (0, 1)), (binary, (0, 1))):
        for name, shape in group.items():
            x = batch[name]
            assert x.shape == shape and x.dtype == torch.float32, name
            assert lo <= x.min() and x.max() <= hi, name
    for name in binary:
        assert set(torch.unique(batch[name]).tolist()) <= {0.0, 1.0}
    assert batch["keypoints"].shape == (b, t, NUM_KEYPOINTS, 3)
    assert batch["reference_keypoints"].shape == (b, NUM_KEYPOINTS, 3)
    assert batch["tracks"].shape == (b, t, max_tracks, 2) and batch["tracks"].dtype == torch.float32
    assert batch["track_anchor"].shape == (b, max_tracks, 2)
    assert batch["track_maps"].shape == (b, t, 3, res, res) and torch.isfinite(batch["track_maps"]).all()
    for name, shape in (
        ("track_visible", (b, t, max_tracks)),
        ("track_valid", (b, max_tracks)),
        ("track_anchor_visible", (b, max_tracks)),
        ("link_available", (b,)),
    ):
        assert batch[name].shape == shape and batch[name].dtype == torch.bool, name
    valid = batch["track_valid"]
    n_valid = valid.sum(1)
    assert ((n_valid >= min_tracks) & (n_valid <= max_tracks)).all(), n_valid
    assert (valid == (torch.arange(max_tracks) < n_valid[:, None])).all(), "valid tracks come first"
    assert not (batch["track_visible"] & ~valid[:, None]).any() and not (batch["track_anchor_visible"] & ~valid).any()
    # The link frame is zeros exactly when not available.
    no_link = ~batch["link_available"]
    assert (batch["link_frame"][no_link] == 0).all()
    assert isinstance(batch["key"], list) and len(batch["key"]) == b


def test_train_and_val_batches_follow_the_contract(random_shards):
    paths = random_shards(3, 3, **CLIP)
    dm = make_dm(paths, paths, min_tracks=5, max_tracks=50, batch_size=3, epoch_len=9)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 3
    counts = []
    for batch in train:
        check_contract(batch, 3, 4, 32, 5, 50)
        counts += batch["track_valid"].sum(1).tolist()
    assert len(set(counts)) > 1, "the number of tracks should vary between samples"
    val = list(dm.val_dataloader())
    for batch in val:
        check_contract(batch, 3, 4, 32, 5, 50)
    assert sorted(k for b in val for k in b["key"]) == all_keys(3, 3)


def test_reference_modes_and_link_frame_come_from_the_right_frames():
    """Frame t of the stored clip is filled with value 10 * t, so every image names its source frame."""
    clip = random_clip(t=8, h=32, w=32, n=20)
    clip.frames[:] = (np.arange(8) * 10)[:, None, None, None].astype(np.uint8)
    rng = np.random.default_rng(0)

    def frame_index(img: np.ndarray) -> int:  # (3, H, W) in [-1, 1] -> stored frame index
        values = np.unique(np.round((img + 1) * 127.5))
        assert len(values) == 1
        return int(values[0]) // 10

    for mode in ("random", "first", "window_first"):
        builder = ExampleBuilder(resolution=32, clip_len=4, reference=mode, min_tracks=5, max_tracks=20)
        refs = set()
        for _ in range(20):
            out = builder(clip, rng, augment=False)
            window = [frame_index(f) for f in out["frames"]]
            assert window == list(range(window[0], window[0] + 4))
            assert bool(out["link_available"]) == (window[0] > 0)
            if window[0] > 0:
                assert frame_index(out["link_frame"]) == window[0] - 1
            ref = frame_index(out["reference"])
            refs.add(ref)
            if mode == "first":
                assert ref == 0
            if mode == "window_first":
                assert ref == window[0]
        if mode == "random":
            assert len(refs) > 4  # any stored frame, not only those in the window


def test_train_epoch_has_the_configured_length_with_workers(random_shards):
    paths = random_shards(2, 3, **CLIP)
    dm = make_dm(paths, num_workers=2, batch_size=4, epoch_len=20)  # 5 batches: 3 + 2 over the workers
    loader = dm.train_dataloader()
    assert len(loader) == dm.batches_per_rank == 5
    assert loader.persistent_workers and not loader.pin_memory
    epochs = [[b["frames"] for b in loader] for _ in range(2)]
    assert [len(e) for e in epochs] == [5, 5]
    assert all(f.shape[0] == 4 for e in epochs for f in e)
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1])), "epochs should draw new samples"
    # Two ranks share the epoch: each sees half of it.
    assert make_dm(paths, batch_size=4, epoch_len=20, rank=1, world_size=2).batches_per_rank == 3


def test_same_seed_gives_the_same_first_batch(random_shards):
    paths = random_shards(3, 3, **CLIP)

    def first_batch(seed: int, rank: int = 0) -> dict:
        return next(iter(make_dm(paths, seed=seed, rank=rank, world_size=2).train_dataloader()))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert a["key"] == b["key"]
    for name, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[name]), name
    assert not torch.equal(a["frames"], c["frames"])
    assert not torch.equal(a["frames"], first_batch(0, rank=1)["frames"]), "ranks must draw different streams"


@pytest.mark.parametrize("num_shards,per_shard", [(6, 2), (2, 5)], ids=["split-by-shard", "split-by-sample"])
def test_validation_reads_every_sample_exactly_once_over_2_ranks_x_2_workers(random_shards, num_shards, per_shard):
    paths = random_shards(num_shards, per_shard, **CLIP)
    keys, steps = [], []
    for rank in range(2):
        dm = make_dm(val=paths, num_workers=2, rank=rank, world_size=2)
        batches = list(dm.val_dataloader())
        steps.append(len(batches))
        keys += [k for batch in batches if not batch.get("val_pad") for k in batch["key"]]
    assert sorted(keys) == all_keys(num_shards, per_shard)  # all of them, none twice
    assert steps[0] == steps[1], "ranks run the same number of validation steps (padding batches: val_pad)"


def test_validation_is_deterministic(random_shards):
    paths = random_shards(2, 2, **CLIP)
    a = list(make_dm(val=paths, seed=3).val_dataloader())
    b = list(make_dm(val=paths, seed=3, num_workers=2).val_dataloader())
    by_key = {k: i for i, k in enumerate(k for batch in b for k in batch["key"])}
    frames_b = torch.cat([batch["frames"] for batch in b])
    for batch in a:
        for i, key in enumerate(batch["key"]):
            assert torch.equal(batch["frames"][i], frames_b[by_key[key]])


def truncated_copy(path: str, out: Path) -> str:
    """Copy a shard, cut in the middle of its second sample's first member."""
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    second = next(m for m in members if not m.name.startswith(members[0].name.split(".")[0] + "."))
    data = Path(path).read_bytes()
    out.write_bytes(data[: second.offset_data + second.size // 2])
    return str(out)


def shard_with_missing_key(out: Path, clip: Clip) -> str:
    entries = encode_clip(clip)
    del entries["pose.npy"]
    with wds.TarWriter(str(out)) as sink:
        sink.write(entries)
    return str(out)


def test_bad_shards_are_skipped_named_and_counted(random_shards, tmp_path, caplog):
    good = random_shards(3, 3, **CLIP)
    truncated = truncated_copy(good[2], tmp_path / "cut.tar")
    missing = shard_with_missing_key(tmp_path / "nopose.tar", random_clip(key="broken", **CLIP))
    shards = [good[0], truncated, missing, good[1]]

    dm = make_dm(val=shards, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="fgbg"):
        keys = [k for batch in dm.val_dataloader() for k in batch["key"]]
    assert sorted(keys) == sorted(all_keys(2, 3) + ["vid2_0000"])  # the cut shard's first sample survives
    assert dm.skip_counter.as_dict() == {"corrupt_shard": 1, "bad_sample": 1}
    assert dm.skip_counter.total == 2
    text = caplog.text
    assert "cut.tar" in text and "nopose.tar" in text and "'broken'" in text and "pose.npy" in text

    # Counts made in worker processes reach the main process.
    dm = make_dm(val=shards, num_workers=2)
    assert len([k for batch in dm.val_dataloader() for k in batch["key"]]) == 7
    assert dm.skip_counter.total == 2

    # Training streams step over them too.
    dm = make_dm(shards, epoch_len=16)
    assert len(list(dm.train_dataloader())) == 8
    assert dm.skip_counter.total > 0


def test_training_on_only_bad_shards_fails_instead_of_spinning(tmp_path, random_shards):
    bad = shard_with_missing_key(tmp_path / "nopose.tar", random_clip(key="broken", **CLIP))
    with pytest.raises(RuntimeError, match="gave no readable sample"):
        next(iter(make_dm([bad]).train_dataloader()))


def test_configuration_errors_are_clear(random_shards, tmp_path):
    paths = random_shards(1, 2, **CLIP)
    with pytest.raises(FileNotFoundError, match=r"1 of 2 shards .* do not exist"):
        make_dm([paths[0], str(tmp_path / "nope.tar")]).train_dataloader()
    with pytest.raises(ValueError, match="fewer than data.clip_len=16"):
        next(iter(make_dm(paths, clip_len=16).train_dataloader()))
    assert make_dm(paths, batch_size=None, global_batch_size=8, rank=1, world_size=2).batch_size == 4
    with pytest.raises(ValueError, match="not divisible by world size 2"):
        make_dm(paths, batch_size=None, global_batch_size=7, rank=0, world_size=2).setup("fit")
    with pytest.raises(ValueError, match="data.reference must be one of"):
        make_dm(paths, reference="last")
    with pytest.raises(ValueError, match="train_shards is not set"):
        make_dm(None).setup("fit")


def test_hydra_config_builds_the_datamodule(random_shards):
    paths = random_shards(2, 2, **CLIP)
    cfg = OmegaConf.load(CONF)
    cfg.merge_with(
        {"train_shards": paths, "val_shards": f"{Path(paths[0]).parent}/shard-{{000000..000001}}-0.tar"}
        | {"num_workers": 0, "epoch_len": 4, "batch_size": 2}
    )
    dm = instantiate(cfg)
    assert isinstance(dm, ClipDataModule) and dm.builder.clip_len == 8 and dm.builder.max_tracks == 50
    check_contract(next(iter(dm.train_dataloader())), 2, 8, 32, 5, 50)
    assert sorted(k for b in dm.val_dataloader() for k in b["key"]) == all_keys(2, 2)


class _Probe(pl.LightningModule):
    """Consumes contract batches; records what it saw."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.val_keys: list[str] = []

    def training_step(self, batch, _):
        return (self.w - batch["frames"].mean()) ** 2

    def validation_step(self, batch, _):
        self.val_keys += batch["key"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_runs_an_epoch_and_a_validation_pass(random_shards, tmp_path):
    paths = random_shards(2, 3, **CLIP)
    dm = make_dm(paths, paths, epoch_len=6)
    probe = _Probe()
    trainer = pl.Trainer(
        max_epochs=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(probe, datamodule=dm)
    assert trainer.global_step == 3
    assert sorted(probe.val_keys) == all_keys(2, 3)
