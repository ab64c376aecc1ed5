"""``fgbg-evaluate``: generate held-out samples from their own first frame, pose and tracks; score them.

    fgbg-evaluate ckpt_path=model.safetensors data.val_shards='data/heldout/test-{000000..000003}.tar' output_dir=out

Each sample is fitted to the model's resolution, generated clip by clip (the same predict loop
as ``fgbg-generate``: one reference pass, link frames between clips) from its first frame and
that frame's person mask and keypoints, driven by its own pose and background tracks, and
compared with its true frames 1..T-1 (frame 0 is the reference itself). Writes ``metrics.json``
(means over samples, and per sample) and ``sheet.png``. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fgbg.callbacks.progress import StepProgress
from fgbg.data.render import contact_sheet, save_png
from fgbg.data.shards import SkipCounter, count_tar_groups, iter_clips
from fgbg.data.transforms import fit_clip
from fgbg.datamodules.clips import expand_shards
from fgbg.datamodules.video_jobs import VideoJobs, VideoJobsDataModule
from fgbg.eval import (
    appearance_metrics,
    clip_index,
    colour_drift,
    colour_error,
    per_clip,
    per_frame_metrics,
    seam_score,
    seen_colour_error,
    track_following_error,
    track_following_error_per_clip,
)
from fgbg.generate import load_model, model_data_settings, pick_device
from fgbg.generation.motion import DrivingMotion
from fgbg.generation.predictor import LongVideoPredictor
from fgbg.utils.config import CONF_DIR

log = logging.getLogger(__name__)


def _unit(frames: torch.Tensor) -> torch.Tensor:
    return ((frames.float() + 1) / 2).clamp(0, 1)


def frames_path(out_dir: str | os.PathLike, key: str) -> Path:
    """Where ``save_frames=true`` stores sample ``key``'s generated video (and ``rescore=true`` reads it)."""
    return Path(out_dir) / "frames" / f"{str(key).replace('/', '_')}.npy"


def _uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [0, 1] -> (T, H, W, 3) uint8, as ``save_frames`` stores a generated video."""
    return (frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def predict_trainer(device: str) -> L.Trainer:
    """The one Trainer whose predict loop generates every sample (its own bar off: progress is per sample)."""
    return L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=True,
    )  # fmt: skip


# Per-frame measures whose curve over generation clips goes into per_clip (docs/evaluation.md).
PER_CLIP_KEYS = ("appearance_hist", "appearance_lpips", "ssim_background", "gradcorr_background", "psnr_person")


def frame_and_clip_metrics(
    gen: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor, clip_len: int, lpips=None
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Frames 1..T-1 of a sample (frame 0 is the reference): frame metrics, appearance and background
    structure averaged over frames, and the per-clip curve of ``PER_CLIP_KEYS``."""
    frames = per_frame_metrics(gen[1:], truth[1:], mask[1:], lpips)
    frames |= appearance_metrics(gen[1:], truth[1:], mask[1:], lpips, ssim_background=frames["ssim_background"])
    clips = clip_index(gen.shape[0] - 1, clip_len, first_frame=1)
    means = {k: _mean(v.tolist()) for k, v in frames.items()}
    return means, {k: per_clip(frames[k], clips) for k in PER_CLIP_KEYS if k in frames}


def evaluate_sample(
    trainer: L.Trainer, predictor, clip, data: dict[str, Any], cfg: DictConfig, lpips=None
) -> tuple[dict, np.ndarray, Any]:
    """One sample -> (its metrics, generated frames (T, H, W, 3) uint8, the clip fitted to the model's size)."""
    res = int(data.get("resolution") or 32)
    clip = fit_clip(clip, res, res)
    t = clip.num_frames
    trained_len = data.get("clip_len") if data.get("stage") == "video" else None
    clip_len = int(cfg.clip_len or trained_len or 8)
    max_tracks = int(data.get("max_tracks") or 50)
    motion = DrivingMotion(
        clip.pose, res, res, tracks=clip.tracks, visible=clip.visible,
        num_points=min(int(cfg.num_tracks), max_tracks), source=clip.key,
    )  # fmt: skip
    render = {
        k: data[k]
        for k in ("pose_line_scale", "pose_conf_threshold", "track_sigma", "body_limb_scale")
        if data.get(k) is not None
    }
    jobs = VideoJobs(
        clip.frames[0], motion, t, clip_len, max_tracks,
        reference_mask=clip.masks[0], reference_keypoints=clip.pose[0], render=render,
    )  # fmt: skip
    out = trainer.predict(predictor, datamodule=VideoJobsDataModule(jobs))
    pred = torch.cat([o["frames"][0].cpu() for o in out])  # (T, 3, H, W) in [-1, 1]
    gen = _unit(pred)
    gen_u8 = _uint8(gen)
    return video_metrics(gen, gen_u8, clip, clip_len, res, lpips), gen_u8, clip


def video_metrics(gen: torch.Tensor, gen_u8: np.ndarray, clip, clip_len: int, res: int, lpips=None) -> dict[str, Any]:
    """Every per-sample measure of a generated video ``gen`` (T, 3, H, W) in [0, 1], also as ``gen_u8``
    (T, H, W, 3) uint8 for the tracker, against ``clip`` (the true sample at the same size): frame metrics,
    appearance, tracks, seams and colour over clips."""
    t = clip.num_frames
    truth = torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(0, 3, 1, 2).float() / 255.0
    mask = torch.from_numpy(clip.masks[:, None]).float()
    m: dict[str, Any] = {"key": clip.key, "frames": t, "clip_len": clip_len, "resolution": res}
    means, curves = frame_and_clip_metrics(gen, truth, mask, clip_len, lpips)
    m |= means | {"per_clip": curves}
    tr = track_following_error(gen_u8, clip.tracks, clip.visible)
    m |= {k: v for k, v in tr.items() if not isinstance(v, list)}
    m["track_error_frame"] = m["track_error_px"] / res  # in frame widths, so models of different resolutions compare
    # Re-seeded every clip, counted where LK follows the true video (docs/evaluation.md): the tracker's own error
    # on the truth no longer hides the model's.
    tc = track_following_error_per_clip(gen_u8, clip.tracks, clip.visible, clip_len, truth=clip.frames)
    m |= {k: v for k, v in tc.items() if not isinstance(v, list)}
    m["track_error_clip_frame"] = m["track_error_clip_px"] / res
    if t >= clip_len + 1 and clip_len >= 2:
        m |= seam_score(gen, clip_len)
        m |= colour_drift(gen, mask, clip_len)  # per-clip lists stay in per_sample; means use the scalars
        m |= colour_error(gen, truth, mask, clip_len)
        m |= seen_colour_error(gen, truth, mask, clip.tracks, clip.visible, clip_len)
        # The true video's own drift (new background entering a moving camera's view): the floor to compare with.
        true_drift = colour_drift(truth, mask, clip_len)
        m |= {f"{k}_truth": v for k, v in true_drift.items() if not isinstance(v, list)}
    return m


def _mean(values: list[float]) -> float:
    vals = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _mean_curves(per_sample: list[dict]) -> dict[str, list[float]]:
    """Per key, the mean over samples of clip k's value, for every clip some sample has."""
    keys = sorted({k for m in per_sample for k in m.get("per_clip", {})})
    out = {}
    for key in keys:
        curves = [m["per_clip"][key] for m in per_sample if key in m.get("per_clip", {})]
        length = max(len(c) for c in curves)
        out[key] = [_mean([c[i] for c in curves if i < len(c)]) for i in range(length)]
    return out


def _distribution_metrics(cfg: DictConfig) -> dict[str, Any]:
    """FID (per frame) and FVD (per clip of ``fvd_clip_frames``) when their weights are given."""
    from fgbg.eval.features import FrechetDistance, InceptionFeatures, load_video_features

    out: dict[str, Any] = {}
    if cfg.get("fid_weights"):
        out["fid"] = FrechetDistance(InceptionFeatures(cfg.fid_weights, image_size=int(cfg.fid_image_size)))
    if cfg.get("fvd_weights"):
        out["fvd"] = FrechetDistance(load_video_features(cfg.fvd_weights, cfg.fvd_arch))
    return out


def _update_distributions(metrics: dict, truth: torch.Tensor, gen: torch.Tensor, clip_frames: int) -> None:
    """truth, gen: (T, 3, H, W) in [0, 1] (frames 1..T-1 of a sample)."""
    if "fid" in metrics:
        metrics["fid"].update(truth, real=True)
        metrics["fid"].update(gen, real=False)
    if "fvd" in metrics:
        n = truth.shape[0] // clip_frames
        if n == 0:
            raise ValueError(f"fvd_clip_frames={clip_frames}: the sample has only {truth.shape[0]} generated frames")
        cut = n * clip_frames
        metrics["fvd"].update(truth[:cut].unflatten(0, (n, clip_frames)), real=True)
        metrics["fvd"].update(gen[:cut].unflatten(0, (n, clip_frames)), real=False)


def _compute_distribution(name: str, metric) -> float:
    try:
        return float(metric.compute())
    except ValueError as err:  # fewer than 2 samples on a side
        log.warning("%s not computed: %s", name, err)
        return float("nan")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.data.val_shards``; returns and writes ``metrics.json``."""
    out_dir = Path(cfg.output_dir)
    if (out_dir / "metrics.json").exists() and not cfg.overwrite:
        raise FileExistsError(f"{out_dir / 'metrics.json'} exists; choose another output_dir or set overwrite=true")
    val = cfg.data.val_shards  # a manifest gives the held-out videos of its split
    shards = expand_shards(val if isinstance(val, str) else OmegaConf.to_container(val), split="val")
    data = model_data_settings(cfg.ckpt_path)
    device = pick_device(cfg.device)
    model = load_model(cfg.ckpt_path, bool(cfg.ema), device)
    predictor = LongVideoPredictor.from_config(model, cfg, data.get("generation"))
    distributions = _distribution_metrics(cfg)
    lpips = None
    if cfg.get("lpips_backbone"):
        from fgbg.eval.metrics import LPIPS

        lpips = LPIPS(cfg.lpips_backbone, net_type=str(cfg.get("lpips_net", "alex")))  # frames are scored on the CPU
    counter = SkipCounter()
    per_sample, rows = [], []
    trainer = predict_trainer(device)  # one for all samples
    progress = StepProgress(plain=True)  # one line per sample, with the time per sample and an ETA
    total = min(int(cfg.data.max_samples), sum(count_tar_groups(s) for s in shards if os.path.isfile(s)) or math.inf)
    progress.start()
    for i, clip in enumerate(iter_clips(shards, counter)):
        if i >= int(cfg.data.max_samples):
            break
        m, gen, truth = evaluate_sample(trainer, predictor, clip, data, cfg, lpips)
        per_sample.append(m)
        if distributions:
            truth_u = torch.from_numpy(truth.frames).permute(0, 3, 1, 2) / 255.0
            gen_u = torch.from_numpy(gen).permute(0, 3, 1, 2).float() / 255.0
            _update_distributions(distributions, truth_u[1:].float(), gen_u[1:], int(cfg.fvd_clip_frames))
        if cfg.get("save_frames"):
            (out_dir / "frames").mkdir(parents=True, exist_ok=True)
            np.save(frames_path(out_dir, m["key"]), gen)
        log.info("%s: %s: psnr %.2f (bg %.2f, person %.2f), track error %.2f px",
                 progress.report(i + 1, total, "sample"), m["key"], m["psnr"], m["psnr_background"],
                 m["psnr_person"], m.get("track_error_px", float("nan")))  # fmt: skip
        if len(rows) < 2 * int(cfg.sheet_samples):
            rows += [{"frames": truth.frames, "label": f"truth {clip.key}"}, {"frames": gen, "pose": truth.pose,
                     "tracks": truth.tracks, "visible": truth.visible, "label": "generated"}]  # fmt: skip
    if not per_sample:
        raise ValueError(f"no readable sample in {shards} (skips: {counter.as_dict()})")
    report = {
        "ckpt_path": str(cfg.ckpt_path),
        "shards": shards,
        "samples": len(per_sample),
        "skipped": counter.as_dict(),
        "settings": OmegaConf.to_container(cfg, resolve=True)
        | {"sampling": predictor.sampling},  # null keys resolved as the model recommends
        **_summary(per_sample),
        **{name: _compute_distribution(name, metric) for name, metric in distributions.items()},
        "per_sample": per_sample,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    if rows:
        save_png(contact_sheet(rows), out_dir / "sheet.png")
    _write_report(report, out_dir)
    return report


def _summary(per_sample: list[dict]) -> dict[str, Any]:
    numeric = sorted({k for m in per_sample for k, v in m.items() if isinstance(v, int | float)})
    return {
        "mean": {k: _mean([m.get(k, float("nan")) for m in per_sample]) for k in numeric},
        "per_clip": _mean_curves(per_sample),
    }


def _write_report(report: dict, out_dir: Path) -> None:
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=float))
    os.replace(tmp, out_dir / "metrics.json")


def rescore(cfg: DictConfig) -> dict[str, Any]:
    """``rescore=true``: recompute every per-sample measure of an evaluation from its saved frames.

    For an ``output_dir`` written with ``save_frames=true``: each ``frames/<key>.npy`` is scored again
    against its sample in ``data.val_shards`` (fitted to the resolution the sample was generated at) with
    today's measures, without generating anything; ``metrics.json`` is rewritten (its settings, FID and FVD
    kept) with a ``rescored`` note. The frames are stored as uint8, so the measures of the float frames move
    in their last digits (on the latent claims benchmark's full row, no mean by more than 0.003).
    """
    out_dir = Path(cfg.output_dir)
    path = out_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"rescore: {path} does not exist (evaluate with save_frames=true first)")
    report = json.loads(path.read_text())
    old = {m["key"]: m for m in report.get("per_sample", [])}
    missing = [k for k in old if not frames_path(out_dir, k).is_file()]
    if missing:
        raise FileNotFoundError(f"rescore: {out_dir / 'frames'} lacks the frames of {len(missing)} sample(s), e.g. "
                                f"{missing[0]!r}; it needs an evaluation run with save_frames=true")  # fmt: skip
    val = cfg.data.val_shards
    shards = expand_shards(val if isinstance(val, str) else OmegaConf.to_container(val), split="val")
    lpips = None
    if cfg.get("lpips_backbone"):
        from fgbg.eval.metrics import LPIPS

        lpips = LPIPS(cfg.lpips_backbone, net_type=str(cfg.get("lpips_net", "alex")))
    per_sample = {}
    for clip in iter_clips(shards, SkipCounter()):
        if clip.key not in old:
            continue
        before = old[clip.key]
        gen = np.load(frames_path(out_dir, clip.key))
        res = int(before.get("resolution") or gen.shape[1])
        if gen.shape[1:3] != (res, res) or gen.shape[0] != clip.num_frames:
            raise ValueError(f"rescore: frames of {clip.key!r} are {gen.shape}; expected ({clip.num_frames}, {res}, "
                             f"{res}, 3) for its sample in {shards}")  # fmt: skip
        frames = torch.from_numpy(gen).permute(0, 3, 1, 2).float() / 255.0
        per_sample[clip.key] = video_metrics(frames, gen, fit_clip(clip, res, res), int(before["clip_len"]), res, lpips)
        log.info("rescored %s (%d of %d)", clip.key, len(per_sample), len(old))
    if len(per_sample) != len(old):
        absent = sorted(set(old) - set(per_sample))
        raise ValueError(f"rescore: {len(absent)} sample(s) of {path} are not in {shards}, e.g. {absent[0]!r}")
    report["per_sample"] = [per_sample[k] for k in old]
    report |= _summary(report["per_sample"])
    report["rescored"] = {"shards": shards, "from": "frames/*.npy (uint8)"}
    _write_report(report, out_dir)
    return report


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    report = rescore(cfg) if cfg.get("rescore") else evaluate(cfg)
    mean = report["mean"]
    print(
        f"{report['samples']} samples: PSNR {mean.get('psnr', float('nan')):.2f} dB "
        f"(background {mean.get('psnr_background', float('nan')):.2f}, person {mean.get('psnr_person', float('nan')):.2f}), "
        f"SSIM {mean.get('ssim', float('nan')):.3f}, track error {mean.get('track_error_px', float('nan')):.2f} px"
        f" -> {Path(cfg.output_dir) / 'metrics.json'}"
    )


if __name__ == "__main__":
    main()
