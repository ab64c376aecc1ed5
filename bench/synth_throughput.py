"""Frames per second of the synthetic world, rendering and shard writing included.

Renders ``--videos`` videos of 16 frames at 64x64 with one process (``workers=0``)
into shards in a temporary folder, after one untimed warm-up video. Writes
``bench/results/synth.json`` and prints a markdown table row.

    .venv/bin/python bench/synth_throughput.py [--videos 64] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fgbg.synth import SynthConfig, synthesize, synthesize_video

RESULTS = Path(__file__).resolve().parent / "results" / "synth.json"
SIZE, FRAMES = 64, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=64, help="videos rendered in the timed run")
    parser.add_argument("--workers", type=int, default=0, help="fgbg-synth workers (0: this process)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(
            output=tmp, num_videos=args.videos, videos_per_shard=16, seed=0, workers=args.workers,
            height=SIZE, width=SIZE, num_frames=FRAMES,
        )  # fmt: skip
        synthesize_video(cfg, 0)  # warm-up: imports, first allocations
        start = time.perf_counter()
        shards = synthesize(cfg)
        seconds = time.perf_counter() - start
        shard_bytes = sum(Path(p).stat().st_size for p in shards)
    fps = args.videos * FRAMES / seconds
    record = {
        "benchmark": "fgbg-synth throughput (render + shard writing)",
        "frames_per_s": round(fps, 1),
        "videos_per_s": round(args.videos / seconds, 2),
        "height": SIZE,
        "width": SIZE,
        "num_frames": FRAMES,
        "num_tracks": cfg.num_tracks,
        "num_videos": args.videos,
        "workers": args.workers,
        "seconds": round(seconds, 2),
        "bytes_per_frame": round(shard_bytes / (args.videos * FRAMES)),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU",
        "load_average_1min": round(os.getloadavg()[0], 2),  # the CPU is shared; a high load slows the run
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "command": f"python bench/synth_throughput.py --videos {args.videos} --workers {args.workers}",
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("| generator | resolution | frames/clip | workers | frames/s | shard bytes/frame |")
    print("|---|---|---|---|---|---|")
    print(f"| fgbg-synth | {SIZE}x{SIZE} | {FRAMES} | {args.workers} | {fps:.0f} | {record['bytes_per_frame']} |")


if __name__ == "__main__":
    main()
