"""Progress output (issue 17, point 2): a bar to max_steps on a terminal, plain lines with an ETA elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fgbg.callbacks import progress as progress_module
from fgbg.callbacks.progress import StepProgress


def fake_trainer(max_steps: int, step: int = 0, **extra) -> SimpleNamespace:
    return SimpleNamespace(max_steps=max_steps, global_step=step, is_global_zero=True, loggers=[],
                           progress_bar_metrics={"train/loss": 0.25}, sanity_checking=False, callback_metrics={},
                           **extra)  # fmt: skip


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic of the progress module, advanced by hand."""
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    return now


def test_plain_lines_report_step_of_max_steps_rate_and_eta(clock):
    bar, trainer = StepProgress(log_every_n_steps=5, plain=True), fake_trainer(12)
    bar.on_train_start(trainer, None)
    for step in range(1, 13):
        clock[0] += 2.0
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, None, None, step - 1)
    bar.on_train_end(trainer, None)
    assert bar.lines == [
        "training: 12 steps",
        "step 1/12 (8.3%) | loss 0.2500 | 2.00 s/step | elapsed 0:00:02 | ETA 0:00:22",
        "step 5/12 (41.7%) | loss 0.2500 | 2.00 s/step | elapsed 0:00:10 | ETA 0:00:14",
        "step 10/12 (83.3%) | loss 0.2500 | 2.00 s/step | elapsed 0:00:20 | ETA 0:00:04",
        "step 12/12 (100.0%) | loss 0.2500 | 2.00 s/step | elapsed 0:00:24 | ETA 0:00:00",
        "training done at step 12",
    ]


def test_a_resumed_fit_measures_its_rate_from_where_it_resumed(clock):
    bar, trainer = StepProgress(log_every_n_steps=100, plain=True), fake_trainer(1000, step=400)
    bar.on_train_start(trainer, None)
    clock[0] += 3.0
    trainer.global_step = 401
    bar.on_train_batch_end(trainer, None, None, None, 0)
    assert bar.lines == [
        "training: 1000 steps, resumed at step 400",
        "step 401/1000 (40.1%) | loss 0.2500 | 3.00 s/step | elapsed 0:00:03 | ETA 0:29:57",
    ]


def test_on_a_terminal_one_bar_counts_optimizer_steps_to_max_steps(capsys):
    bar, trainer = StepProgress(plain=False), fake_trainer(10)
    bar.on_train_start(trainer, None)
    assert bar._bar.total == 10
    for step in range(1, 11):
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, None, None, step - 1)
    assert bar._bar.n == 10
    bar.on_train_end(trainer, None)
    err = capsys.readouterr().err
    assert "10/10" in err and "loss=0.2500" in err and bar.lines == []


def test_prediction_reports_each_clip(clock):
    bar, trainer = StepProgress(plain=True), fake_trainer(-1, num_predict_batches=[3])
    bar._trainer = trainer
    bar.on_predict_start(trainer, None)
    for i in range(3):
        clock[0] += 1.5
        bar.on_predict_batch_end(trainer, None, None, None, i)
    assert [line.split(" | ")[0] for line in bar.lines] == ["clip 1/3 (33.3%)", "clip 2/3 (66.7%)", "clip 3/3 (100.0%)"]
    assert bar.lines[-1].endswith("1.50 s/clip | elapsed 0:00:04 | ETA 0:00:00")
