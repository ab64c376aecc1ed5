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
    for about one extra forward pass per step.

    Not allowed: a model whose attention reads the ReferenceNet bank (the denoising UNet).
    The bank is filled only for the duration of the forward pass, so the recomputation in
    backward would attend to other tokens (torch raises a CheckpointError on the shape change);
    checkpointing it needs the bank tokens passed as explicit inputs of the checkpointed blocks.
    """

    def __init__(self, enabled: bool = False, models: Sequence[str] = ("referencenet.unet", "controlnet")):
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
            if any(getattr(p, "role", None) == "read" for p in module.attn_processors.values()):
                raise ValueError(
                    f"callbacks.gradient_checkpointing.models: {path!r} reads the ReferenceNet bank, which is "
                    "empty when backward recomputes it; checkpoint referencenet.unet / controlnet instead"
                )
            module.enable_gradient_checkpointing()
            self.wrapped.append(path)
        log.info("gradient checkpointing on: %s", ", ".join(self.wrapped))
