"""Activation (gradient) checkpointing of the diffusers models inside the LightningModule, by config."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
from diffusers import ModelMixin

log = logging.getLogger(__name__)


class GradientCheckpointing(L.Callback):
    """``enabled``: call diffusers' ``enable_gradient_checkpointing()`` on the models at ``models``
    (attribute paths in the LightningModule, e.g. ``referencenet.unet``) at ``setup``.

    Their blocks then recompute activations in backward instead of storing them: less memory
    for about one extra forward pass per step. The denoising UNet (``denoiser.unet``: spatial and
    motion blocks) may be one: its attention reads the ReferenceNet bank, whose read state stays
    set until the next step (``ReferenceBank.reading``), so the recomputation attends to the same
    tokens (gradients equal those without checkpointing: ``tests/test_scale_memory.py``).
    """

    def __init__(
        self, enabled: bool = False, models: Sequence[str] = ("referencenet.unet", "controlnet", "denoiser.unet")
    ):
        self.enabled = enabled
        self.models = list(models)
        self.wrapped: list[str] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.enabled:
            return
        for path in self.models:
            module = pl_module.get_submodule(path) if hasattr(pl_module, "get_submodule") else None
            if not isinstance(module, ModelMixin) or not module._supports_gradient_checkpointing:
                raise ValueError(
                    f"callbacks.gradient_checkpointing.models: {path!r} is {type(module).__name__}, "
                    "expected a diffusers model that supports gradient checkpointing"
                )
            module.enable_gradient_checkpointing()
            self.wrapped.append(path)
        log.info("gradient checkpointing on: %s", ", ".join(self.wrapped))
