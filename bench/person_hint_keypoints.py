"""What the reference keypoints of the person hint cost at generation (issue 15, point 5).

    python bench/person_hint_keypoints.py [--weights fgbg/assets/pixel32_model.safetensors] [--num 32]

A person-hint model (``docs/model.md``) is trained with the reference keypoints of the shard. At generation
``fgbg-generate`` estimates them from the reference image with mediapipe pose (``reference_keypoints`` default,
``fgbg.generate.estimate_reference_keypoints``) and generates without the person hint when that finds no one. On
held-out synthetic clips (``fgbg-synth split=test num_videos=32 seed=1``, or seed 2 with
``--shards data/person_hint_heldout2/test-000000.tar``, made if missing; the models trained on seed 0) the first ``clip_len`` frames of each clip are generated three times, with the same noise, reference
(the clip's first stored frame), true reference mask, pose and tracks, and only the reference keypoints changed:

  true       the shard's keypoints of the reference frame (what training gives)
  estimated  mediapipe pose on the reference image as stored (64x64), checked against the true reference mask
             (as ``reference_mask=PATH`` gives fgbg-generate): windows of several sizes around the mask and the
             whole image, each as is and with the person cut out, each also mirrored, keeping the pose whose body
             region matches the mask best (``fgbg.preprocess.pose.pose_matching_mask``; ``--whole-image``: the
             whole image once, no mask), mapped to the model's size by the same ``Fit`` as the image:
             generation's default; zero keypoints (no person hint) where it finds no one
  none       zero keypoints: no person hint (``reference_keypoints=none``)

Person PSNR (``bench.learn_check.masked_psnr``, inside the true person mask) of frames 1.. of each clip (frame 0
is the reference itself) against the truth, per clip; the table gives means over clips and paired differences
with standard errors (std / sqrt(n)), also over the clips where mediapipe found a person. DDIM, guidance 1.
Writes ``bench/results/person_hint_keypoints.json`` (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.claims import bin_path  # noqa: E402
from bench.learn_check import masked_psnr  # noqa: E402
from fgbg.data.shards import iter_clips  # noqa: E402
from fgbg.datamodules import ClipDataModule  # noqa: E402
from fgbg.generate import InputError, estimate_reference_keypoints, load_model, model_data_settings  # noqa: E402
from fgbg.models.module import COND_KEYS  # noqa: E402

HELDOUT = "data/person_hint_heldout/test-000000.tar"
HELDOUT_SEEDS = {HELDOUT: 1, "data/person_hint_heldout2/test-000000.tar": 2}  # made if missing (--shards)
HELDOUT_VIDEOS = 32
VARIANTS = ("true", "estimated", "none")


def ensure_heldout(path: str, num: int, seed: int = 1) -> None:
    if not os.path.isfile(os.path.join(ROOT, path)):
        subprocess.run([bin_path("fgbg-synth"), f"output={os.path.dirname(path)}", "split=test", f"num_videos={num}",
                        f"seed={seed}", f"videos_per_shard={num}"], cwd=ROOT, check=True)  # fmt: skip


def estimated_keypoints(
    frames: list[np.ndarray], size: int, fit: str, masks: list[np.ndarray] | None = None
) -> tuple[torch.Tensor, list[bool]]:
    """Generation's default path on each stored reference frame: (N, 18, 3) keypoints, and found or not.

    ``masks``: each reference's person mask (as ``reference_mask=PATH`` gives ``fgbg-generate``), for the
    top-down pose window; None: the whole image only (before 2026-12-01)."""
    out, found = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, frame in enumerate(frames):
            path = os.path.join(tmp, f"reference{i}.png")
            Image.fromarray(frame).save(path)
            try:
                mask = None if masks is None else masks[i]
                out.append(estimate_reference_keypoints(path, size, size, fit, mask))
                found.append(True)
            except InputError:  # no person: fgbg-generate goes on without the person hint (zero keypoints)
                out.append(np.zeros((18, 3), np.float32))
                found.append(False)
    return torch.from_numpy(np.stack(out)), found


def keypoint_error(estimated: torch.Tensor, true: torch.Tensor, threshold: float = 0.3) -> float:
    """Mean distance in model pixels over the joints confident in both."""
    ok = (estimated[:, 2] >= threshold) & (true[:, 2] >= threshold)
    return float((estimated[ok, :2] - true[ok, :2]).norm(dim=-1).mean()) if ok.any() else float("nan")


def generate(model, batch: dict, keypoints: torch.Tensor, steps: int, seed: int, chunk: int) -> torch.Tensor:
    """The clips of ``batch`` with these reference keypoints, chunk by chunk, each chunk's noise from its seed."""
    videos = []
    for start in range(0, batch["frames"].shape[0], chunk):
        part = {k: v[start : start + chunk] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        part["reference_keypoints"] = keypoints[start : start + chunk]
        with torch.no_grad():
            ctx = model.encode_reference(part["reference"], part["reference_mask"])
            gen = torch.Generator().manual_seed(seed + start)
            videos.append(model.sample_clip(ctx, {k: part[k] for k in COND_KEYS}, None, steps, "ddim", None, gen))
    return torch.cat(videos)


def paired(a: list[float], b: list[float]) -> dict:
    d = np.asarray(a) - np.asarray(b)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean_db": float(d.mean()) if len(d) else float("nan"), "se_db": se, "n": len(d)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="fgbg/assets/pixel32_model.safetensors")
    ap.add_argument("--shards", default=HELDOUT)
    ap.add_argument("--num", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=8, help="clips per sampling batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit", default="crop", help="fgbg-generate's fit of the reference image")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--whole-image", action="store_true", help="mediapipe on the whole reference (no person window)")
    ap.add_argument("--out", default="bench/results/person_hint_keypoints.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.shards in HELDOUT_SEEDS:
        ensure_heldout(args.shards, HELDOUT_VIDEOS, HELDOUT_SEEDS[args.shards])
    data = model_data_settings(args.weights)
    size, clip_len = int(data["resolution"]), int(data["clip_len"])
    model = load_model(args.weights)

    dm = ClipDataModule(
        val_shards=args.shards, resolution=size, clip_len=clip_len, reference="first",
        min_tracks=data["min_tracks"], max_tracks=data["max_tracks"], batch_size=args.num, num_workers=0,
    )  # fmt: skip
    batch = next(iter(dm.val_dataloader()))
    n = batch["frames"].shape[0]
    clips = [clip for _, clip in zip(range(n), iter_clips([args.shards]))]
    stored = [clip.frames[0] for clip in clips]
    # The stored first frames are the batch's references (resized): the same clips in the same order.
    small = torch.stack(
        [torch.from_numpy(np.array(Image.fromarray(f).resize((size, size), Image.BOX))) for f in stored]
    )
    gap = float((small.permute(0, 3, 1, 2).float() / 127.5 - 1 - batch["reference"]).abs().mean())
    if gap > 0.1:
        sys.exit(f"stored first frames do not match the batch references (mean abs {gap:.3f}): clip order differs")

    t0 = time.time()
    masks = None if args.whole_image else [clip.masks[0] for clip in clips]
    estimated, found = estimated_keypoints(stored, size, args.fit, masks)
    seconds_mediapipe = time.time() - t0
    keypoints = {"true": batch["reference_keypoints"], "estimated": estimated, "none": torch.zeros_like(estimated)}
    truth, person = batch["frames"][:, 1:], batch["masks"][:, 1:]
    psnr, seconds = {}, {}
    for name in VARIANTS:
        t0 = time.time()
        video = generate(model, batch, keypoints[name], args.steps, args.seed, args.chunk)[:, 1:]
        seconds[name] = round(time.time() - t0, 1)
        psnr[name] = [masked_psnr(video[i], truth[i], person[i]) for i in range(n)]
        print(f"[person_hint_keypoints] {name}: {np.mean(psnr[name]):.2f} dB, {seconds[name]} s", flush=True)

    hit = [i for i in range(n) if found[i]]
    miss = [i for i in range(n) if not found[i]]
    sub = lambda v, idx: [psnr[v][i] for i in idx]  # noqa: E731
    result = {
        "benchmark": "person PSNR with true, mediapipe-estimated and no reference keypoints (issue 15, point 5)",
        "weights": args.weights,
        "shards": args.shards,
        "clips": n,
        "frames_evaluated_per_clip": clip_len - 1,
        "resolution": size,
        "steps": args.steps,
        "pose_window": not args.whole_image,
        "estimator": "mediapipe on the whole image"
        if args.whole_image
        else "pose_matching_mask: windows grown 1, 1.5, 2, 3 and the whole image; as is and cut out; mirrored; "
        "best body-region IoU with the reference mask, at least 0.3",
        "mediapipe_found": len(hit),
        "mediapipe_found_fraction": len(hit) / n,
        "mediapipe_keypoint_error_px": float(
            np.nanmean([keypoint_error(estimated[i], keypoints["true"][i]) for i in hit])
        )
        if hit
        else None,  # fmt: skip
        "psnr_person_mean_db": {v: float(np.mean(psnr[v])) for v in VARIANTS},
        "paired_db": {
            "estimated - true": paired(psnr["estimated"], psnr["true"]),
            "none - true": paired(psnr["none"], psnr["true"]),
            "estimated - none": paired(psnr["estimated"], psnr["none"]),
            "estimated - true (found)": paired(sub("estimated", hit), sub("true", hit)),
            "none - true (found)": paired(sub("none", hit), sub("true", hit)),
            "estimated - true (not found)": paired(sub("estimated", miss), sub("true", miss)),
        },
        "target": "estimated within 0.5 dB of true",
        "target_met": bool(np.mean(psnr["estimated"]) >= np.mean(psnr["true"]) - 0.5),
        "psnr_person_per_clip_db": psnr,
        "mediapipe_found_per_clip": found,
        "seconds": seconds | {"mediapipe": round(seconds_mediapipe, 1)},
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, shared with other jobs",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "command": "python bench/person_hint_keypoints.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{n} held-out clips, mediapipe found a person in {len(hit)} ({len(hit) / n:.0%}), "
          f"keypoint error {result['mediapipe_keypoint_error_px']} px")  # fmt: skip
    print(f"{'reference keypoints':<32}{'person PSNR dB':>16}")
    for v in VARIANTS:
        print(f"{v:<32}{result['psnr_person_mean_db'][v]:>16.2f}")
    print(f"\n{'paired difference':<32}{'mean dB':>10}{'se dB':>8}{'n':>5}")
    for k, d in result["paired_db"].items():
        print(f"{k:<32}{d['mean_db']:>10.2f}{d['se_db']:>8.2f}{d['n']:>5}")
    print(f"\ntarget (estimated within 0.5 dB of true): {'met' if result['target_met'] else 'missed'}; -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
