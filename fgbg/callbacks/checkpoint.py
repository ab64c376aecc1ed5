"""Lightning ``.ckpt`` checkpoints with a bound on disk: the newest ``keep_last_k`` plus ``last.ckpt``."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

_SET_HERE = ("monitor", "mode", "save_top_k", "save_last")


class KeepLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps the ``keep_last_k`` newest periodic checkpoints (``step*.ckpt``,
    files or sharded folders) and always writes ``last.ckpt``; older ones are deleted as new ones land.

    ``keep_last_k=-1`` keeps every checkpoint, ``0`` only ``last.ckpt``. Newest means highest global step:
    Lightning's own recipe (``monitor="step", mode="max"``), so the set survives a resume (the callback's
    state, restored from the checkpoint, remembers which files it keeps). ``resume=auto`` picks among
    ``last.ckpt`` and the kept ``step*.ckpt``; SLURM's ``hpc_ckpt_*.ckpt`` are Lightning's and untouched.
    When training ends between periodic checkpoints (``trainer.max_time``, or ``max_steps`` not a multiple
    of ``every_n_train_steps``), ``last.ckpt`` is written at the final step, so a resume loses nothing
    (Lightning's own ``save_last`` keeps the last periodic one then).
    Other keyword arguments go to ``ModelCheckpoint`` (``dirpath``, ``filename``, ``every_n_train_steps``).
    """

    def __init__(self, keep_last_k: int = 3, **kwargs: Any):
        if not isinstance(keep_last_k, int) or isinstance(keep_last_k, bool) or keep_last_k < -1:
            raise ValueError(
                f"callbacks.model_checkpoint.keep_last_k={keep_last_k!r}: expected an integer >= 0, or -1 to keep all"
            )
        given = sorted(set(kwargs) & set(_SET_HERE))
        if given:
            raise ValueError(
                f"callbacks.model_checkpoint: {given} are set by keep_last_k (newest by step, last.ckpt always);"
                " remove them"
            )
        super().__init__(monitor="step", mode="max", save_top_k=keep_last_k, save_last=True, **kwargs)
        self.keep_last_k = keep_last_k

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # steps since the last save: keep them
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)
