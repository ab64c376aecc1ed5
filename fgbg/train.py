"""``fgbg-train``: train the model from Hydra configs (``conf/train.yaml``).

    fgbg-train experiment=synthetic_tiny_image
    fgbg-train experiment=synthetic_tiny_video model.init_from=<run>/checkpoints/image_ema.safetensors
    python -m fgbg.train trainer=gpu model=fgbg_sd15 data.train_shards='...'

``train(cfg)`` is a plain function (tests call it through Hydra's compose API); the
``@hydra.main`` wrapper only calls it and returns the metric a sweep optimises.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fgbg.callbacks.resume_state import checkpoint_safe_globals, load_checkpoint_meta, read_resume_record
from fgbg.config_checks import check_train_config
from fgbg.utils.config import CONF_DIR

log = logging.getLogger(__name__)

# Run folders get a random suffix so jobs started in the same second never collide.
if not OmegaConf.has_resolver("fgbg_uid"):
    OmegaConf.register_new_resolver("fgbg_uid", lambda: secrets.token_hex(3), use_cache=True)


def _run_name(name: str | None) -> str:
    """``run_name`` when given (stable folder, for ``resume=auto``), else ``<date>_<time>_<6 random hex>``."""
    return str(name) if name else f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}"


if not OmegaConf.has_resolver("fgbg_run_name"):
    OmegaConf.register_new_resolver("fgbg_run_name", _run_name, use_cache=True)


def _instantiate_group(cfg: DictConfig | None, extra: dict[str, dict] | None = None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-of-configs group (callbacks, loggers).

    ``extra[name]``: keyword arguments added to entry ``name`` (e.g. the wandb run id on resume).
    """
    out = []
    for name, sub in (cfg or {}).items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            log.info("instantiating %s <%s>", name, sub._target_)
            out.append(hydra.utils.instantiate(sub, **(extra or {}).get(name, {})))
    return out


def resume_candidates(ckpt_dir: str, hpc_dir: str | None = None) -> list[str]:
    """``last.ckpt`` and ``step*.ckpt`` in ``ckpt_dir`` and Lightning's SLURM ``hpc_ckpt_<n>.ckpt`` in ``hpc_dir``.

    Files or sharded checkpoint folders (FSDP ``state_dict_type: sharded``, ``ModelParallelStrategy``).
    """
    found = []
    for folder, pattern in ((ckpt_dir, r"last\.ckpt|step\d+\.ckpt"), (hpc_dir, r"hpc_ckpt_\d+\.ckpt")):
        if folder and os.path.isdir(folder):
            found += [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if re.fullmatch(pattern, n)]
    return found


def _mtime(path: str) -> float:
    meta = os.path.join(path, "meta.pt")  # a sharded folder's meta.pt is written last
    return os.path.getmtime(meta if os.path.isdir(path) and os.path.isfile(meta) else path)


def find_resume_checkpoint(ckpt_dir: str, hpc_dir: str | None = None) -> str | None:
    """The newest of ``resume_candidates``: highest ``global_step``, ties broken by modification time; ``None`` if none.

    The step is read cheaply (``load_checkpoint_meta``: a memory-mapped file, or a folder's ``meta.pt``).
    A candidate that cannot be read (a sharded folder without ``meta.pt``, i.e. a save cut short, or a
    file that is not a checkpoint) is skipped with a warning naming it; when no candidate can be read,
    ``ValueError`` names them all (rather than silently starting the run afresh over them).
    """
    ranked, bad = [], []
    for path in resume_candidates(ckpt_dir, hpc_dir):
        try:
            step = int(load_checkpoint_meta(path)["global_step"])
        except (ValueError, OSError) as err:
            bad.append(f"{path}: {err}")
            continue
        ranked.append((step, _mtime(path), path))
    if bad and not ranked:
        raise ValueError("resume=auto: no readable checkpoint among\n  " + "\n  ".join(bad))
    for problem in bad:
        log.warning("resume=auto: skipping %s", problem)
    return max(ranked)[2] if ranked else None


def _resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: ``ckpt_path`` (a file, a sharded folder or ``last``), or ``resume=auto``'s
    pick among the run's ``checkpoints/{last,step*}.ckpt`` and Lightning's ``hpc_ckpt_*.ckpt`` (or None)."""
    path, resume = cfg.get("ckpt_path"), cfg.get("resume")
    if resume not in (None, "auto"):
        raise ValueError(f"resume={resume!r}: expected auto or null")
    ckpt_dir = os.path.join(cfg.paths.output_dir, "checkpoints")
    if resume == "auto":
        if path:
            raise ValueError(f"give resume=auto or ckpt_path={path!r}, not both")
        hpc_dir = cfg.get("trainer", {}).get("default_root_dir") or cfg.paths.output_dir  # where SLURM saves go
        path = find_resume_checkpoint(ckpt_dir, hpc_dir)
        if path:
            log.info("resume=auto: resuming from %s (step %d)", path, load_checkpoint_meta(path)["global_step"])
        else:
            log.info("resume=auto: no checkpoint in %s or %s, starting fresh", ckpt_dir, hpc_dir)
        return path
    if path == "last":
        path = os.path.join(ckpt_dir, "last.ckpt")
    if path:
        load_checkpoint_meta(path)  # FileNotFoundError / ValueError naming the path
    return path


def wandb_settings(cfg: DictConfig) -> dict[str, str]:
    """What the wandb logger gets for its unset (null) ``group``, ``name`` and ``job_type``.

    group: ``task_name``; every job of one multirun shares ``<task_name>/<sweep folder>``. name: the run
    folder's name (``run_name`` or ``<date>_<time>_<hex>``); a multirun job: ``<job num>:<swept key=value,...>``
    (the keys swept on the command line or in ``hydra.sweeper.params``; else Hydra's ``override_dirname``),
    so trials differ by name. job_type: ``train-<stage>``.
    """
    settings = {
        "group": str(cfg.task_name),
        "name": os.path.basename(os.path.normpath(cfg.paths.output_dir)),
        "job_type": f"train-{cfg.model.get('stage', 'image')}",
    }
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            settings["group"] = f"{cfg.task_name}/{os.path.basename(os.path.normpath(hydra_cfg.sweep.dir))}"
            swept = swept_keys(hydra_cfg)
            values = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
            settings["name"] = f"{hydra_cfg.job.num}:{','.join(values) or hydra_cfg.job.override_dirname}"[:256]
    return settings


def swept_keys(hydra_cfg) -> set[str]:
    """Keys a multirun sweeps: ``hydra.sweeper.params`` (e.g. Optuna's) and the command line's sweeps
    (``lr=1e-4,2e-4``, ``range(...)``; read from ``sys.argv``, which in-process launchers keep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = set((hydra_cfg.sweeper.get("params") or {}).keys())
    args = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    try:
        keys |= {o.key_or_group for o in OverridesParser.create().parse_overrides(args) if o.is_sweep_override()}
    except Exception:  # noqa: BLE001  (argv of another program, e.g. a submitit worker: no command-line sweeps)
        pass
    return keys


def git_state() -> dict[str, Any]:
    """The fgbg checkout's commit and whether tracked files differ from it; {} outside a git checkout."""
    here = str(Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if commit.returncode:
        return {}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def apply_extras(cfg: DictConfig) -> None:
    """``conf/extras``: ``ignore_warnings`` silences Python warnings for the run (as lightning-hydra-template
    does); ``print_config`` logs the resolved config. Keys are checked by ``check_train_config``."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        log.info("extras.ignore_warnings=true: Python warnings are not shown")
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))


def train(cfg: DictConfig) -> dict[str, float]:
    """Check ``cfg``; build data, model, callbacks, loggers and trainer from it; fit; return the final metrics."""
    check_train_config(cfg)  # ranges, shapes and shard paths, before anything heavy is built
    apply_extras(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    log.info(
        "model: %.2f M parameters, %.2f M trainable in stage %s",
        model.num_parameters() / 1e6,
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        model.stage,
    )
    ckpt_path = _resolve_ckpt_path(cfg) if cfg.get("train", True) else None
    logger_extra = {}
    if "wandb" in (cfg.get("logger") or {}):
        unset = {k: v for k, v in wandb_settings(cfg).items() if cfg.logger.wandb.get(k) is None}
        logger_extra["wandb"] = unset
        wandb_run_id = read_resume_record(ckpt_path).get("wandb_run_id") if ckpt_path else None
        if wandb_run_id:
            log.info("continuing wandb run %s", wandb_run_id)
            logger_extra["wandb"] |= {"id": wandb_run_id, "resume": "allow"}
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress callback then
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    loggers = _instantiate_group(cfg.get("logger"), logger_extra)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    uses_wandb = any(isinstance(lg, L.pytorch.loggers.WandbLogger) for lg in loggers)
    try:
        hparams = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
                   for k, v in cfg.items() if k != "hydra"}  # fmt: skip
        hparams["model/params_total"] = model.num_parameters()
        hparams["git"] = git_state()
        for lg in loggers:
            lg.log_hyperparams(hparams)
        if cfg.get("train", True):
            if ckpt_path and hasattr(datamodule, "train_position"):  # ClipDataModule resumes mid-epoch itself
                warnings.filterwarnings(
                    "ignore", message="You're resuming from a checkpoint that ended before the epoch"
                )
            with checkpoint_safe_globals():  # Lightning loads ckpt_path with weights_only
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if cfg.get("validate"):
            trainer.validate(model, datamodule=datamodule)
    finally:
        if uses_wandb:
            import wandb

            wandb.finish()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor | float | int)}
    log.info("final metrics: %s; outputs in %s", metrics, cfg.paths.output_dir)
    return metrics


def sweep_metric(metrics: dict[str, float], name: str | None, required: bool) -> float | None:
    """The value a Hydra sweeper optimises: ``metrics[name]``; ``None`` when ``name`` is null.

    When the run did not log ``name`` (e.g. ``val/loss`` without ``data.val_shards``):
    ``required`` (multirun) raises ``KeyError`` naming the logged metrics rather than handing
    the sweeper ``None``; otherwise a warning and ``None``.
    """
    if name is None:
        return None
    if name not in metrics:
        msg = f"optimized_metric={name!r} was not logged; this run logged {sorted(metrics)}"
        if required:
            raise KeyError(msg)
        log.warning(msg)
        return None
    return metrics[name]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    value = sweep_metric(metrics, cfg.get("optimized_metric"), required=multirun)
    log.info("sweep metric %s = %s", cfg.get("optimized_metric"), value)
    return value


if __name__ == "__main__":
    main()
