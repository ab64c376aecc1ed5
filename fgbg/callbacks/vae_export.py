"""Writes the trained autoencoder of ``experiment=synthetic_tiny_vae`` as a diffusers folder.

Every ``every_n_train_steps`` optimizer steps and at the end of fit, rank zero writes ``dirpath`` (default
``<run>/vae``): the EMA weights when an :class:`fgbg.callbacks.EMACallback` runs, else the raw ones, with
the latent scaling factor measured on ``scaling_batches`` training batches (SD's 1 / std of the latents).
The folder is replaced atomically; ``model=fgbg_tiny_latent model.latent.pretrained=<run>/vae`` uses it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque

import lightning as L
import torch

from fgbg.callbacks.ema import EMACallback
from fgbg.callbacks.steps import OptimizerStepGate
from fgbg.models.vae import frames_of, latent_scaling_factor, save_vae

log = logging.getLogger(__name__)


class VAEExport(L.Callback):
    def __init__(self, dirpath: str, every_n_train_steps: int = 0, scaling_batches: int = 8):
        if every_n_train_steps < 0 or scaling_batches < 1:
            raise ValueError(
                f"callbacks.vae_export: every_n_train_steps={every_n_train_steps} (expected >= 0) and "
                f"scaling_batches={scaling_batches} (expected >= 1)"
            )
        self.dirpath = str(dirpath)
        self.every = every_n_train_steps
        self.scaling_batches = scaling_batches
        self.gate = OptimizerStepGate()
        # The last training batches (references, no copy and no device sync per step), for the scaling factor
        self.recent: deque[dict[str, torch.Tensor]] = deque(maxlen=scaling_batches)

    def on_train_start(self, trainer, pl_module):
        self.gate.start(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.recent.append({"frames": batch["frames"].detach(), "reference": batch["reference"].detach()})
        if self.gate.due(trainer, self.every):
            self.export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.export(trainer, pl_module)

    def export(self, trainer, pl_module) -> None:
        if not self.recent:
            return
        ema = next((c for c in trainer.callbacks if isinstance(c, EMACallback) and c.ema is not None), None)
        with ema.use_ema_weights(pl_module) if ema else contextlib.nullcontext():
            vae = pl_module.vae
            was_training = vae.training
            vae.eval()
            images = (frames_of(b) for b in self.recent)
            factor = getattr(pl_module, "fixed_scaling_factor", None)  # a frozen encoder's latents: its factor
            if factor is None:
                factor = latent_scaling_factor(vae, images, sample=getattr(pl_module, "sample_posterior", False))
            if trainer.is_global_zero:
                save_vae(vae, self.dirpath, factor)
                log.info("wrote %s (step %d, scaling_factor %.4f)", self.dirpath, trainer.global_step, factor)
            vae.train(was_training)
        trainer.strategy.barrier()
