"""Write the stage's trainable weights (and their EMA) as safetensors during and after training."""

from __future__ import annotations

import os

import lightning as L

from fgbg.callbacks.ema import find_ema
from fgbg.callbacks.steps import OptimizerStepGate
from fgbg.models.checkpoint import save_stage_weights, stage_state
from fgbg.models.sharding import full_state


class StageWeightsCheckpoint(L.Callback):
    """Every ``every_n_train_steps`` optimizer steps (once per step whatever ``accumulate_grad_batches``,
    never at step 0) and at the end of fit, write into ``dirpath``: ``{stage}.safetensors`` (raw
    weights) and ``{stage}_ema.safetensors`` (when an EMA callback runs).

    Every rank takes part (under FSDP the full tensors are all-gathered from the shards, so the files
    load strictly into a single-process model); only global rank 0 writes, atomically.

    ``log_artifact``: at the end of fit, the final files also go to each ``WandbLogger``'s run as one artifact
    ``<run id>-<stage>`` of type ``model`` (aliases ``latest`` and ``step<N>``; offline runs keep it for
    ``wandb sync``)."""

    def __init__(self, dirpath: str, every_n_train_steps: int = 500, log_artifact: bool = False):
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps
        self.log_artifact = log_artifact
        self.gate = OptimizerStepGate()
        self.written_steps: list[int] = []

    def paths(self, stage: str) -> dict[str, str]:
        return {
            "weights": os.path.join(self.dirpath, f"{stage}.safetensors"),
            "ema": os.path.join(self.dirpath, f"{stage}_ema.safetensors"),
        }

    def write(self, trainer, pl_module) -> None:
        """Gather (every rank) and save (rank 0) the stage weights and their EMA."""
        stage, step = pl_module.stage, trainer.global_step
        paths = self.paths(stage)
        weights = full_state(stage_state(pl_module))
        ema = find_ema(trainer)
        ema_weights = ema.ema_state_dict() if ema is not None and ema.ema is not None else None
        if trainer.is_global_zero:
            save_stage_weights(weights, paths["weights"], stage, step)
            if ema_weights is not None:
                save_stage_weights(ema_weights, paths["ema"], stage, step)
        self.written_steps.append(step)

    def on_fit_start(self, trainer, pl_module):
        self.gate.start(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.gate.due(trainer, self.every_n_train_steps):
            self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if not self.written_steps or self.written_steps[-1] != trainer.global_step:
            self.write(trainer, pl_module)
        if self.log_artifact and trainer.is_global_zero:
            self.log_artifacts(trainer, pl_module.stage)

    def log_artifacts(self, trainer, stage: str) -> None:
        """The stage's final safetensors as one wandb artifact per ``WandbLogger``."""
        files = [path for path in self.paths(stage).values() if os.path.isfile(path)]
        for logger in trainer.loggers:
            if isinstance(logger, L.pytorch.loggers.WandbLogger):
                import wandb

                run, step = logger.experiment, trainer.global_step
                artifact = wandb.Artifact(
                    f"{run.id}-{stage}", type="model", metadata={"stage": stage, "global_step": step}
                )
                for path in files:
                    artifact.add_file(path)
                run.log_artifact(artifact, aliases=["latest", f"step{step}"])
