"""Acting once per optimizer step from ``on_train_batch_end``, which Lightning calls once per micro-batch."""

from __future__ import annotations


class OptimizerStepGate:
    """Lightning's own guard pattern (``ModelCheckpoint``, ``WeightAveraging``): remember the last
    ``trainer.global_step`` acted on.

    With ``accumulate_grad_batches=k``, ``on_train_batch_end`` runs k times per optimizer step and
    ``global_step`` only changes on the k-th, so ``global_step % n == 0`` alone would act k times (and
    at step 0 before any update). ``due`` is true once per new optimizer step, and only on every n-th.
    ``start(trainer)`` at fit start (after a resume too) marks the current step as done.
    """

    def __init__(self) -> None:
        self.last_step: int | None = None

    def start(self, trainer) -> None:
        self.last_step = int(trainer.global_step)

    def new_step(self, trainer) -> bool:
        """True the first time this is asked after the optimizer stepped (``global_step`` moved)."""
        step = int(trainer.global_step)
        if self.last_step is not None and step <= self.last_step:
            return False
        self.last_step = step
        return True

    def due(self, trainer, every_n: int) -> bool:
        """True once per optimizer step whose number is a multiple of ``every_n`` (never when ``every_n`` is 0)."""
        return self.new_step(trainer) and bool(every_n) and trainer.global_step % every_n == 0
