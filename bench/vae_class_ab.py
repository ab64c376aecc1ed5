"""Which tiny VAE class learns fastest on this CPU? A standalone loop (the recipe's loss, 32x32 crops of batch 16,
AdamW 2e-3 with 100 warm-up steps and a cosine over the wall-clock budget), held-out PSNR every 500 steps.

    python bench/vae_class_ab.py ARM MINUTES [THREADS [SAVE_DIR]] > bench/results/vae_class_ab_ARM.log

ARM: kl16 (the AutoencoderKL of conf/model/tiny_vae.yaml with 16 latent channels), dcA (conf/model/tiny_vae_dc.yaml's
AutoencoderDC), dcB (a wider AutoencoderDC whose encoder downsamples at its input). The 2026-12-02 logs
(bench/results/vae_class_ab_{kl16,dcA}.log) ran kl16 and dcA side by side, one thread each, 12 minutes.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DC = dict(in_channels=3, latent_channels=16, attention_head_dim=16, encoder_block_types="ResBlock",
          decoder_block_types="ResBlock", encoder_qkv_multiscales=((), (), ()), decoder_qkv_multiscales=((), (), ()),
          decoder_norm_types="rms_norm", decoder_act_fns="silu")  # fmt: skip
LR = 2e-3


def load(shards: str, n: int) -> torch.Tensor:
    from fgbg.data.shards import expand_shards, iter_clips
    from fgbg.data.transforms import fit_clip

    out = []
    for clip in iter_clips(expand_shards(shards)):
        clip = fit_clip(clip, 64, 64)
        out.append(torch.from_numpy(np.array(clip.frames)).permute(0, 3, 1, 2))
        if sum(len(x) for x in out) >= n:
            break
    return torch.cat(out)[:n]


def build(arm: str):
    from diffusers import AutoencoderDC, AutoencoderKL

    if arm == "kl16":
        return AutoencoderKL(latent_channels=16, block_out_channels=[32, 32, 48], layers_per_block=1,
                             down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                             norm_num_groups=16)  # fmt: skip
    if arm == "dcA":
        return AutoencoderDC(**DC, encoder_block_out_channels=(32, 64, 64), decoder_block_out_channels=(32, 64, 64),
                             encoder_layers_per_block=(1, 1, 2), decoder_layers_per_block=(1, 1, 2))  # fmt: skip
    if arm == "dcB":
        return AutoencoderDC(**DC, encoder_block_out_channels=(32, 64, 128), decoder_block_out_channels=(32, 64, 128),
                             encoder_layers_per_block=(0, 1, 2), decoder_layers_per_block=(1, 1, 2))  # fmt: skip
    raise SystemExit(f"ARM={arm!r}: expected kl16, dcA or dcB")


def main() -> None:
    arm, minutes = sys.argv[1], float(sys.argv[2])
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    from fgbg.models.latent import encode_posterior
    from fgbg.models.vae import sobel

    torch.manual_seed(0)
    train = load(os.path.join(ROOT, "data/synthetic/train-{000000..000007}.tar"), 12000)
    val = load(os.path.join(ROOT, "data/synthetic/val-000001.tar"), 512).float() / 127.5 - 1
    vae = build(arm)
    print(arm, "params", sum(p.numel() for p in vae.parameters()), flush=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=LR, weight_decay=0)

    def psnr_val() -> float:
        vae.eval()
        vals = []
        with torch.no_grad():
            for c in val.split(64):
                r = vae.decode(encode_posterior(vae, c)[0]).sample.clamp(-1, 1)
                vals.append(10 * torch.log10(1 / ((r - c) / 2).square().flatten(1).mean(1)))
        vae.train()
        return float(torch.cat(vals).mean())

    t0, step, total = time.time(), 0, minutes * 60
    while time.time() - t0 < total:
        x = train[torch.randint(0, len(train), (16,))].float() / 127.5 - 1
        ys, xs = torch.randint(0, 33, (16,)).tolist(), torch.randint(0, 33, (16,)).tolist()
        x = torch.stack([im[:, y : y + 32, xx : xx + 32] for im, y, xx in zip(x, ys, xs, strict=True)])
        z, post = encode_posterior(vae, x)
        kl = post.kl().mean() * 1e-6 if post is not None else 0.0
        r = vae.decode(z).sample
        loss = (r - x).abs().mean() + (r - x).square().mean() + 0.1 * (sobel(r) - sobel(x)).abs().mean() + kl
        frac = min((time.time() - t0) / total, 1.0)
        for g in opt.param_groups:
            g["lr"] = LR * min(1, step / 100) * 0.5 * (1 + math.cos(math.pi * frac))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 500 == 0:
            print(step, round(time.time() - t0), "psnr", round(psnr_val(), 2), flush=True)
    print("final", step, round(time.time() - t0), psnr_val(), flush=True)
    if len(sys.argv) > 4:
        vae.save_pretrained(sys.argv[4])


if __name__ == "__main__":
    main()
