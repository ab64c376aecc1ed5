"""How far can a latent model's person go on a VAE? The person hint, the VAE, and their product, measured.

    python bench/person_hint_floor.py [--vae fgbg/assets/tiny_vae] [--shards data/synthetic/val-000000.tar] \
        [--clips 32] [--out bench/results/person_hint_floor.json]

On validation clips (8 frames at 64x64, as stage video trains) it scores four stand-ins for a generated
frame against the true frame, by ``fgbg.eval.appearance``'s person appearance error (Lab-histogram EMD
inside the true person mask):

  hint_pasted      the reference person warped bone by bone to the true pose (``fgbg.models.person_hint``,
                   in pixel space, as ``model.hint_space=pixel`` builds it) where the hint is valid, the true
                   frame elsewhere: what the hint carries
  hint_through_vae the same frame encoded and decoded by the VAE (the posterior's mean): what a latent model
                   that copied the hint perfectly would score
  truth_through_vae the true frame through the VAE: the VAE's own floor
  reference        the reference frame itself: a model that ignores the pose

plus ``hint_coverage``, the fraction of the true person's pixels where the hint is valid.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(vae_dir: str, shards: str, clips: int = 32, batch_size: int = 8) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from fgbg.eval.appearance import appearance_metrics
    from fgbg.models.latent import VAELatent
    from fgbg.models.person_hint import person_hint

    # the shards stand in for the training ones too: the datamodule checks that they exist (a fresh clone has none)
    overrides = ["experiment=synthetic_tiny_latent_video", "model.init_from=unused", f"data.val_shards={shards}",
                 f"data.train_shards={shards}", f"data.batch_size={batch_size}", "data.num_workers=0"]  # fmt: skip
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data = instantiate(cfg.data)
    data.setup("fit")
    vae = VAELatent(vae_dir, subfolder=None, sample_posterior=False)
    radius = float(cfg.model.person_hint_radius)
    scores: dict[str, list] = {k: [] for k in ("hint_pasted", "hint_through_vae", "truth_through_vae", "reference")}
    coverage = []
    seen = 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            frames = batch["frames"]  # (B, T, 3, H, W) in [-1, 1]
            size = tuple(frames.shape[-2:])
            truth, mask = (frames.flatten(0, 1) + 1) / 2, batch["masks"].float().flatten(0, 1)
            hint = person_hint(batch["reference"], batch["reference_mask"], batch["reference_keypoints"],
                               batch["keypoints"], size, radius=radius)  # fmt: skip
            valid = (hint[:, :, 3:] > 0.5).float()
            pasted = (valid * hint[:, :, :3] + (1 - valid) * frames).flatten(0, 1)
            stand_ins = {
                "hint_pasted": pasted,
                "hint_through_vae": vae.decode(vae.encode(pasted)),
                "truth_through_vae": vae.decode(vae.encode(frames.flatten(0, 1))),
                "reference": batch["reference"][:, None].expand_as(frames).flatten(0, 1),
            }
            for name, x in stand_ins.items():
                scores[name].append(appearance_metrics(((x + 1) / 2).clamp(0, 1), truth, mask)["appearance_hist"])
            person = mask.flatten(1).sum(1)
            coverage.append((valid.flatten(0, 1) * mask).flatten(1).sum(1)[person > 0] / person[person > 0])
            seen += frames.shape[0]
            if seen >= clips:
                break
    if not seen:
        raise ValueError(f"person_hint_floor: no clips in {shards!r}")

    def shown(path: str) -> str:  # paths inside the repository as the repository names them
        return os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path

    out = {"vae": shown(vae_dir), "shards": shown(shards), "clips": seen, "frames_per_clip": int(cfg.data.clip_len)}
    for name, values in scores.items():
        v = torch.cat(values)
        v = v[~v.isnan()]
        out[name] = float(v.mean()) if len(v) else math.nan
    out["hint_coverage"] = float(torch.cat(coverage).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", default=os.path.join(ROOT, "fgbg", "assets", "tiny_vae"), help="AutoencoderKL folder")
    p.add_argument("--shards", default=os.path.join(ROOT, "data", "synthetic", "val-000000.tar"))
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    res = measure(args.vae, args.shards, args.clips)
    text = json.dumps(res, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
