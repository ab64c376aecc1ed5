"""Peak memory of one training step with and without gradient checkpointing and bf16 autocast.

    python bench/train_memory.py                                  # tiny model, CPU, batch 16 at 64x64
    python bench/train_memory.py --model fgbg_sd15 --device cuda --batch 2 --size 512

A "step" is loss + backward + AdamW step of the image stage on the first training batch of
``fgbg-synth`` clips (rendered once into a temporary folder) read by the datamodule. Each variant runs in a fresh process: fp32 or bf16
autocast, gradient checkpointing of ``referencenet.unet``, ``controlnet`` and ``denoiser.unet`` off or on
(the ``callbacks.gradient_checkpointing`` callback's default models). Measured: CUDA, ``torch.cuda.max_memory_allocated`` during the step minus
the memory allocated before it; CPU, the process's peak RSS (``ru_maxrss``) after the step
minus its RSS before it. Both count activations, gradients and the AdamW state the first
step allocates, over the model and batch already in memory. Writes
``bench/results/train_memory.json`` (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "train_memory.json"
VARIANTS = [("32-true", False), ("32-true", True), ("bf16-mixed", False), ("bf16-mixed", True)]


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def one_variant(args) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from fgbg.callbacks.gradient_checkpointing import GradientCheckpointing
    from fgbg.train import CONF_DIR

    device = torch.device(args.device)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=synthetic_tiny_image", f"model={args.model}", "model.stage=image",
            f"data.train_shards={args.shards}", f"data.resolution={args.size}", f"data.batch_size={args.batch}",
            "data.num_workers=0",
        ])  # fmt: skip
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device)
    model.train()
    if args.checkpointing:
        GradientCheckpointing(enabled=True).setup(None, model, "fit")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    data = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    bf16 = args.precision == "bf16-mixed"

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**30
    else:
        before = rss_gib()
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model.compute_loss(data, dropout=False)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {
        "precision": args.precision,
        "gradient_checkpointing": args.checkpointing,
        "before_GiB": round(before, 3),
        "peak_GiB": round(peak, 3),
        "step_peak_over_before_GiB": round(peak - before, 3),
        "step_s": round(time.perf_counter() - t0, 2),
        "loss": round(float(loss), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fgbg_tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--precision", default=None, help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shards", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precision:
        print(json.dumps(one_variant(args)))
        return

    from fgbg.synth import SynthConfig, synthesize

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthConfig(output=tmp, num_videos=args.batch, videos_per_shard=args.batch, seed=0,
                               height=args.size, width=args.size, num_frames=8))  # fmt: skip
        (shard,) = Path(tmp).glob("train-*.tar")
        for precision, checkpointing in VARIANTS:
            cmd = [sys.executable, __file__, f"--model={args.model}", f"--device={args.device}",
                   f"--batch={args.batch}", f"--size={args.size}", f"--precision={precision}", f"--shards={shard}"]  # fmt: skip
            cmd += ["--checkpointing"] if checkpointing else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"variant {precision}, checkpointing={checkpointing} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]["step_peak_over_before_GiB"]
    for row in rows:
        row["vs_fp32_no_checkpointing"] = round(row["step_peak_over_before_GiB"] / base, 3) if base > 0 else None
    result = {
        "model": args.model,
        "stage": "image",
        "device": args.device,
        "batch": args.batch,
        "size": args.size,
        "measure": "cuda max_memory_allocated - allocated before"
        if args.device.startswith("cuda")
        else "peak RSS (ru_maxrss) - RSS before, fresh process per variant",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| precision | gradient checkpointing | step peak over before | vs fp32 without | step time |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
              f"{r['step_peak_over_before_GiB']:.3f} GiB | {r['vs_fp32_no_checkpointing']:.2f} | {r['step_s']} s |")  # fmt: skip


if __name__ == "__main__":
    main()
