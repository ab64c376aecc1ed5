"""Channels-last memory format of the convolutional models inside the LightningModule, by config."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import torch

log = logging.getLogger(__name__)


class ChannelsLast(L.Callback):
    """``enabled``: store the 4-D weights (convolutions) of the models at ``models`` (attribute paths
    in the LightningModule) in ``torch.channels_last`` memory format at ``setup``, before the optimizer
    is built, so its state follows. On tensor-core GPUs cuDNN's convolutions run faster in NHWC;
    on CPU it only changes the layout (tested there). Other weights are left as they are.
    """

    def __init__(
        self, enabled: bool = False, models: Sequence[str] = ("denoiser.unet", "referencenet.unet", "controlnet")
    ):
        self.enabled = enabled
        self.models = list(models)
        self.converted: list[str] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.enabled:
            return
        for path in self.models:
            try:
                module = pl_module.get_submodule(path)
            except AttributeError as err:
                raise ValueError(
                    f"callbacks.channels_last.models: {path!r} is not a submodule of {type(pl_module).__name__} "
                    "(expected an attribute path such as denoiser.unet)"
                ) from err
            module.to(memory_format=torch.channels_last)
            self.converted.append(path)
        log.info("channels_last memory format: %s", ", ".join(self.converted))
