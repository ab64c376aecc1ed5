"""How far a linear map gets: PCA of non-overlapping pixel patches, fitted on training frames, scored on held-out
frames (the bar a tiny VAE of the same latent size should clear; docs/model.md, "An AutoencoderDC").

    python bench/vae_linear_floor.py [--train data/synthetic/train-000000.tar] [--val data/synthetic/val-000001.tar]

Writes bench/results/vae_linear_floor.json: held-out PSNR (peak 1 on [0, 1], mean over frames) of 4x4x3 patches
kept in 16 and 8 numbers (a 16x16x16 / 16x16x8 latent of a 64x64 frame) and 8x8x3 patches in 64.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def frames(shards: str, n: int, resolution: int = 64) -> torch.Tensor:
    from fgbg.data.shards import expand_shards, iter_clips
    from fgbg.data.transforms import fit_clip

    out: list[torch.Tensor] = []
    for clip in iter_clips(expand_shards(shards)):
        clip = fit_clip(clip, resolution, resolution)
        out.append(torch.from_numpy(np.array(clip.frames)).permute(0, 3, 1, 2).float() / 255)
        if sum(len(x) for x in out) >= n:
            break
    if not out:
        raise ValueError(f"{shards}: no clips")
    return torch.cat(out)[:n]


def patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """(M, C, H, W) -> (M * H/p * W/p, C * p * p)."""
    m, c = x.shape[:2]
    return x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * p * p)


def pca_psnr(train: torch.Tensor, val: torch.Tensor, p: int, k: int) -> float:
    torch.manual_seed(0)
    fit = patches(train, p)
    mean = fit.mean(0)
    _, _, basis = torch.pca_lowrank(fit - mean, q=k, center=False, niter=4)
    held = patches(val, p)
    recon = ((held - mean) @ basis @ basis.T + mean).clamp(0, 1)
    mse = (recon - held).square().reshape(len(val), -1).mean(1)
    return float((-10 * torch.log10(mse.clamp_min(1e-10))).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default="data/synthetic/train-000000.tar")
    ap.add_argument("--val", default="data/synthetic/val-000001.tar")
    ap.add_argument("--train-frames", type=int, default=2048)
    ap.add_argument("--val-frames", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "vae_linear_floor.json"))
    args = ap.parse_args()
    train, val = frames(args.train, args.train_frames), frames(args.val, args.val_frames)
    rows = [{"patch": p, "numbers": k, "latent": f"{64 // p}x{64 // p}x{k}", "psnr": pca_psnr(train, val, p, k)}
            for p, k in ((4, 16), (4, 8), (8, 64))]  # fmt: skip
    result = {"train": args.train, "val": args.val, "train_frames": len(train), "val_frames": len(val), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for r in rows:
        print(f"[vae-linear-floor] {r['patch']}x{r['patch']}x3 patches in {r['numbers']} numbers ({r['latent']}): "
              f"{r['psnr']:.2f} dB held out")  # fmt: skip


if __name__ == "__main__":
    main()
