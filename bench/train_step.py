"""Training-step benchmark of the full model: step time, frames/s, peak memory, and model
FLOPs per step (``torch.utils.flop_counter``) over step time as a fraction of a dense-matmul
peak measured in the same run.

    python bench/train_step.py                      # tiny model, CPU, both stages
    python bench/train_step.py --model fgbg_sd15 --device cuda --batch 4 --frames 16 --size 512

A "step" is loss + backward + AdamW step on random batches of the batch contract (the
data pipeline is not timed). Writes ``bench/results/train_step.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from fgbg.train import CONF_DIR


def random_batch(b: int, t: int, size: int, n: int, device) -> dict:
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.rand(*s, generator=g).to(device)

    return {
        "frames": r(b, t, 3, size, size) * 2 - 1,
        "reference": r(b, 3, size, size) * 2 - 1,
        "reference_mask": (r(b, 1, size, size) > 0.7).float(),
        "pose_maps": r(b, t, 3, size, size),
        "keypoints": torch.cat([r(b, t, 18, 2) * size, torch.ones(b, t, 18, 1, device=device)], -1),
        "reference_keypoints": torch.cat([r(b, 18, 2) * size, torch.ones(b, 18, 1, device=device)], -1),
        "body_region": (r(b, t, 1, size, size) > 0.7).float(),
        "track_maps": r(b, t, 3, size, size),
        "tracks": r(b, t, n, 2) * size,
        "track_visible": r(b, t, n) > 0.2,
        "track_anchor": r(b, n, 2) * size,
        "track_anchor_visible": r(b, n) > 0.1,
        "link_frame": r(b, 3, size, size) * 2 - 1,
        "link_available": torch.ones(b, dtype=torch.bool, device=device),
    }


def matmul_peak(device, n: int = 2048, reps: int = 10) -> float:
    """Dense fp32 matmul throughput in FLOP/s (best of 3 timings of ``reps`` products)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


DENSE_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution_backward",
             "aten::mkldnn_convolution", "aten::_convolution", "aten::_scaled_dot_product_flash_attention_for_cpu",
             "aten::_scaled_dot_product_flash_attention_for_cpu_backward")  # fmt: skip


def profile_steps(step, steps: int, top: int = 15) -> dict:
    """Where a step's time goes: self CPU time per aten op over ``steps`` steps, and the share spent in dense ops
    (matmuls, convolutions, fused attention: the work the FLOP count measures) against everything else."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in rows)
    dense = sum(e.self_cpu_time_total for e in rows if e.key in DENSE_OPS)
    rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "steps": steps,
        "dense_op_share": round(dense / max(total, 1), 3),
        "top_ops": [
            {
                "op": e.key,
                "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 1),
                "share": round(e.self_cpu_time_total / max(total, 1), 3),
                "calls_per_step": e.count // steps,
            }
            for e in rows[:top]
        ],
    }


def bench_stage(model_name: str, stage: str, batch: int, frames: int, size: int, steps: int, device, overrides,
                profile: int = 0):  # fmt: skip
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}", f"model.stage={stage}", *overrides])
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    data = random_batch(batch, frames, size, 20, device)

    def step():
        loss = model.compute_loss(data, dropout=False)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, kernels)
    with FlopCounterMode(display=False) as counter:
        model.compute_loss(data, dropout=False)["loss"].backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    frames_per_step = batch * (1 if stage == "image" else frames)
    if torch.device(device).type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process max RSS (GiB)
    out = {
        "model": model_name,
        "stage": stage,
        "batch": batch,
        "frames_per_clip": frames if stage == "video" else 1,
        "size": size,
        "params_total_M": round(model.num_parameters() / 1e6, 3),
        "params_trainable_M": round(sum(p.numel() for p in params) / 1e6, 3),
        "step_s_median": round(t, 4),
        "step_s_all": [round(x, 4) for x in times],
        "frames_per_s": round(frames_per_step / t, 2),
        "gflop_per_step": round(flops / 1e9, 2),
        "achieved_gflop_s": round(flops / t / 1e9, 2),
        "peak_memory_gib": round(peak_mem, 3),
    }
    if profile and torch.device(device).type == "cpu":
        out["profile"] = profile_steps(step, profile)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fgbg_tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16, help="stage image batch (clips of one frame)")
    ap.add_argument("--video-batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8, help="frames per clip in stage video")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--stages", default="image,video")
    ap.add_argument("--profile", type=int, default=0, help="also profile this many steps (CPU): top ops, dense share")
    ap.add_argument("--out", default="bench/results/train_step.json")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the model config")
    args = ap.parse_args()
    overrides = list(args.overrides)
    if args.model == "fgbg_sd15":  # shapes only: random weights, nothing to load
        overrides += [
            "model.unet.pretrained=null",
            "model.latent.pretrained=null",
            "model.image_encoder.pretrained=null",
        ]
    peak = matmul_peak(args.device)
    results = []
    for stage in args.stages.split(","):
        b = args.batch if stage == "image" else args.video_batch
        r = bench_stage(args.model, stage, b, args.frames, args.size, args.steps, args.device, overrides, args.profile)
        r["fraction_of_matmul_peak"] = round(r["achieved_gflop_s"] * 1e9 / peak, 3)
        results.append(r)
        print(json.dumps(r))
    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "matmul_peak_gflop_s": round(peak / 1e9, 1),
        "results": results,
        "command": "python bench/train_step.py " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                            if k not in ("overrides",)),
    }  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"matmul peak {report['matmul_peak_gflop_s']} GFLOP/s; wrote {args.out}")


if __name__ == "__main__":
    main()
