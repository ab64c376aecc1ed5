"""The claims benchmark: does each part of the method do what the paper says it does?

    make claims            # = python bench/claims.py all   (under 3 hours on 2 CPU cores)
    python bench/claims.py train | evaluate | report

Rows (docs/results.md):
  full             the full tiny model (pose + tracks + link + reference at every clip)
  no_tracks        pose only, as Animate Anyone: trained with ``model.use_tracks=false``
  no_link          the full model, clips generated independently (no link frame)
  first_clip_ref   the full model, reference features (bank, global tokens, hints) at clip 1 only

Two models are trained (full and no_tracks), side by side, each on one CPU thread, with
the same budget: stage image then stage video, the same steps / time cap, data and seed.
``no_link`` and ``first_clip_ref`` are generation-time ablations of the full model, so
they share its training budget exactly. Each stage's run folder gets ``done.json`` when it
finishes; reruns skip finished stages. Everything lands in ``runs/claims/``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "runs", "claims")
HELDOUT = "data/claims_heldout/test-000000.tar"

# The training budget of every row. Image stage: one random frame per sample, batch 16;
# video stage: 8-frame clips, batch 4, motion modules only.
BUDGET = {
    "image": {"max_steps": 3000, "max_time": "00:00:50:00"},
    "video": {"max_steps": 800, "max_time": "00:00:20:00"},
}
MODELS = {"full": [], "no_tracks": ["model.use_tracks=false"]}
SEED = 0


def bin_path(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def run_dir(model: str, stage: str) -> str:
    return os.path.join(OUT, f"{stage}", "runs", model)


def ensure_data() -> None:
    """Training shards (1024 videos) and long held-out videos with moving cameras (64 frames, seed 3)."""
    synth = bin_path("fgbg-synth")
    if not glob.glob(os.path.join(ROOT, "data/synthetic/train-000007.tar")):
        subprocess.run([synth, "output=data/synthetic", "num_videos=1024", "seed=0", "videos_per_shard=128"],
                       cwd=ROOT, check=True)  # fmt: skip
    if not glob.glob(os.path.join(ROOT, "data/synthetic/val-000001.tar")):
        subprocess.run([synth, "output=data/synthetic", "split=val", "num_videos=64", "seed=1",
                        "videos_per_shard=32"], cwd=ROOT, check=True)  # fmt: skip
    if not os.path.isfile(os.path.join(ROOT, HELDOUT)):
        subprocess.run([synth, "output=data/claims_heldout", "split=test", "num_videos=16", "seed=3",
                        "num_frames=64", "camera.weights.static=0", "videos_per_shard=16"], cwd=ROOT, check=True)  # fmt: skip


def train_command(model: str, stage: str) -> list[str]:
    budget = BUDGET[stage]
    cmd = [
        bin_path("fgbg-train"), f"experiment=synthetic_tiny_{stage}", f"task_name={stage}", f"run_name={model}",
        f"paths.log_dir={OUT}", f"seed={SEED}", "resume=auto", "logger=csv",
        f"trainer.max_steps={budget['max_steps']}", f"trainer.max_time={budget['max_time']}",
    ] + MODELS[model]  # fmt: skip
    if stage == "video":
        cmd.append(f"model.init_from={run_dir(model, 'image')}/checkpoints/image_ema.safetensors")
    return cmd


def train() -> None:
    """Both models, stage by stage, in parallel (one thread each, so they share the machine evenly)."""
    ensure_data()
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    for stage in ("image", "video"):
        procs = {}
        for model in MODELS:
            folder = run_dir(model, stage)
            if os.path.isfile(os.path.join(folder, "done.json")):
                print(f"[claims] {model}/{stage}: done already ({folder})", flush=True)
                continue
            os.makedirs(folder, exist_ok=True)
            log = open(os.path.join(OUT, f"{model}_{stage}.log"), "a")
            print(f"[claims] {model}/{stage}: training -> {folder}", flush=True)
            procs[model] = (subprocess.Popen(train_command(model, stage), cwd=ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT), time.time(), log)  # fmt: skip
        for model, (proc, t0, log) in procs.items():
            rc = proc.wait()
            log.close()
            if rc != 0:
                sys.exit(f"[claims] {model}/{stage} failed (exit {rc}); see {OUT}/{model}_{stage}.log")
            folder = run_dir(model, stage)
            steps = _steps(folder)
            with open(os.path.join(folder, "done.json"), "w") as f:
                json.dump({"seconds": round(time.time() - t0, 1), "steps": steps, "budget": BUDGET[stage],
                           "command": train_command(model, stage)}, f, indent=1)  # fmt: skip
            print(f"[claims] {model}/{stage}: {steps} steps in {time.time() - t0:.0f} s", flush=True)


def _steps(folder: str) -> int | None:
    """Last logged training step of a run (from its CSV log)."""
    import csv

    last = None
    for path in glob.glob(os.path.join(folder, "csv", "**", "metrics.csv"), recursive=True):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("step"):
                    last = max(last or 0, int(float(row["step"])))
    return last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["train", "evaluate", "report", "all"])
    args = ap.parse_args()
    if args.what in ("train", "all"):
        train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
