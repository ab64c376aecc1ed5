"""WebDataset clips -> training batches of the batch contract (``fgbg.data.conditioning``).

Training: every (rank, worker) draws its own endless stream of shards with
``webdataset.ResampledShards``, seeded by ``(seed, rank, worker, epoch)``, so
streams differ across ranks and workers yet a run is reproducible; with at
least as many shards as ranks, each rank resamples only its own shards
(``urls[rank::world]``, or per worker slot when there are enough), so ranks
read disjoint samples; clips go
through a shuffle buffer, get a random temporal window, reference frame, crop,
flip and track subset, and are batched inside the worker. An epoch is a fixed
``epoch_len`` samples across all ranks.

Resume at any step: the stream of (rank, worker, epoch) is deterministic, so the position in the
training data is just (epoch, batches of it already trained on), which ``ClipDataModule`` reads
from Lightning's restored loop progress when it builds the training loader. The resumed epoch's
workers regenerate and drop the batches already trained on (exact, at most one epoch of data work)
and yield the rest, in the order of the uninterrupted run. The data layout (world size, workers,
batch size, seed, epoch length) is saved in every checkpoint; resuming with another layout warns
that the data stream no longer matches the interrupted run's.

Validation: the shard list is read once, without augmentation; every sample is
delivered exactly once across ranks and workers (shards split over the
``world_size * num_workers`` slots when there are enough of them, else samples
split by their index). Window, reference and tracks of a validation sample
depend only on ``seed`` and its key, not on how the data was split.

Bad data never stops a run: ``fgbg.data.shards.iter_clips`` skips truncated
shards and bad samples with a warning naming shard and key, and counts them in
``ClipDataModule.skip_counter`` (shared with the worker processes).
"""

from __future__ import annotations

import logging
import math
import os
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fgbg.data.conditioning import build_conditions, collate_conditions, select_tracks
from fgbg.data.schema import Clip
from fgbg.data.shards import SOURCE_KINDS, SkipCounter, count_tar_groups, expand_shards, iter_clips
from fgbg.data.transforms import augment_clip, fit_clip

log = logging.getLogger(__name__)

REFERENCE_MODES = ("random", "first", "window_first")


def _take_frames(clip: Clip, index: Sequence[int]) -> Clip:
    idx = np.asarray(index)
    return replace(
        clip,
        frames=clip.frames[idx],
        masks=clip.masks[idx],
        pose=clip.pose[idx],
        tracks=clip.tracks[idx],
        visible=clip.visible[idx],
    )


@dataclass
class ExampleBuilder:
    """Turns one stored clip into one sample of the batch contract (picklable, for workers).

    Picks a ``clip_len`` window, the reference frame (``reference`` mode), the
    link frame (the stored frame before the window), crops/resizes/flips the
    frames it needs, draws the track subset from the tracks visible in the
    (transformed) reference frame and calls ``build_conditions``.
    """

    resolution: int = 32
    clip_len: int = 8
    min_tracks: int = 5
    max_tracks: int = 50
    reference: str = "random"
    crop_scale: tuple[float, float] = (0.8, 1.0)
    flip_prob: float = 0.5
    pose_line_scale: float = 1.0
    pose_conf_threshold: float = 0.3
    track_sigma: float | None = None
    body_limb_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"data.reference must be one of {REFERENCE_MODES}, got {self.reference!r}")
        if self.clip_len < 1 or self.resolution < 8:
            raise ValueError(f"need clip_len >= 1 and resolution >= 8, got {self.clip_len} and {self.resolution}")
        if not 0 <= self.min_tracks <= self.max_tracks:
            raise ValueError(f"need 0 <= min_tracks <= max_tracks, got {self.min_tracks} and {self.max_tracks}")
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))

    def __call__(self, clip: Clip, rng: np.random.Generator, augment: bool) -> dict[str, Any]:
        t_stored, t = clip.num_frames, self.clip_len
        if t_stored < t:
            raise ValueError(
                f"sample {clip.key!r} of shard {clip.meta.get('__url__')} has {t_stored} frames, "
                f"fewer than data.clip_len={t}"
            )
        start = int(rng.integers(0, t_stored - t + 1))
        ref = {"random": lambda: int(rng.integers(0, t_stored)), "first": lambda: 0, "window_first": lambda: start}[
            self.reference
        ]()
        link = start - 1 if start > 0 else None
        index = [*range(start, start + t), ref] + ([link] if link is not None else [])
        sub = _take_frames(clip, index)
        res = self.resolution
        if augment:
            sub = augment_clip(sub, rng, res, res, self.crop_scale, self.flip_prob)
        else:
            sub = fit_clip(sub, res, res)
        chosen = select_tracks(rng, sub.visible[t], self.min_tracks, self.max_tracks)
        return build_conditions(
            height=res,
            width=res,
            frames=sub.frames[:t],
            masks=sub.masks[:t],
            keypoints=sub.pose[:t],
            tracks=sub.tracks[:t, chosen],
            track_visible=sub.visible[:t, chosen],
            reference_frame=sub.frames[t],
            reference_mask=sub.masks[t],
            reference_keypoints=sub.pose[t],
            track_anchor=sub.tracks[t, chosen],
            track_anchor_visible=sub.visible[t, chosen],
            link_frame=sub.frames[t + 1] if link is not None else None,
            max_tracks=self.max_tracks,
            pose_conf_threshold=self.pose_conf_threshold,
            pose_line_scale=self.pose_line_scale,
            track_sigma=self.track_sigma,
            body_limb_scale=self.body_limb_scale,
            key=clip.key,
        )


def _seed_int(*entropy: int) -> int:
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


class ClipStream(IterableDataset):
    """Batches of the contract from shards, for one rank; splits work over DataLoader workers itself.

    train=True: endless resampled shards, ``num_batches`` batches per epoch for
    this rank (shared out over the workers), full batches only.
    train=False: one deterministic pass, the last batch may be short.

    ``first_epoch``: the epoch the first iteration draws (each further iteration, in the main
    process or in a persistent worker, draws the next one). ``skip_batches``: batches of
    ``first_epoch`` already trained on (a resume mid-epoch); that iteration yields only batches
    ``skip_batches..num_batches-1`` of the epoch, exactly those of an uninterrupted run, while
    ``len()`` stays ``num_batches`` (Lightning counts the skipped ones as done). The skipped
    batches are regenerated and dropped, as the streams cannot seek: at most one epoch of data
    work, once per resume.
    """

    def __init__(
        self,
        urls: list[str],
        builder: ExampleBuilder,
        batch_size: int,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_batches: int | None = None,
        shuffle_buffer: int = 256,
        counter: SkipCounter | None = None,
        first_epoch: int = 0,
        skip_batches: int = 0,
    ):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if train and (num_batches is None or num_batches < 1):
            raise ValueError(f"a training stream needs num_batches >= 1, got {num_batches}")
        if skip_batches and not (train and 0 <= skip_batches < num_batches):
            raise ValueError(f"skip_batches={skip_batches}: need a training stream and 0 <= it < {num_batches}")
        self.urls = list(urls)
        self.builder = builder
        self.batch_size = batch_size
        self.train = train
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_batches = num_batches
        self.shuffle_buffer = shuffle_buffer
        self.counter = counter
        # Counted per process (persistent workers keep counting) from the trainer's epoch at loader
        # creation, so a resumed run draws the streams the uninterrupted run drew.
        self.first_epoch = first_epoch
        self.skip_batches = skip_batches
        self.epoch = first_epoch - 1

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("a validation stream has no length known in advance")
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.epoch += 1
        if self.train:
            return self._train_batches(worker, num_workers)
        return self._val_batches(worker, num_workers)

    # -- training -----------------------------------------------------------------------
    def _clips_until_dry(self, shard_stream: Iterator[dict]) -> Iterator[Clip]:
        """iter_clips over an endless shard stream; raise if many shards in a row give nothing."""
        limit = max(100, 10 * len(self.urls))
        empty_in_a_row = 0

        def shards() -> Iterator[dict]:
            nonlocal empty_in_a_row
            for shard in shard_stream:
                empty_in_a_row += 1
                if empty_in_a_row > limit:
                    raise RuntimeError(
                        f"{limit} shards in a row gave no readable sample; check the training shards "
                        f"{self.urls[:3]}{'...' if len(self.urls) > 3 else ''} (skips: {self.counter and self.counter.as_dict()})"
                    )
                yield shard

        for clip in iter_clips(shards(), self.counter):
            empty_in_a_row = 0
            yield clip

    def _own_train_shards(self, worker: int, num_workers: int) -> list[str]:
        """The shards this (rank, worker) resamples from: its own when there are enough, so streams are disjoint.

        ``len(urls) >= world * workers``: every (rank, worker) slot gets ``urls[slot::slots]``;
        else ``len(urls) >= world``: every rank gets ``urls[rank::world]`` (its workers share them);
        else all ranks read all shards (streams still differ by seed, but samples can repeat across ranks).
        """
        slots = self.world_size * num_workers
        if len(self.urls) >= slots:
            return self.urls[self.rank * num_workers + worker :: slots]
        if len(self.urls) >= self.world_size:
            return self.urls[self.rank :: self.world_size]
        return self.urls

    def _train_batches(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """This worker's share of the epoch: batches ``worker, worker + n, ...`` of it (n workers).

        The DataLoader asks its workers round-robin, so batch ``i`` of an epoch comes from worker
        ``i % n``, drawn from the stream of (seed, rank, ``i % n``, epoch). Resumed after ``done``
        batches, the new iterator starts again at worker 0, so worker ``w`` stands in for the
        uninterrupted run's worker ``(done + w) % n``: same stream, minus what it had produced.
        """
        done = self.skip_batches if self.epoch == self.first_epoch else 0
        source = (worker + done) % num_workers
        produced = len(range(source, done, num_workers))
        quota = len(range(source, self.num_batches, num_workers))
        stream_seed = _seed_int(self.seed, self.rank, source, self.epoch)
        rng = np.random.default_rng(stream_seed)
        pipeline = wds.DataPipeline(
            wds.ResampledShards(
                self._own_train_shards(source, num_workers), seed=stream_seed, worker_seed=lambda: 0, deterministic=True
            ),
            self._clips_until_dry,
            wds.shuffle(self.shuffle_buffer, initial=max(1, self.shuffle_buffer // 2), rng=random.Random(stream_seed)),
            wds.map(lambda clip: self.builder(clip, rng, augment=True)),
            wds.batched(self.batch_size, collation_fn=collate_conditions, partial=False),
        )
        return islice(iter(pipeline), produced, quota)

    # -- validation ---------------------------------------------------------------------
    def _val_batches(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """This (rank, worker)'s validation batches; with several ranks, padded to the same count on every rank.

        Ranks get other numbers of samples (shard sizes, a remainder), so one would run more validation
        steps than another: under FSDP every forward pass all-gathers parameters, so the rank with more
        batches waits forever. Each worker therefore yields ``even_val_batches(worker)`` batches, the
        most that worker's slot has on any rank (counted from the tar headers), the missing ones as
        padding: a copy of a batch of the validation set with ``batch["val_pad"] = True``, which
        ``FgbgModule.validation_step`` runs (to join the collectives) but does not count.
        """
        real = self._val_real_batches(worker, num_workers)
        if self.world_size == 1:
            return real
        return self._padded(real, self.even_val_batches(worker, num_workers))

    def _padded(self, real: Iterator[dict[str, Any]], target: int) -> Iterator[dict[str, Any]]:
        first, count = None, 0
        for batch in real:
            first = first or batch
            count += 1
            yield batch
        if count < target and first is None:  # this slot has no sample: pad with the set's first one
            clip = next(iter_clips(self.urls), None)
            if clip is None:
                return
            first = collate_conditions([self._val_example(clip)])
        for _ in range(target - count):
            yield {**first, "val_pad": True}

    def slot_sample_counts(self, num_workers: int) -> list[int]:
        """Samples per (rank, worker) slot, slot = rank * num_workers + worker, as ``_val_real_batches`` splits them.

        The shards' headers are read once per stream object (a persistent worker keeps it across epochs)."""
        slots = self.world_size * num_workers
        if getattr(self, "_per_url", None) is None:
            self._per_url = [count_tar_groups(u) for u in self.urls]
        per_url = self._per_url
        if len(self.urls) >= slots:
            return [sum(per_url[s::slots]) for s in range(slots)]
        total = sum(per_url)
        return [total // slots + (s < total % slots) for s in range(slots)]

    def even_val_batches(self, worker: int, num_workers: int) -> int:
        """The most batches worker ``worker``'s slot holds on any rank."""
        counts = self.slot_sample_counts(num_workers)
        return max(math.ceil(counts[r * num_workers + worker] / self.batch_size) for r in range(self.world_size))

    def _val_real_batches(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        slots = self.world_size * num_workers
        slot = self.rank * num_workers + worker
        if len(self.urls) >= slots:
            # Enough shards: each (rank, worker) reads its own shards.
            stages = [wds.SimpleShardList(self.urls), lambda src: islice(src, slot, None, slots)]
            stages.append(lambda shards: iter_clips(shards, self.counter))
        else:
            # Few shards: every slot reads all of them and keeps every slots-th sample.
            # Skips are counted once per process (by its worker 0), not once per slot.
            counter = self.counter if worker == 0 else None
            stages = [wds.SimpleShardList(self.urls), lambda shards: iter_clips(shards, counter)]
            stages.append(lambda clips: (c for i, c in enumerate(clips) if i % slots == slot))
        pipeline = wds.DataPipeline(
            *stages,
            wds.map(self._val_example),
            wds.batched(self.batch_size, collation_fn=collate_conditions, partial=True),
        )
        return iter(pipeline)

    def _val_example(self, clip: Clip) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, zlib.crc32(clip.key.encode())])
        return self.builder(clip, rng, augment=False)


class ClipDataModule(pl.LightningDataModule):
    """Train/val DataLoaders of contract batches from WebDataset clip shards.

    ``batch_size`` is per device; alternatively give ``global_batch_size``
    (divided by the world size). ``epoch_len`` is the number of training
    samples per epoch across all ranks (rounded up to whole batches per rank).
    ``shuffle_buffer`` decoded clips are held per worker (a 16-frame 256x256
    clip takes about 4 MB). ``rank`` / ``world_size`` override what
    ``torch.distributed`` or the trainer say (for tests and custom launchers).

    Validation reads each sample once, so ranks may get different numbers of
    batches; reduce validation metrics with torchmetrics (which synchronises
    at epoch end) rather than per-step ``sync_dist``.
    """

    def __init__(
        self,
        train_shards: str | Sequence[str] | None = None,
        val_shards: str | Sequence[str] | None = None,
        resolution: int = 32,
        clip_len: int = 8,
        min_tracks: int = 5,
        max_tracks: int = 50,
        reference: str = "random",
        crop_scale: Sequence[float] = (0.8, 1.0),
        flip_prob: float = 0.5,
        pose_line_scale: float = 1.0,
        pose_conf_threshold: float = 0.3,
        track_sigma: float | None = None,
        body_limb_scale: float = 1.0,
        batch_size: int | None = 4,
        global_batch_size: int | None = None,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        epoch_len: int = 1024,
        shuffle_buffer: int = 64,
        seed: int = 0,
        pin_memory: bool | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["rank", "world_size"])
        if batch_size is None and global_batch_size is None:
            raise ValueError("give data.batch_size (per device) or data.global_batch_size")
        for name, value in (("batch_size", batch_size), ("global_batch_size", global_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if epoch_len < 1:
            raise ValueError(f"data.epoch_len must be >= 1, got {epoch_len}")
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.builder = ExampleBuilder(
            resolution=resolution,
            clip_len=clip_len,
            min_tracks=min_tracks,
            max_tracks=max_tracks,
            reference=reference,
            crop_scale=tuple(crop_scale),
            flip_prob=flip_prob,
            pose_line_scale=pose_line_scale,
            pose_conf_threshold=pose_conf_threshold,
            track_sigma=track_sigma,
            body_limb_scale=body_limb_scale,
        )
        self._batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.epoch_len = epoch_len
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.pin_memory = pin_memory
        self._restored: dict[str, Any] | None = None  # load_state_dict's record, checked by train_dataloader
        self._rank_override = rank
        self._world_override = world_size
        self.skip_counter = SkipCounter()
        self._val_noticed = False

    # -- distributed context ------------------------------------------------------------
    def rank_and_world(self) -> tuple[int, int]:
        """(rank, world size): overrides, else torch.distributed, else the trainer, else RANK/WORLD_SIZE."""
        if self._rank_override is not None or self._world_override is not None:
            return int(self._rank_override or 0), int(self._world_override or 1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        if self.trainer is not None:
            return int(self.trainer.global_rank), int(self.trainer.world_size)
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    @property
    def batch_size(self) -> int:
        """Per-device batch size (``global_batch_size / world_size`` when that was given)."""
        if self.global_batch_size is None:
            return int(self._batch_size)
        world = self.rank_and_world()[1]
        if self.global_batch_size % world:
            raise ValueError(f"data.global_batch_size={self.global_batch_size} is not divisible by world size {world}")
        return self.global_batch_size // world

    @batch_size.setter
    def batch_size(self, value: int) -> None:  # e.g. Lightning's batch-size finder
        self._batch_size, self.global_batch_size = int(value), None

    @property
    def batches_per_rank(self) -> int:
        """Training batches per epoch on each rank: ``ceil(epoch_len / (batch_size * world))``."""
        return max(1, math.ceil(self.epoch_len / (self.batch_size * self.rank_and_world()[1])))

    def train_position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained on) as the trainer's loop progress says; (0, 0) without a trainer.

        Called when the training loader is built, after Lightning restored the loops from the
        checkpoint (``Trainer.fit(ckpt_path=...)``), and at every checkpoint save. A checkpoint taken
        on an epoch's last batch (``is_last_batch``) resumes at the start of the next epoch, which is
        what Lightning then runs. ``current.processed`` counts the epoch's batches whose
        ``training_step`` ran, what Lightning treats as done on a restart (saved in
        ``on_train_batch_end`` or after a validation).
        """
        if self.trainer is None:
            return 0, 0
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        epoch, done = int(self.trainer.current_epoch), int(progress.current.processed)
        if progress.is_last_batch or done >= self.batches_per_rank:
            return epoch + 1, 0
        return epoch, done

    def train_layout(self) -> dict[str, int]:
        """What decides the training batches besides the position: a resume with another layout is not exact."""
        world = self.rank_and_world()[1]
        return {"world_size": world, "num_workers": int(self.num_workers), "batch_size": self.batch_size,
                "seed": int(self.seed), "batches_per_rank": self.batches_per_rank}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning in every checkpoint: the training data position and layout (for ``load_state_dict``)."""
        if self.trainer is None or self.train_shards is None:
            return {}
        epoch, done = self.train_position()
        return {"epoch": epoch, "batches_done": done, **self.train_layout()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved record; the next ``train_dataloader()`` checks it against the current layout."""
        self._restored = dict(state_dict)

    def _check_restored(self, epoch: int, done: int) -> None:
        """Warn once when the checkpoint's data layout or position differs from this run's (the resume is not exact)."""
        saved, self._restored = self._restored, None
        if not saved:
            return
        now = self.train_layout()
        changed = {k: (saved[k], v) for k, v in now.items() if k in saved and saved[k] != v}
        if changed:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            log.warning(
                "resuming with another training data layout than the checkpoint's (%s): the data stream from "
                "epoch %d batch %d on differs from the interrupted run's (the resume is not exact)",
                what, epoch, done,
            )  # fmt: skip
        elif (saved.get("epoch"), saved.get("batches_done")) != (epoch, done):
            log.warning(
                "the checkpoint's data position (epoch %s batch %s) differs from the trainer's restored progress "
                "(epoch %d batch %d); following the trainer",
                saved.get("epoch"), saved.get("batches_done"), epoch, done,
            )  # fmt: skip

    # -- loaders --------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_shards is None:
            raise ValueError(f"data.train_shards is not set: give {SOURCE_KINDS}")
        _ = self.batch_size  # fail early on an indivisible global batch size

    def _loader(self, dataset: ClipStream) -> DataLoader:
        pin = self.pin_memory
        if pin is None:
            root = getattr(getattr(self.trainer, "strategy", None), "root_device", None)
            pin = torch.cuda.is_available() and (root is None or root.type == "cuda")
        return DataLoader(
            dataset,
            batch_size=None,  # batched inside the workers
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=pin,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_shards is None:
            raise ValueError(f"data.train_shards is not set: give {SOURCE_KINDS}")
        rank, world = self.rank_and_world()
        epoch, done = self.train_position()
        self._check_restored(epoch, done)
        if done:
            log.info("training data resumes at epoch %d, batch %d of %d", epoch, done, self.batches_per_rank)
        stream = ClipStream(
            expand_shards(self.train_shards, split="train"),
            self.builder,
            batch_size=self.batch_size,
            train=True,
            rank=rank,
            world_size=world,
            seed=self.seed,
            num_batches=self.batches_per_rank,
            shuffle_buffer=self.shuffle_buffer,
            counter=self.skip_counter,
            first_epoch=epoch,
            skip_batches=done,
        )
        return self._loader(stream)

    def val_urls(self) -> list[str]:
        """The validation shards: ``data.val_shards`` (a manifest gives the held-out side of its split);
        [] without any, with a one-line notice (once)."""
        urls = [] if self.val_shards is None else expand_shards(self.val_shards, split="val", allow_empty=True)
        if not self._val_noticed:
            self._val_noticed = True
            if self.val_shards is None:
                pass  # SampleVideoCallback says where its samples come from instead
            elif not urls:
                log.warning(
                    "data.val_shards=%r holds no held-out videos (a manifest without a split: write one with "
                    "fgbg-preprocess ... split_val=0.05 or python -m fgbg.data.manifest MANIFEST --val 0.05); "
                    "training runs without validation",
                    self.val_shards,
                )
            elif self.train_shards is not None and set(urls) == set(expand_shards(self.train_shards, split="train")):
                log.warning("data.val_shards names the training shards themselves: validation is not held out")
        return urls

    def val_dataloader(self) -> DataLoader | list:
        urls = self.val_urls()
        if not urls:
            return []  # Lightning skips validation
        rank, world = self.rank_and_world()
        stream = ClipStream(
            urls,
            self.builder,
            batch_size=self.val_batch_size or self.batch_size,
            train=False,
            rank=rank,
            world_size=world,
            seed=self.seed,
            counter=self.skip_counter,
        )
        return self._loader(stream)
