"""Frames per second delivered by the training DataLoader of ``ClipDataModule``.

Writes shards of 64x64, 16-frame clips into a temporary folder (the synthetic
world of ``fgbg.synth`` when it is installed, random clips otherwise), then
times the training loader at 64x64, clip_len 16, batch 8, with 0 and 2 workers.
Counts the window frames of full batches after the first batch (worker start-up
excluded). The CPU is often shared, so each setting runs ``--repeats`` times;
the median and the best run are reported with the load average seen.
Writes ``bench/results/data.json`` and prints a markdown table row.

    .venv/bin/python bench/data_throughput.py [--batches 30] [--repeats 3] [--videos 32]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fgbg.data.schema import NUM_KEYPOINTS, Clip
from fgbg.data.shards import ClipShardWriter
from fgbg.datamodules import ClipDataModule

RESULTS = Path(__file__).resolve().parent / "results" / "data.json"
SIZE, STORED_FRAMES, CLIP_LEN, BATCH = 64, 16, 16, 8


def write_shards(folder: Path, num_videos: int, per_shard: int) -> tuple[list[str], str]:
    """Shards of 64x64 16-frame clips; returns (paths, what they hold)."""
    try:
        from fgbg.synth import SynthConfig, synthesize
    except ImportError:
        synthesize = None
    if synthesize is not None:
        cfg = SynthConfig(output=str(folder), num_videos=num_videos, videos_per_shard=per_shard, seed=0)
        cfg.height = cfg.width = SIZE
        cfg.num_frames = STORED_FRAMES
        return synthesize(cfg), "fgbg.synth"
    rng = np.random.default_rng(0)
    with ClipShardWriter(str(folder / "train-%06d.tar"), max_count=per_shard) as writer:
        for i in range(num_videos):
            t, n = STORED_FRAMES, 64
            pose = np.concatenate(
                [rng.uniform(0, SIZE, (t, NUM_KEYPOINTS, 2)), rng.uniform(0.5, 1, (t, NUM_KEYPOINTS, 1))], -1
            )
            writer.write(
                Clip(
                    frames=rng.integers(0, 256, (t, SIZE, SIZE, 3), dtype=np.uint8),
                    masks=rng.random((t, SIZE, SIZE)) > 0.7,
                    pose=pose.astype(np.float32),
                    tracks=rng.uniform(0, SIZE, (t, n, 2)).astype(np.float32),
                    visible=rng.random((t, n)) > 0.2,
                    meta={"fps": 8, "source": "random", "pose_estimator": "random", "tracker": "random"},
                    key=f"random{i:05d}",
                )
            )
    return writer.written, "random clips"


def frames_per_second(shards: list[str], num_workers: int, num_batches: int) -> float:
    dm = ClipDataModule(
        train_shards=shards,
        resolution=SIZE,
        clip_len=CLIP_LEN,
        batch_size=BATCH,
        num_workers=num_workers,
        epoch_len=BATCH * (num_batches + 1),
        shuffle_buffer=64,
        seed=0,
    )
    batches = iter(dm.train_dataloader())
    next(batches)  # start-up: workers, first shards, shuffle buffer
    start, frames = time.perf_counter(), 0
    for batch in batches:
        frames += batch["frames"].shape[0] * batch["frames"].shape[1]
    rate = frames / (time.perf_counter() - start)
    del batches, dm
    gc.collect()  # stop the persistent workers before the next run forks new ones
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting")
    parser.add_argument("--videos", type=int, default=32, help="clips written into the shards")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the loader's work is in its processes, not in intra-op threads
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        shards, source = write_shards(Path(tmp), args.videos, per_shard=8)
        runs = {w: [frames_per_second(shards, w, args.batches) for _ in range(args.repeats)] for w in (0, 2)}
    median = {w: float(np.median(r)) for w, r in runs.items()}
    record = {
        "benchmark": "training DataLoader throughput (ClipDataModule)",
        "frames_per_s_median": {f"workers_{w}": round(v, 1) for w, v in median.items()},
        "frames_per_s_best": {f"workers_{w}": round(max(r), 1) for w, r in runs.items()},
        "frames_per_s_runs": {f"workers_{w}": [round(v, 1) for v in r] for w, r in runs.items()},
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "resolution": SIZE,
        "clip_len": CLIP_LEN,
        "batch_size": BATCH,
        "timed_batches_per_run": args.batches,
        "shards": f"{len(shards)} shards, {args.videos} clips of {STORED_FRAMES}x{SIZE}x{SIZE} ({source})",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "command": "python bench/data_throughput.py",
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    best = {w: max(r) for w, r in runs.items()}
    print(
        "| loader | resolution | clip_len | batch | frames/s, 0 workers (median / best) | 2 workers (median / best) |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| ClipDataModule train | {SIZE}x{SIZE} | {CLIP_LEN} | {BATCH} "
        f"| {median[0]:.0f} / {best[0]:.0f} | {median[2]:.0f} / {best[2]:.0f} |"
    )


if __name__ == "__main__":
    main()
