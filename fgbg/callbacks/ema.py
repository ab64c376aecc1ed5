"""EMA of the trainable weights (diffusers' ``EMAModel`` over the stage's parameters only,
so frozen parts such as a VAE or CLIP are never copied)."""

from __future__ import annotations

from contextlib import contextmanager

import lightning as L
import torch
from diffusers.training_utils import EMAModel

from fgbg.callbacks.steps import OptimizerStepGate
from fgbg.models.sharding import full_tensor, like


class EMACallback(L.Callback):
    """Keeps an EMA of ``pl_module``'s parameters that require grad, updated once per optimizer step.

    ``use_ema_weights()`` swaps them in (for sampling); validation uses them when
    ``validate_with_ema``. State is saved in Lightning checkpoints for resume.

    Under FSDP (``trainer=fsdp``) the parameters are sharded ``DTensor``s and so is the EMA: each
    rank keeps the EMA of its own shard (no extra communication per step). ``ema_state_dict`` and the
    checkpoint state gather full tensors (collective: Lightning calls both on every rank), and a
    restored full state is re-sharded like the parameters, so a checkpoint holds the whole EMA
    whatever the world size.
    """

    def __init__(
        self, decay: float = 0.999, use_ema_warmup: bool = True, power: float = 0.75, validate_with_ema: bool = True
    ):
        self.decay, self.use_ema_warmup, self.power = decay, use_ema_warmup, power
        self.validate_with_ema = validate_with_ema
        self.ema: EMAModel | None = None
        self.names: list[str] = []
        self._pending_state: dict | None = None
        self.gate = OptimizerStepGate()
        self._stored: list[torch.Tensor] | None = None

    def _params(self, pl_module):
        return [p for p in pl_module.parameters() if p.requires_grad]

    def on_fit_start(self, trainer, pl_module):
        self.names = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        self.ema = EMAModel(
            self._params(pl_module), decay=self.decay, use_ema_warmup=self.use_ema_warmup, power=self.power
        )
        self.ema.to(pl_module.device)
        self._apply_pending(pl_module)
        self.gate.start(trainer)

    def on_train_start(self, trainer, pl_module):
        # Strategies that restore the checkpoint after setup (ModelParallelStrategy: trainer=fsdp) call
        # load_state_dict after on_fit_start: apply the restored EMA here.
        self._apply_pending(pl_module)
        self.gate.start(trainer)

    def _apply_pending(self, pl_module) -> None:
        """Load a restored EMA state (full tensors) into the live EMA, laid out (sharded) like the parameters."""
        if self._pending_state is None or self.ema is None:
            return
        params = self._params(pl_module)
        self.ema.load_state_dict(self._pending_state)
        self.ema.shadow_params = [like(s, p) for s, p in zip(self.ema.shadow_params, params, strict=True)]
        self._pending_state = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.gate.new_step(trainer):
            self.ema.step(self._params(pl_module))

    def ema_state_dict(self) -> dict:
        """Full parameter name -> full EMA tensor (all-gathered under FSDP: every rank must call it)."""
        return {n: full_tensor(s) for n, s in zip(self.names, self.ema.shadow_params, strict=True)}

    @torch.no_grad()
    def _swap_in(self, pl_module) -> list[torch.Tensor]:
        """Copy the EMA into the parameters; returns the raw weights (kept on their device, shard by shard)."""
        params = self._params(pl_module)
        stored = [p.detach().clone() for p in params]
        for p, s in zip(params, self.ema.shadow_params, strict=True):
            p.copy_(s)
        return stored

    @torch.no_grad()
    def _swap_out(self, pl_module, stored: list[torch.Tensor]) -> None:
        for p, s in zip(self._params(pl_module), stored, strict=True):
            p.copy_(s)

    @contextmanager
    def use_ema_weights(self, pl_module):
        """Within the block the trainable parameters hold the EMA (no communication: shard by shard under FSDP)."""
        stored = self._swap_in(pl_module)
        try:
            yield
        finally:
            self._swap_out(pl_module, stored)

    def on_validation_start(self, trainer, pl_module):
        if self.validate_with_ema and self.ema is not None:
            self._stored = self._swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module):
        if self._stored is not None:
            self._swap_out(pl_module, self._stored)
            self._stored = None

    def state_dict(self):
        if self.ema is None:
            return {}
        state = self.ema.state_dict()
        state["shadow_params"] = [full_tensor(s).detach().cpu() for s in state["shadow_params"]]
        return state

    def load_state_dict(self, state_dict):
        if state_dict:
            self._pending_state = state_dict


def find_ema(trainer) -> EMACallback | None:
    return next((c for c in trainer.callbacks if isinstance(c, EMACallback)), None)


__all__ = ["EMACallback", "find_ema"]
