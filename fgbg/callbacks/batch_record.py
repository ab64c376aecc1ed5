"""Per-rank record of what a run trained on: sample keys, losses and a weight checksum (for DDP checks)."""

from __future__ import annotations

import json
import os
from typing import Any

import lightning as L
import torch


class BatchKeyRecorder(L.Callback):
    """Writes ``{dirpath}/rank{global_rank}.json`` at the end of fit.

    Contents: ``train_keys`` (one list of sample keys per training step, this rank's
    part of the global batch), ``train_loss`` (this rank's loss per step), ``val_keys``
    (every validation key this rank read), ``world_size`` and ``weight_sum`` (the
    float64 sum of all trainable parameters after training: equal on every rank when
    DDP keeps the replicas in sync).
    """

    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self.train_keys: list[list[str]] = []
        self.train_loss: list[float] = []
        self.val_keys: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_keys.append(list(batch["key"]))
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.train_loss.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else float("nan"))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_keys.extend(batch["key"])

    def on_fit_end(self, trainer, pl_module) -> None:
        trainable = [p.detach().double().sum() for p in pl_module.parameters() if p.requires_grad]
        record: dict[str, Any] = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "train_keys": self.train_keys,
            "train_loss": self.train_loss,
            "val_keys": self.val_keys,
            "weight_sum": float(torch.stack(trainable).sum()) if trainable else 0.0,
        }
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)
