"""Launchers (conf/launcher/) and hyperparameter search (conf/hparams_search/) of fgbg-train.

Both need the `sweep` extra (hydra-submitit-launcher, hydra-optuna-sweeper), which `make install` installs.
"""

from __future__ import annotations

import math
import os
import re

import pytest
import yaml
from hydra import compose, initialize_config_dir

from fgbg.train import CONF_DIR
from tests.conftest import run_synth
from tests.test_scale import run_train

SWEEP_EXTRA = "the `sweep` extra is not installed (make install, or pip install -e .[sweep])"


def test_submitit_slurm_launcher_sizes_the_sbatch_request_from_the_trainer(tmp_path, monkeypatch):
    """launcher=submitit_slurm composes, and the real launcher renders an sbatch script with one task per GPU.

    No SLURM here: submitit only needs an ``srun`` on PATH to build its executor (a stub), and
    ``AutoExecutor.map_array`` is replaced by one that keeps the sbatch text instead of calling sbatch.
    """
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=SWEEP_EXTRA)
    import submitit
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["launcher=submitit_slurm", "trainer.num_nodes=2", "trainer.devices=4",
                       "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
            return_hydra_config=True,
        )  # fmt: skip
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "submitit_slurm"
    assert cfg.hydra.runtime.choices.trainer == "slurm" and cfg.resume == "auto"
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy")
    assert cfg.trainer.plugins[1]._target_.endswith("SLURMEnvironment")

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    scripts = []

    class Submitted:
        def results(self):
            return ["not run"]

    def keep_script(self, fn, *args):
        assert self._executor.max_num_timeout == 3 and len(args[0]) == 2, "requeues on timeout; one job per point"
        scripts.append(self._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid"))
        return [Submitted() for _ in args[0]]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", keep_script)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    assert launcher.launch([["model.optimizer.lr=1e-4"], ["model.optimizer.lr=2e-4"]], initial_job_idx=0) == [
        "not run",
        "not run",
    ]
    (script,) = scripts
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=1440",
                 "--signal=USR2@120", "--cpus-per-task=8"):  # fmt: skip
        assert f"#SBATCH {line}" in script, f"{line} not in the sbatch script:\n{script}"


def test_local_launcher_is_hydras_basic_launcher():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["launcher=local"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@pytest.mark.slow
def test_optuna_search_runs_two_trials_and_reports_the_best_val_loss(tmp_path):
    """hparams_search=optuna, 2 trials of 2 CPU steps each: the sweeper records the best trial's val/loss."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason=SWEEP_EXTRA)
    shard = sorted(run_synth(tmp_path / "synth", 4, 128).glob("train-*.tar"))[0]
    run_train(
        ["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
         "experiment=synthetic_tiny_image", "debug=default", f"data.train_shards={shard}", f"data.val_shards={shard}",
         "data.resolution=32", "callbacks.sample_video.num_inference_steps=2", "extras.print_config=false",
         "-m"],  # after the overrides: run_train puts paths.log_dir first
        tmp_path / "logs", timeout=900,
    )  # fmt: skip
    (sweep,) = (tmp_path / "logs" / "debug" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    values, lrs = [], []
    for job in jobs:
        log_text = (job / "debug.log").read_text()
        match = re.search(r"sweep metric val/loss = ([0-9.eE+-]+)", log_text)
        assert match, log_text[-2000:]
        values.append(float(match.group(1)))
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        lrs += [float(o.split("=", 1)[1]) for o in overrides if o.startswith("model.optimizer.lr=")]
    assert len(lrs) == 2 and all(5e-5 <= lr <= 1e-3 for lr in lrs), lrs
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert math.isfinite(results["best_value"]) and results["best_value"] == pytest.approx(min(values), rel=1e-6)
    assert 5e-5 <= results["best_params"]["model.optimizer.lr"] <= 1e-3
