"""Write the stage's trainable weights (and their EMA) as safetensors during and after training."""

from __future__ import annotations

import os

import lightning as L

from fgbg.callbacks.ema import find_ema
from fgbg.models.checkpoint import save_stage_weights, stage_state


class StageWeightsCheckpoint(L.Callback):
    """Every ``every_n_train_steps`` and at the end of fit, write into ``dirpath``:
    ``{stage}.safetensors`` (raw weights) and ``{stage}_ema.safetensors`` (when an EMA
    callback runs). Only global rank 0 writes; each write is atomic."""

    def __init__(self, dirpath: str, every_n_train_steps: int = 500):
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps

    def paths(self, stage: str) -> dict[str, str]:
        return {
            "weights": os.path.join(self.dirpath, f"{stage}.safetensors"),
            "ema": os.path.join(self.dirpath, f"{stage}_ema.safetensors"),
        }

    def write(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        stage, step = pl_module.stage, trainer.global_step
        paths = self.paths(stage)
        save_stage_weights(stage_state(pl_module), paths["weights"], stage, step)
        ema = find_ema(trainer)
        if ema is not None and ema.ema is not None:
            save_stage_weights(ema.ema_state_dict(), paths["ema"], stage, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.write(trainer, pl_module)
