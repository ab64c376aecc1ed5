"""wandb the logger's way (issue 17, point 1): an offline run's rows, names, config and artifacts, read back from
the run's own record file."""

from __future__ import annotations

import json

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from fgbg.train import CONF_DIR, train, wandb_settings
from tests.test_train_ops import compose_run
from tests.wandb_records import artifacts, history_rows, offline_run_file, read_records, run_record


def test_offline_run_logs_videos_at_the_steps_asked_with_names_config_and_artifacts(tmp_path, synth_shard):
    cfg = compose_run(
        tmp_path / "run7", synth_shard,
        ["logger=csv_wandb", "trainer.max_steps=4", "callbacks.sample_video.every_n_steps=2",
         "callbacks.stage_weights.log_artifact=true"],
    )  # fmt: skip
    train(cfg)
    records = read_records(offline_run_file(tmp_path / "run7" / "wandb"))
    rows = history_rows(records)
    assert [r["trainer/global_step"] for r in rows if "samples/video" in r] == [2, 4]
    assert [r["trainer/global_step"] for r in rows if "samples/sheet" in r] == [2, 4]
    loss_steps = [r["trainer/global_step"] for r in rows if "train/loss" in r]
    assert loss_steps == sorted(loss_steps) and len(loss_steps) >= 3  # Lightning's rows on the same axis

    run = run_record(records)
    assert (run.run_group, run.display_name, run.job_type) == ("synthetic_tiny_image", "run7", "train-image")
    config = {
        item.key: json.loads(item.value_json) for r in records if r.HasField("config") for item in r.config.update
    }
    assert len(config["git"]["commit"]) == 40  # the code's commit, beside the resolved config
    assert config["model"]["stage"] == "image"

    (artifact,) = artifacts(records)
    assert (artifact.name, artifact.type) == (f"{run.run_id}-image", "model")
    assert sorted(e.path for e in artifact.manifest.contents) == ["image.safetensors", "image_ema.safetensors"]
    assert {"latest", "step4"} <= set(artifact.aliases)


def test_multirun_jobs_share_a_group_and_differ_by_name(tmp_path, monkeypatch):
    """Named by the swept values only (``fgbg-train -m ... model.optimizer.lr=1e-4,2e-4``), not every override."""
    monkeypatch.setattr(
        "sys.argv", ["fgbg-train", "-m", "experiment=synthetic_tiny_image", "model.optimizer.lr=1e-4,2e-4"]
    )
    names, groups = [], set()
    for num, lr in enumerate(("0.0001", "0.0002")):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"model.optimizer.lr={lr}"], return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / str(num))
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = str(tmp_path / "2026-11-30_12-00-00_abc123")
            cfg.hydra.job.num = num
            cfg.hydra.job.override_dirname = f"experiment=synthetic_tiny_image,model.optimizer.lr={lr}"
            cfg.hydra.overrides.task = ["experiment=synthetic_tiny_image", f"model.optimizer.lr={lr}"]
        HydraConfig().set_config(cfg)
        settings = wandb_settings(cfg)
        names.append(settings["name"])
        groups.add(settings["group"])
    assert names == ["0:model.optimizer.lr=0.0001", "1:model.optimizer.lr=0.0002"]
    assert groups == {"train/2026-11-30_12-00-00_abc123"}
