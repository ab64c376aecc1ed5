"""Sample a fixed validation batch every N steps: mp4 + contact sheet with pose and tracks drawn."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import lightning as L
import numpy as np
import torch

from fgbg.callbacks.ema import find_ema
from fgbg.callbacks.steps import OptimizerStepGate
from fgbg.data.render import contact_sheet, save_png
from fgbg.models.module import COND_KEYS

log = logging.getLogger(__name__)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    x = ((frames.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def write_video(frames: np.ndarray, path: str, fps: int = 8) -> str:
    """(T, H, W, 3) uint8 -> H.264 mp4 via PyAV (GIF via Pillow if no H.264 encoder). Returns the path written."""
    import av

    t, h, w, _ = frames.shape
    frames = np.ascontiguousarray(frames[:, : h - h % 2, : w - w % 2])
    tmp = f"{path}.tmp.mp4"
    try:
        with av.open(tmp, "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"crf": "18"}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
        return path
    except (av.error.FFmpegError, ValueError):  # no libx264 in this build: fall back to GIF
        from PIL import Image

        if os.path.exists(tmp):
            os.remove(tmp)
        gif = os.path.splitext(path)[0] + ".gif"
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(gif, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
        return gif


class SampleVideoCallback(L.Callback):
    """Every ``every_n_steps`` (0: never) and at the end of fit (unless ``at_end`` is false) sample the first ``num_samples`` clips
    of the first validation batch (of the first training batch when there is no validation data,
    with a one-line notice) with ``num_inference_steps`` steps (EMA weights when an
    EMA callback runs). Writes ``{dirpath}/step{N:06d}.mp4`` (truth over sample, frames
    upscaled by ``scale``) and ``...sheet.png`` (truth and sample rows, pose and tracks drawn),
    and logs the video and sheet through each ``WandbLogger``'s ``log_video`` / ``log_image`` at the
    trainer's global step (Lightning's ``trainer/global_step`` axis, so no wandb row is dropped).

    Fires once per due optimizer step (not once per micro-batch under ``accumulate_grad_batches``),
    never at step 0 unless ``at_start``. Every rank samples (under FSDP the forward passes gather
    parameters collectively, so a rank-0-only forward would hang the others): rank 0 reads the
    batch and broadcasts it, and only rank 0 writes files and logs.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 500,
        num_samples: int = 2,
        num_inference_steps: int = 10,
        scheduler: str = "ddim",
        scale: int = 4,
        seed: int = 0,
        at_start: bool = False,
        at_end: bool = True,
    ):
        self.dirpath, self.every_n_steps, self.num_samples = dirpath, every_n_steps, num_samples
        self.at_start, self.at_end = at_start, at_end
        self.gate = OptimizerStepGate()
        self.sampled_steps: list[int] = []
        self.num_inference_steps, self.scheduler, self.scale, self.seed = num_inference_steps, scheduler, scale, seed
        self._batch = None
        self._train_batch = None  # first ``num_samples`` clips of the first training batch (fallback)
        self._start_pending = False
        self.written: list[str] = []

    def _first(self, batch: dict) -> dict:
        n = self.num_samples
        return {
            k: (v[:n].detach().cpu().clone() if isinstance(v, torch.Tensor) else v[:n] if isinstance(v, list) else v)
            for k, v in batch.items()
        }

    def _get_batch(self, trainer):
        """The first ``num_samples`` clips of rank 0's first validation batch, on every rank; without
        validation data, those of rank 0's first training batch (None: neither seen yet)."""
        if self._batch is None:
            batch = None
            if trainer.is_global_zero and trainer.datamodule is not None:
                loader = trainer.datamodule.val_dataloader()  # [] without data.val_shards
                batch = next(iter(loader), None) if loader is not None else None
                if batch is not None:
                    batch = self._first(batch)
                elif self._train_batch is not None:
                    log.info(
                        "sample_video: no validation data (data.val_shards), samples come from the first training batch"
                    )
                    batch = self._train_batch
            if trainer.world_size > 1:
                batch = trainer.strategy.broadcast(batch, src=0)
            if batch is None:  # before the first training batch: retry once it has been seen
                return None
            self._batch, self._train_batch = batch, None
        return self._batch

    @torch.no_grad()
    def sample(self, trainer, pl_module) -> dict[str, str]:
        batch = self._get_batch(trainer)
        if batch is None:
            return {}
        dev = pl_module.device
        b = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        ema = find_ema(trainer)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with ema.use_ema_weights(pl_module) if ema is not None and ema.ema is not None else nullcontext():
                ctx = pl_module.encode_reference(b["reference"], b["reference_mask"])
                gen = torch.Generator(device=dev).manual_seed(self.seed)
                frames = pl_module.sample_clip(
                    ctx, {k: b[k] for k in COND_KEYS}, None, self.num_inference_steps, self.scheduler, None, gen
                )
        finally:
            pl_module.train(was_training)
        self.sampled_steps.append(trainer.global_step)
        return self.write(trainer, b, frames) if trainer.is_global_zero else {}

    def write(self, trainer, batch, frames: torch.Tensor) -> dict[str, str]:
        os.makedirs(self.dirpath, exist_ok=True)
        step = trainer.global_step
        truth, fake = to_uint8(batch["frames"]), to_uint8(frames)  # (B, T, H, W, 3)
        rows = []
        for i in range(truth.shape[0]):
            extra = {
                "pose": batch["keypoints"][i].cpu().numpy(),
                "tracks": batch["tracks"][i].cpu().numpy(),
                "visible": batch["track_visible"][i].cpu().numpy(),
            }
            rows.append({"frames": truth[i], "label": "truth", **extra})
            rows.append({"frames": fake[i], "label": "sample", **extra})
        sheet_path = os.path.join(self.dirpath, f"step{step:06d}_sheet.png")
        save_png(contact_sheet(rows), sheet_path)
        # video: samples side by side, truth above sample
        grid = np.concatenate([np.concatenate(list(truth), 2), np.concatenate(list(fake), 2)], 1)  # (T, 2H, B*W, 3)
        grid = grid.repeat(self.scale, 1).repeat(self.scale, 2)
        video_path = write_video(grid, os.path.join(self.dirpath, f"step{step:06d}.mp4"))
        self.written += [sheet_path, video_path]
        for logger in trainer.loggers:
            if isinstance(logger, L.pytorch.loggers.WandbLogger):  # rows keyed by trainer/global_step = step
                logger.log_video("samples/video", [video_path], step=step)
                logger.log_image("samples/sheet", [sheet_path], step=step)
        return {"sheet": sheet_path, "video": video_path}

    def on_train_start(self, trainer, pl_module):
        self.gate.start(trainer)
        self._start_pending = self.at_start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._batch is None and self._train_batch is None:
            self._train_batch = self._first(batch)  # kept before training_step can alter the batch
        if self._start_pending:  # at_start: before the first optimizer step, with the batch at hand
            self._start_pending = False
            self.sample(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.gate.due(trainer, self.every_n_steps):
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.at_end and (not self.sampled_steps or self.sampled_steps[-1] != trainer.global_step):
            self.sample(trainer, pl_module)
