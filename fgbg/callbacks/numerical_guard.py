"""Skip, count and bound non-finite training steps.

A step is skipped when its loss is not finite on any rank (``FgbgModule.training_step`` all-reduces
the flag, returns ``{"loss": loss * 0, "skipped": True}`` on every rank and drops every gradient before
the optimizer step; a ``None`` output also counts as skipped) or when any gradient is not finite (this
callback drops every gradient in ``on_before_optimizer_step``, before clipping; AdamW and SGD leave
parameters without a gradient untouched). The weights therefore stay at the last good state. Both
decisions agree across ranks: the loss flag is all-reduced, and so is the gradient flag (under DDP a NaN
on one rank is already NaN in the averaged gradient on all; under FSDP2 each rank holds only its shard of
the gradient), so the counters stay equal on every rank.
Skips are logged as ``train/skipped_steps``; ``max_consecutive_nonfinite`` skips in a row stop the
run with :class:`NonFiniteTrainingError`, after saving ``last_finite.ckpt`` (the unchanged last good
state) next to the other checkpoints.
"""

from __future__ import annotations

import logging
import os

import lightning as L
import torch

from fgbg.models.sharding import any_rank

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Raised after too many non-finite steps in a row."""


class NumericalGuard(L.Callback):
    """Count steps with a non-finite loss or gradient and stop after ``max_consecutive_nonfinite`` in a row.

    Args:
        max_consecutive_nonfinite: skips in a row that end the run (>= 1).
        dirpath: folder for ``last_finite.ckpt`` written before stopping; ``None`` writes none.
    """

    def __init__(self, max_consecutive_nonfinite: int = 20, dirpath: str | None = None):
        if max_consecutive_nonfinite < 1:
            raise ValueError(f"max_consecutive_nonfinite={max_consecutive_nonfinite}: expected an integer >= 1")
        self.max_consecutive_nonfinite = int(max_consecutive_nonfinite)
        self.dirpath = dirpath
        self.skipped_steps = 0
        self.consecutive = 0
        self._bad_grad = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._bad_grad = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # Local check (an FSDP2 shard's own elements: to_local), then one all-reduce: every rank decides alike.
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        bad = torch.stack([~torch.isfinite(g).all() for g in local]).any() if local else torch.zeros(())
        if any_rank(bad.to(pl_module.device), trainer.strategy):
            log.warning("step %d: non-finite gradient on some rank, skipping the optimizer step", trainer.global_step)
            self._bad_grad = True
            optimizer.zero_grad(set_to_none=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        skipped = isinstance(outputs, dict) and bool(outputs.get("skipped", False))
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad_loss = skipped or loss is None or (isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all())
        if bad_loss or self._bad_grad:
            self.skipped_steps += 1
            self.consecutive += 1
        else:
            self.consecutive = 0
        pl_module.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)
        if self.consecutive >= self.max_consecutive_nonfinite:
            saved = ""
            if self.dirpath:
                path = os.path.join(self.dirpath, "last_finite.ckpt")
                trainer.save_checkpoint(path)
                saved = f"; the last good state is in {path}"
            raise NonFiniteTrainingError(
                f"{self.consecutive} training steps in a row had a non-finite loss or gradient "
                f"(callbacks.numerical_guard.max_consecutive_nonfinite={self.max_consecutive_nonfinite}, "
                f"step {trainer.global_step}, {self.skipped_steps} skipped in all){saved}. "
                "Lower the learning rate, check the data, or resume from the last checkpoint."
            )

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


__all__ = ["NonFiniteTrainingError", "NumericalGuard"]
