"""fgbg-train operations: checkpoint retention (keep_last_k, last.ckpt, resume=auto), extras, debug samples nothing."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from fgbg.callbacks.checkpoint import KeepLastCheckpoint
from fgbg.config_checks import ConfigError, check_train_config
from fgbg.train import apply_extras, train
from tests.conftest import train_config
from tests.test_train import FAST


def compose_run(tmp_path: Path, shard: str, overrides: list[str]):
    """The tiny image-stage config on ``shard``, run folder ``tmp_path``, Hydra's runtime set as the CLI would."""
    return train_config(tmp_path, [
        "experiment=synthetic_tiny_image", f"data.train_shards={shard}", "data.val_shards=null", *FAST,
        "trainer.val_check_interval=null", "trainer.limit_val_batches=0", "logger=csv", *overrides,
    ])  # fmt: skip


def ckpt_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_keep_last_k_keeps_the_newest_k_and_last_ckpt_across_a_resume(tmp_path, synth_shard, caplog):
    every_step = ["callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.keep_last_k=2",
                  "callbacks.sample_video.at_end=false"]  # fmt: skip
    train(compose_run(tmp_path, synth_shard, ["trainer.max_steps=4", *every_step]))
    assert ckpt_names(tmp_path) == ["last.ckpt", "step000003.ckpt", "step000004.ckpt"]

    caplog.set_level("INFO", logger="fgbg.train")
    train(compose_run(tmp_path, synth_shard, ["trainer.max_steps=5", "resume=auto", *every_step]))
    assert "resume=auto: resuming from" in caplog.text and "(step 4)" in caplog.text
    # the set restored from the step-4 checkpoint keeps rolling: step 3 is deleted, not left behind
    assert ckpt_names(tmp_path) == ["last.ckpt", "step000004.ckpt", "step000005.ckpt"]


def test_keep_last_checkpoint_refuses_what_keep_last_k_sets(tmp_path):
    default, only_last = KeepLastCheckpoint(dirpath=str(tmp_path)), KeepLastCheckpoint(keep_last_k=0)
    assert (default.save_top_k, default.save_last, default.monitor, default.mode) == (3, True, "step", "max")
    assert (only_last.save_top_k, only_last.save_last) == (0, True)  # Lightning then writes last.ckpt alone
    with pytest.raises(ValueError, match=r"\['save_top_k'\] are set by keep_last_k"):
        KeepLastCheckpoint(dirpath=str(tmp_path), save_top_k=5)
    with pytest.raises(ValueError, match="keep_last_k=-2: expected an integer >= 0, or -1"):
        KeepLastCheckpoint(keep_last_k=-2)


def test_debug_samples_nothing_and_keep_last_k_bounds_the_checkpoints(tmp_path, synth_shard, capfd, caplog):
    """One debug run (2 steps): no sample at all, not even at the end of fit; a checkpoint at every step with
    keep_last_k=1 leaves last.ckpt and the newest step checkpoint only. Its output is not a terminal, so
    progress comes as plain lines with the step out of max_steps and an ETA, and no carriage-return bar."""
    cfg = compose_run(
        tmp_path, synth_shard,
        ["debug=default", "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.keep_last_k=1"],
    )  # fmt: skip
    assert cfg.trainer.max_steps == 2 and cfg.callbacks.sample_video.at_end is False
    caplog.set_level("INFO", logger="fgbg.callbacks.progress")
    train(cfg)
    assert ckpt_names(tmp_path) == ["last.ckpt", "step000002.ckpt"]
    out, err = capfd.readouterr()
    assert "\r" not in out + err, "a carriage-return progress bar in non-terminal output"
    lines = [r.getMessage() for r in caplog.records if r.name == "fgbg.callbacks.progress"]
    assert lines[0] == "training: 2 steps" and lines[-1] == "training done at step 2", lines
    assert re.fullmatch(
        r"step 1/2 \(50\.0%\) \| loss \d+\.\d{4} \| [\d.]+ s/step \| elapsed [\d:]+ \| ETA [\d:]+", lines[1]
    )
    assert lines[2].startswith("step 2/2 (100.0%)") and lines[2].endswith("ETA 0:00:00"), lines
    assert not (tmp_path / "samples").exists() or not any((tmp_path / "samples").iterdir())


def test_extras_ignore_warnings_silences_warnings_and_unknown_extras_are_refused(tmp_path, synth_shard):
    cfg = compose_run(tmp_path, synth_shard, ["extras.ignore_warnings=true"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        apply_extras(cfg)
        warnings.warn("not actionable", UserWarning, stacklevel=1)
    assert seen == []
    cfg = compose_run(tmp_path, synth_shard, [])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        apply_extras(cfg)
        warnings.warn("shown", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["shown"]

    bad = compose_run(tmp_path, synth_shard, ["+extras.enforce_tags=true", "extras.print_config=yes"])
    with pytest.raises(ConfigError) as err:
        check_train_config(bad, check_paths=False)
    assert "extras.enforce_tags=True: unknown; fgbg-train reads ignore_warnings, print_config" in str(err.value)
    assert "extras.print_config='yes': expected true or false" in str(err.value)


def test_sd15_without_its_weight_folders_is_refused_before_any_work(tmp_path, synth_shard):
    """fgbg_sd15's required folders (???) stay required although it builds on fgbg_tiny (no null under them)."""
    cfg = compose_run(tmp_path, synth_shard, ["model=fgbg_sd15", "data.resolution=512"])
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg, check_paths=False)
    assert "model.unet.pretrained=???: required" in str(err.value)
    assert "model.image_encoder.pretrained=???: required" in str(err.value)
    given = ["model.unet.pretrained=/sd15", "model.image_encoder.pretrained=/clip"]
    check_train_config(compose_run(tmp_path, synth_shard, ["model=fgbg_sd15", "data.resolution=512", *given]), False)


@pytest.mark.parametrize("stop", ["max_steps", "max_time"])
def test_last_ckpt_holds_the_final_step_when_training_stops_between_checkpoints(tmp_path, stop):
    """max_steps=5 with checkpoints every 2 steps, or a time limit hit mid-way: last.ckpt is the final step
    (Lightning's save_last alone keeps step 4's state, and a resume would redo the steps after it)."""
    import time

    import lightning as L
    import torch
    from lightning.pytorch.demos.boring_classes import BoringModel

    class Slow(BoringModel):
        def training_step(self, batch, batch_idx):
            if stop == "max_time":
                time.sleep(0.05)
            return super().training_step(batch, batch_idx)

    ckpt = KeepLastCheckpoint(dirpath=str(tmp_path), filename="step{step:06d}", every_n_train_steps=2)
    limits = {"max_steps": 5} if stop == "max_steps" else {"max_steps": 10_000, "max_time": {"seconds": 1}}
    trainer = L.Trainer(callbacks=[ckpt], logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu", devices=1, **limits)  # fmt: skip
    trainer.fit(Slow())
    final = trainer.global_step
    assert final == 5 if stop == "max_steps" else 2 < final < 10_000  # stopped by the clock, past a checkpoint
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == final
