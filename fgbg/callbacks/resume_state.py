"""What a Lightning checkpoint needs beyond weights and optimizer for an exact, logged resume."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.listconfig import ListConfig
from omegaconf.nodes import AnyNode

RESUME_KEY = "fgbg_resume"
# Data-only types Lightning's hyper_parameters hold in our checkpoints; allowed when reading them back.
_CHECKPOINT_SAFE_GLOBALS = [Any, ContainerMetadata, Metadata, ListConfig, AnyNode, defaultdict, list, int, dict]


class ResumeState(L.Callback):
    """Stores the wandb run id and the torch / numpy / python RNG states in every ``.ckpt``.

    Under ``checkpoint[RESUME_KEY]``: ``wandb_run_id`` (``None`` without a WandbLogger), ``rng``.
    On load the RNG states are restored, so diffusion noise and timesteps after a resume
    continue the sequence of the interrupted run (single process; with several ranks each
    rank would need its own states, which Lightning does not gather: rank 0's are restored).
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        wandb_ids = [lg.version for lg in trainer.loggers if isinstance(lg, L.pytorch.loggers.WandbLogger)]
        np_state = np.random.get_state()
        checkpoint[RESUME_KEY] = {
            "wandb_run_id": wandb_ids[0] if wandb_ids else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                "python": list(random.getstate()),
            },
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        rng = checkpoint.get(RESUME_KEY, {}).get("rng")
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))


def checkpoint_safe_globals():
    """Context in which ``torch.load(..., weights_only=True)`` (Lightning's resume load too) accepts our ``.ckpt``."""
    return torch.serialization.safe_globals(_CHECKPOINT_SAFE_GLOBALS)


def read_resume_record(ckpt_path: str) -> dict:
    """``checkpoint[RESUME_KEY]`` of a Lightning ``.ckpt`` (``{}`` when absent), read with ``weights_only``."""
    with checkpoint_safe_globals():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return dict(ckpt.get(RESUME_KEY) or {})
