"""Non-finite losses and gradients skip the step, are counted, and stop a run that keeps producing them."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from fgbg.callbacks import NonFiniteTrainingError, NumericalGuard
from tests.test_model import build, random_batch


def _loader(n: int) -> DataLoader:
    batches = [random_batch(b=1, t=1, seed=i) for i in range(n)]
    return DataLoader(batches, batch_size=None)


def _trainer(guard: NumericalGuard, steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
    )  # fmt: skip


def _nan_on(model, bad_steps: set[int]):
    """Make ``compute_loss`` return NaN on the given global steps."""
    real = model.compute_loss

    def compute_loss(batch, *args, **kwargs):
        out = real(batch, *args, **kwargs)
        if model.global_step in bad_steps:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    model.compute_loss = compute_loss


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_nan_loss_and_nan_grad_steps_are_skipped_counted_and_weights_stay_finite():
    model = build(stage="image")
    _nan_on(model, {1, 2})
    param = next(p for p in model.parameters() if p.requires_grad)
    param.register_hook(lambda g: g * float("nan") if model.global_step == 3 else g)  # NaN gradient at step 3
    guard = NumericalGuard(max_consecutive_nonfinite=5)
    trainer = _trainer(guard, steps=5)
    trainer.fit(model, train_dataloaders=_loader(5))
    assert guard.skipped_steps == 3 and guard.consecutive == 0
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_every_step_leaves_weights_unchanged_and_stops_with_a_message_and_a_checkpoint(tmp_path):
    model = build(stage="image")
    _nan_on(model, set(range(100)))
    before = _trainable(model)
    guard = NumericalGuard(max_consecutive_nonfinite=3, dirpath=str(tmp_path))
    with pytest.raises(NonFiniteTrainingError, match=r"3 training steps in a row.*max_consecutive_nonfinite=3"):
        _trainer(guard, steps=10).fit(model, train_dataloaders=_loader(10))
    saved = torch.load(tmp_path / "last_finite.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[n], before[n]) for n in before)


def test_bad_limit_is_a_clear_error():
    with pytest.raises(ValueError, match="max_consecutive_nonfinite=0"):
        NumericalGuard(max_consecutive_nonfinite=0)
