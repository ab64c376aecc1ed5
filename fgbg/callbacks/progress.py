"""Progress a person can read: training to ``max_steps`` with an ETA, generation clip by clip.

On a terminal a tqdm bar (one line, redrawn in place); anywhere else (SLURM logs, pipes, files) plain
log lines, never carriage returns, so a log holds one readable line per report.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from datetime import timedelta
from typing import Any

from lightning.pytorch.callbacks.progress import ProgressBar

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """``3725.4`` -> ``1:02:05``; ``nan`` / ``inf`` -> ``?``."""
    return str(timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


def is_terminal(stream: Any = None) -> bool:
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class StepProgress(ProgressBar):
    """Training progress in optimizer steps, out of ``trainer.max_steps`` (or the steps the epochs give),
    with the loss, the time per step and an ETA measured since this fit (re)started; prediction in clips.

    ``plain``: ``None`` picks plain lines unless stderr is a terminal; ``True`` / ``False`` force it.
    ``refresh_rate``: a terminal bar redraws every this many steps. ``log_every_n_steps``: a plain line
    every this many steps (and at the first and the last). Validation runs print nothing but their result.
    """

    def __init__(self, refresh_rate: int = 1, log_every_n_steps: int = 50, plain: bool | None = None):
        super().__init__()
        if refresh_rate < 1 or log_every_n_steps < 1:
            raise ValueError(f"refresh_rate={refresh_rate}, log_every_n_steps={log_every_n_steps}: expected >= 1")
        self.refresh_rate, self.log_every_n_steps, self.plain_setting = refresh_rate, log_every_n_steps, plain
        self._enabled = True
        self._bar = None
        self._start = (0, 0.0)  # (step, time) when this fit or prediction started
        self.lines: list[str] = []  # the plain lines written (for tests and callers)

    # Lightning's ProgressBar interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def plain(self) -> bool:
        return (not is_terminal()) if self.plain_setting is None else bool(self.plain_setting)

    def _active(self, trainer) -> bool:
        return self._enabled and trainer.is_global_zero

    def total_steps(self, trainer) -> float:
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        total = trainer.estimated_stepping_batches
        return total if total and math.isfinite(total) else float("inf")

    def start(self, done: int = 0) -> None:
        """Measure rates and the ETA from now, with ``done`` units already behind (a resumed fit)."""
        self._start = (done, time.monotonic())

    def report(self, done: int, total: float, unit: str, extra: str = "") -> str:
        """``step 150/6000 (2.5%) | loss 0.1234 | 1.10 s/step | elapsed 0:02:45 | ETA 1:47:12``."""
        start_done, start_time = self._start
        elapsed = time.monotonic() - start_time
        rate = elapsed / (done - start_done) if done > start_done else float("nan")
        eta = rate * (total - done) if math.isfinite(total) else float("nan")
        pct = f" ({100 * done / total:.1f}%)" if math.isfinite(total) and total else ""
        total_text = f"{int(total)}" if math.isfinite(total) else "?"
        return (
            f"{unit} {done}/{total_text}{pct}{extra} | {rate:.2f} s/{unit} | elapsed {duration(elapsed)}"
            f" | ETA {duration(eta)}"
        )

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        log.info(line)

    def _open_bar(self, total: float, initial: int, unit: str, desc: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=None if not math.isfinite(total) else int(total), initial=initial, unit=unit, desc=desc,
            dynamic_ncols=True, file=sys.stderr, leave=True, smoothing=0.1,
        )  # fmt: skip

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # training
    def on_train_start(self, trainer, pl_module) -> None:
        if not self._active(trainer):
            return
        self.start(trainer.global_step)
        total = self.total_steps(trainer)
        if self.plain:
            resumed = f", resumed at step {trainer.global_step}" if trainer.global_step else ""
            self._emit(f"training: {int(total) if math.isfinite(total) else '?'} steps{resumed}")
        else:
            self._open_bar(total, trainer.global_step, "step", "train")

    def _loss(self, trainer, pl_module) -> str:
        metrics = self.get_metrics(trainer, pl_module)
        value = metrics.get("train/loss", metrics.get("loss"))
        return f" | loss {float(value):.4f}" if value is not None else ""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active(trainer):
            return
        step, total = trainer.global_step, self.total_steps(trainer)
        if self.plain:
            last = getattr(self, "_last_step", None)
            if step != last and (step == self._start[0] + 1 or step % self.log_every_n_steps == 0 or step >= total):
                self._emit(self.report(step, total, "step", self._loss(trainer, pl_module)))
            self._last_step = step
        elif self._bar is not None and (step % self.refresh_rate == 0 or step >= total):
            self._bar.n = step
            metrics = self.get_metrics(trainer, pl_module)
            loss = metrics.get("train/loss")
            self._bar.set_postfix({"loss": f"{float(loss):.4f}"} if loss is not None else {}, refresh=False)
            self._bar.refresh()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._active(trainer):
            self._close_bar()
            if self.plain:
                self._emit(f"training done at step {trainer.global_step}")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._active(trainer) and not trainer.sanity_checking:
            val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            if val:
                text = ", ".join(f"{k} {v:.4f}" for k, v in sorted(val.items()))
                (self._bar.write if self._bar is not None else self._emit)(
                    f"validation at step {trainer.global_step}: {text}"
                )

    # prediction: one batch is one clip of a long video (fgbg-generate)
    def on_predict_start(self, trainer, pl_module) -> None:
        if not self._active(trainer):
            return
        self.start(0)
        total = sum(self.trainer.num_predict_batches) if self.trainer.num_predict_batches else float("inf")
        self._predict_total = total
        if not self.plain:
            self._open_bar(total, 0, "clip", "generate")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(trainer):
            return
        if self.plain:
            self._emit(self.report(batch_idx + 1, self._predict_total, "clip"))
        elif self._bar is not None:
            self._bar.update(1)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._active(trainer):
            self._close_bar()
