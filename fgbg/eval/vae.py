"""Reconstruction quality of a trained autoencoder (``experiment=synthetic_tiny_vae``) on held-out frames.

    python -m fgbg.eval.vae <run>/vae data/synthetic/val-000001.tar --out vae_eval.json [--lpips-weights W] \
        [--sheet vae_sheet.png]

PSNR of every frame decoded from the posterior's mean (mean and 5th percentile), the person's PSNR and
appearance error (``fgbg.eval.appearance``'s Lab-histogram EMD inside the shard's person mask: the floor of
any latent model's person on this VAE, since the denoiser's frames go through the same decoder), and LPIPS
with local AlexNet weights when given (none are downloaded). ``--sheet`` writes a PNG of held-out frames beside their
reconstructions (evenly spaced over the set, three pairs per row, upscaled 3x) to look at.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fgbg.eval.metrics import LPIPS, _masked_mean, _psnr_from_mse


def _load_vae(vae_dir: str) -> torch.nn.Module:
    """The diffusers VAE of a folder, by its config's class: ``AutoencoderKL``, ``AsymmetricAutoencoderKL`` (a
    decoder of its own size for a frozen encoder, ``model.encoder_from``) or ``AutoencoderDC``."""
    import diffusers

    config = Path(vae_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{vae_dir}: expected a diffusers VAE folder (config.json and its weights)")
    name = json.loads(config.read_text()).get("_class_name", "AutoencoderKL")
    if name not in ("AutoencoderKL", "AsymmetricAutoencoderKL", "AutoencoderDC"):
        raise ValueError(
            f"{config}: _class_name={name!r}, expected AutoencoderKL, AsymmetricAutoencoderKL or AutoencoderDC"
        )
    return getattr(diffusers, name).from_pretrained(vae_dir, local_files_only=True)


def _round_trip(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Decode the posterior's mode (an ``AutoencoderDC``: its deterministic latents) of ``images``, clamped."""
    out = vae.encode(images)
    z = out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latent
    return vae.decode(z).sample.clamp(-1, 1)


@torch.no_grad()
def evaluate_vae(
    vae_dir: str,
    shards: str | list[str],
    max_images: int = 1024,
    lpips_weights: str | None = None,
    resolution: int = 64,
    device: str = "cpu",
    sheet: str | None = None,
    sheet_images: int = 12,
) -> dict[str, Any]:
    """Every frame of the clips in ``shards`` (at most ``max_images``) through the VAE folder ``vae_dir``."""
    from fgbg.data.shards import expand_shards, iter_clips
    from fgbg.data.transforms import fit_clip
    from fgbg.eval.appearance import appearance_metrics

    vae = _load_vae(vae_dir).to(device).eval()
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for clip in iter_clips(expand_shards(shards)):
        clip = fit_clip(clip, resolution, resolution)
        images.append(torch.from_numpy(np.array(clip.frames)).permute(0, 3, 1, 2).float() / 127.5 - 1)
        masks.append(torch.from_numpy(np.array(clip.masks))[:, None].float())
        if sum(len(x) for x in images) >= max_images:
            break
    if not images:
        raise ValueError(f"evaluate_vae: no clips in {shards!r}")
    x = torch.cat(images)[:max_images]
    person = torch.cat(masks)[:max_images]
    lpips = None
    if lpips_weights:
        lpips = LPIPS(backbone_weights=lpips_weights).to(device).eval()
    values, lp, person_psnr, appearance = [], [], [], []
    for chunk, mask in zip(x.split(64), person.split(64), strict=True):
        chunk, mask = chunk.to(device), mask.to(device)
        recon = _round_trip(vae, chunk)
        err = ((recon - chunk) / 2).square()
        values.append(_psnr_from_mse(err.flatten(1).mean(1)).cpu())  # peak 1 on [0, 1]
        person_psnr.append(_psnr_from_mse(_masked_mean(err, mask)).cpu())  # NaN on a frame without a person
        appearance.append(appearance_metrics((recon + 1) / 2, (chunk + 1) / 2, mask)["appearance_hist"])
        if lpips is not None:
            lp.append(lpips((recon + 1) / 2, (chunk + 1) / 2).cpu().flatten())
    v = torch.cat(values)

    def present_mean(values: list[torch.Tensor]) -> float | None:  # over the frames that show a person
        t = torch.cat(values)
        t = t[~t.isnan()]
        return float(t.mean()) if len(t) else None

    if sheet:
        picks = torch.linspace(0, len(x) - 1, min(sheet_images, len(x))).round().long()
        pairs = x[picks].to(device)
        write_pair_sheet(pairs, _round_trip(vae, pairs), sheet)
    return {
        "vae": str(vae_dir),
        "shards": shards,
        "images": len(v),
        "resolution": resolution,
        "psnr_mean": float(v.mean()),
        "psnr_p05": float(v.quantile(0.05)),
        "psnr_person": present_mean(person_psnr),  # PSNR of the person's pixels
        "appearance_person": present_mean(appearance),  # Lab-histogram EMD, fgbg.eval.appearance
        "scaling_factor": float(vae.config.scaling_factor),
        "parameters": sum(p.numel() for p in vae.parameters()),
        "lpips": float(torch.cat(lp).mean()) if lp else None,
    }


def write_pair_sheet(images: torch.Tensor, recon: torch.Tensor, path: str, per_row: int = 3, scale: int = 3) -> None:
    """PNG of (image | reconstruction) pairs, ``per_row`` pairs a row, a 2-pixel gap, nearest upscaling."""
    from PIL import Image

    def to_u8(t: torch.Tensor) -> np.ndarray:
        return ((t.float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

    n, _, h, w = images.shape
    gap = 2
    rows = (n + per_row - 1) // per_row
    cell_w = 2 * w + gap
    canvas = np.full((rows * (h + gap) - gap, per_row * (cell_w + 3 * gap) - 3 * gap, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, per_row)
        y, x0 = r * (h + gap), c * (cell_w + 3 * gap)
        canvas[y : y + h, x0 : x0 + w] = to_u8(images[i])
        canvas[y : y + h, x0 + w + gap : x0 + cell_w] = to_u8(recon[i])
    out = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    out.save(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Reconstruction PSNR (and LPIPS) of a trained VAE on held-out shards")
    p.add_argument(
        "vae_dir", help="a diffusers AutoencoderKL (AsymmetricAutoencoderKL, AutoencoderDC) folder, e.g. <run>/vae"
    )
    p.add_argument("shards", help="a shard path or brace pattern")
    p.add_argument("--max-images", type=int, default=1024)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--lpips-weights", default=None, help="local torchvision AlexNet ImageNet weights for LPIPS")
    p.add_argument("--out", default=None, help="JSON file to write")
    p.add_argument("--sheet", default=None, help="PNG of held-out frames beside their reconstructions")
    args = p.parse_args(argv)
    res = evaluate_vae(args.vae_dir, args.shards, args.max_images, args.lpips_weights, args.resolution,
                       sheet=args.sheet)  # fmt: skip
    text = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
