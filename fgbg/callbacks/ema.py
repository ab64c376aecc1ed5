"""EMA of the trainable weights (diffusers' ``EMAModel`` over the stage's parameters only,
so frozen parts such as a VAE or CLIP are never copied)."""

from __future__ import annotations

from contextlib import contextmanager

import lightning as L
from diffusers.training_utils import EMAModel


class EMACallback(L.Callback):
    """Keeps an EMA of ``pl_module``'s parameters that require grad.

    ``use_ema_weights()`` swaps them in (for sampling); validation uses them when
    ``validate_with_ema``. State is saved in Lightning checkpoints for resume.
    """

    def __init__(
        self, decay: float = 0.999, use_ema_warmup: bool = True, power: float = 0.75, validate_with_ema: bool = True
    ):
        self.decay, self.use_ema_warmup, self.power = decay, use_ema_warmup, power
        self.validate_with_ema = validate_with_ema
        self.ema: EMAModel | None = None
        self.names: list[str] = []
        self._pending_state: dict | None = None

    def _params(self, pl_module):
        return [p for p in pl_module.parameters() if p.requires_grad]

    def on_fit_start(self, trainer, pl_module):
        self.names = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        self.ema = EMAModel(
            self._params(pl_module), decay=self.decay, use_ema_warmup=self.use_ema_warmup, power=self.power
        )
        if self._pending_state is not None:
            self.ema.load_state_dict(self._pending_state)
            self._pending_state = None
        self.ema.to(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ema.step(self._params(pl_module))

    def ema_state_dict(self) -> dict:
        """Full parameter name -> EMA tensor."""
        return dict(zip(self.names, self.ema.shadow_params, strict=True))

    @contextmanager
    def use_ema_weights(self, pl_module):
        params = self._params(pl_module)
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    def on_validation_start(self, trainer, pl_module):
        if self.validate_with_ema and self.ema is not None:
            params = self._params(pl_module)
            self.ema.store(params)
            self.ema.copy_to(params)

    def on_validation_end(self, trainer, pl_module):
        if self.validate_with_ema and self.ema is not None:
            self.ema.restore(self._params(pl_module))

    def state_dict(self):
        return {} if self.ema is None else self.ema.state_dict()

    def load_state_dict(self, state_dict):
        if state_dict:
            self._pending_state = state_dict


def find_ema(trainer) -> EMACallback | None:
    return next((c for c in trainer.callbacks if isinstance(c, EMACallback)), None)
