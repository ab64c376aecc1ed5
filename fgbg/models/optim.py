"""Optimizers chosen by config that need more than ``torch.optim`` (``conf/model/optimizer/``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw_8bit(params: Iterable[torch.nn.Parameter], **kwargs) -> torch.optim.Optimizer:
    """bitsandbytes' ``AdamW8bit`` (optimizer state in 8 bits: about 3/4 less optimizer memory than AdamW).

    ``kwargs`` as ``torch.optim.AdamW`` (lr, betas, eps, weight_decay). Fails with what to do when
    bitsandbytes is missing or the parameters are not on a CUDA device (its 8-bit optimizers run there).
    """
    params = list(params)
    try:
        import bitsandbytes
    except ImportError as err:
        raise ImportError(
            "model.optimizer=adamw8bit needs bitsandbytes, which is not installed (pip install bitsandbytes, "
            "on a machine with a CUDA GPU); drop +model/optimizer=adamw8bit to train with torch.optim.AdamW"
        ) from err
    devices = sorted({p.device.type for p in params})
    if devices != ["cuda"]:
        raise RuntimeError(
            f"model.optimizer=adamw8bit: bitsandbytes' 8-bit AdamW expects parameters on a CUDA device, got {devices}; "
            "train on GPUs (trainer=gpu, ddp or slurm) or drop +model/optimizer=adamw8bit to use torch.optim.AdamW"
        )
    return bitsandbytes.optim.AdamW8bit(params, **kwargs)
