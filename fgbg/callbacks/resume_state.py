"""What a Lightning checkpoint needs beyond weights and optimizer for an exact, logged resume."""

from __future__ import annotations

import os
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
    On load the global RNG states are restored. Only rank 0's states are saved (Lightning writes
    rank 0's checkpoint dict), so with several ranks every rank gets rank 0's states. The training
    draws do not depend on them: with ``model.noise_seed`` set (the default) noise, timesteps and
    dropouts come from a generator seeded by (noise_seed, rank, micro-batch index), and the data
    stream is seeded by (data.seed, rank, worker, epoch) and resumed at its position by
    ``ClipDataModule``; what the global states still feed (e.g. DataLoader worker base seeds,
    ``model.noise_seed=null``) is exact after a resume only with one process.
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


SHARDED_META = "meta.pt"  # Lightning's sharded (FSDP / ModelParallel) checkpoint folder: everything but the tensors


def load_checkpoint_meta(ckpt_path: str) -> dict:
    """A Lightning checkpoint's dict, cheaply: a ``.ckpt`` file memory-mapped (tensors are not read) or
    the ``meta.pt`` of a sharded checkpoint folder (the distributed-checkpoint files are not read).

    Read with ``weights_only`` and our ``checkpoint_safe_globals``. Raises ``ValueError`` naming the
    path when it is a folder without ``meta.pt`` or a file that is not a readable checkpoint.
    """
    path = os.fspath(ckpt_path)
    if os.path.isdir(path):
        meta = os.path.join(path, SHARDED_META)
        if not os.path.isfile(meta):
            raise ValueError(
                f"{path} is a folder without {SHARDED_META}: not a (complete) sharded Lightning checkpoint "
                "(its save may have been interrupted)"
            )
        path = meta
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such Lightning checkpoint (file or sharded folder)")
    try:
        with checkpoint_safe_globals():
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable Lightning checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no global_step in it)")
    return ckpt


def read_resume_record(ckpt_path: str) -> dict:
    """``checkpoint[RESUME_KEY]`` of a Lightning checkpoint, file or sharded folder (``{}`` when absent)."""
    return dict(load_checkpoint_meta(ckpt_path).get(RESUME_KEY) or {})
