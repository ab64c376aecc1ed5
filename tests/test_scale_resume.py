"""Resume: a run SIGKILLed after a mid-epoch checkpoint and rerun with resume=auto ends with the
weights of the uninterrupted run, bit for bit (1 process with 1 or 2 data workers, and 2 gloo ranks);
resume=auto picks the newest of last.ckpt, step*.ckpt and SLURM's hpc_ckpt_*.ckpt, files or sharded folders.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fgbg.callbacks.resume_state import load_checkpoint_meta, read_resume_record
from fgbg.train import find_resume_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS, EPOCH_STEPS = 12, 8  # 8 steps per epoch: the checkpoints at steps 3, 6 and 9 fall mid-epoch
RUN = [
    "experiment=synthetic_tiny_image",
    f"trainer.max_steps={STEPS}",
    "trainer.val_check_interval=null",
    "trainer.limit_val_batches=0",
    "data.val_shards=null",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "data.batch_size=2",
    "data.resolution=32",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "callbacks.stage_weights.every_n_train_steps=100",
    "callbacks.sample_video.every_n_steps=0",
    "callbacks.sample_video.num_samples=1",
    "callbacks.sample_video.num_inference_steps=2",
    "extras.print_config=false",
    "logger=csv",
]
# (data workers, trainer): data.epoch_len gives 8 batches of 2 per rank and epoch.
LAYOUTS = {
    "1worker": ["data.num_workers=1", "data.epoch_len=16"],
    "2workers": ["data.num_workers=2", "data.epoch_len=16"],
    "ddp_sim": ["trainer=ddp_sim", "data.num_workers=1", "data.epoch_len=32"],
}
ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
ENV.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1")


def _cmd(log_dir: Path, shards: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fgbg.train", f"paths.log_dir={log_dir}", f"data.train_shards={shards}", *RUN, *extra]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _run_dir(log_dir: Path, name: str) -> Path:
    return log_dir / "synthetic_tiny_image" / "runs" / name


def _max_weight_diff(a_dir: Path, b_dir: Path) -> dict[str, float]:
    worst = {}
    for name in ("image.safetensors", "image_ema.safetensors"):
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        assert a.keys() == b.keys()
        worst[name] = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sigkill_mid_epoch_then_resume_auto_matches_uninterrupted_run(tmp_path, synth_shard, layout):
    """Killed (SIGKILL, the whole process group) after the step-6 checkpoint, 6 batches into an 8-batch epoch."""
    extra = [*LAYOUTS[layout]]
    _run(_cmd(tmp_path / "straight", synth_shard, "run_name=straight", *extra))

    run_dir = _run_dir(tmp_path / "killed", "r1")
    proc = subprocess.Popen(_cmd(tmp_path / "killed", synth_shard, "run_name=r1", *extra), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    ckpt = run_dir / "checkpoints" / "step000006.ckpt"
    deadline = time.monotonic() + 600
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the rank-1 process and the data workers too
    assert proc.wait() == -signal.SIGKILL
    assert ckpt.exists(), "the run never wrote its step-6 checkpoint"
    assert not (run_dir / "checkpoints" / "image.safetensors").exists(), "killed too late: the run had finished"
    resumed_from = find_resume_checkpoint(str(run_dir / "checkpoints"), str(run_dir))
    step = load_checkpoint_meta(resumed_from)["global_step"]
    assert step % EPOCH_STEPS, f"{resumed_from} (step {step}) is on an epoch boundary"

    _run(_cmd(tmp_path / "killed", synth_shard, "run_name=r1", "resume=auto", *extra))
    log_text = (run_dir / "synthetic_tiny_image.log").read_text()
    assert f"resuming from {resumed_from} (step {step})" in log_text, log_text[-2000:]
    epoch, batch = divmod(step, EPOCH_STEPS)
    assert f"training data resumes at epoch {epoch}, batch {batch} of {EPOCH_STEPS}" in log_text
    worst = _max_weight_diff(_run_dir(tmp_path / "straight", "straight") / "checkpoints", run_dir / "checkpoints")
    print(f"{layout}: resumed from step {step}, max |diff| {worst}")
    assert all(v == 0 for v in worst.values()), f"{layout}: resumed from step {step}, max |diff| = {worst}"


@pytest.mark.slow
def test_resume_auto_from_sharded_checkpoint_folders_matches_uninterrupted_run(tmp_path, synth_shard):
    """trainer=fsdp_sim (FSDP2, 2 gloo ranks): checkpoints are folders (meta.pt + distributed-checkpoint files);
    a run stopped after its step-3 checkpoint (3 batches into an 8-batch epoch) and rerun with resume=auto to
    step 6 ends with the weights of a 6-step run."""
    extra = ["trainer=fsdp_sim", "data.num_workers=0", "data.batch_size=1", "data.epoch_len=16"]
    _run(_cmd(tmp_path / "straight", synth_shard, "run_name=straight", "trainer.max_steps=6", *extra))
    _run(_cmd(tmp_path / "two", synth_shard, "run_name=r1", "trainer.max_steps=3", *extra))
    run_dir = _run_dir(tmp_path / "two", "r1")
    assert (run_dir / "checkpoints" / "step000003.ckpt" / "meta.pt").is_file()
    _run(_cmd(tmp_path / "two", synth_shard, "run_name=r1", "resume=auto", "trainer.max_steps=6", *extra))
    log_text = (run_dir / "synthetic_tiny_image.log").read_text()
    assert "checkpoints/last.ckpt (step 3)" in log_text or "checkpoints/step000003.ckpt (step 3)" in log_text
    assert "training data resumes at epoch 0, batch 3 of 8" in log_text
    worst = _max_weight_diff(_run_dir(tmp_path / "straight", "straight") / "checkpoints", run_dir / "checkpoints")
    print(f"fsdp_sim: resumed from a folder at step 3, max |diff| {worst}")
    assert all(v == 0 for v in worst.values()), f"fsdp_sim: max |diff| = {worst}"


def _fake_ckpt(path: Path, step: int, mtime: float, folder: bool = False, **extra) -> Path:
    """A minimal Lightning-shaped checkpoint (``global_step`` + resume record): a file, or a folder with meta.pt."""
    target = path / "meta.pt" if folder else path
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "fgbg_resume": {"wandb_run_id": f"id{step}"}, **extra}, target)
    os.utime(target, (mtime, mtime))
    return path


def test_find_resume_checkpoint_picks_the_highest_step_then_the_newest_file(tmp_path):
    ckpts, run = tmp_path / "run" / "checkpoints", tmp_path / "run"
    assert find_resume_checkpoint(str(ckpts), str(run)) is None
    _fake_ckpt(ckpts / "step000002.ckpt", 2, 100)
    _fake_ckpt(ckpts / "step000010.ckpt", 10, 200)
    _fake_ckpt(ckpts / "last.ckpt", 5, 300)  # a stale last.ckpt (written before step 10's, e.g. killed in between)
    (ckpts / "other.ckpt").write_bytes(b"not a candidate")
    assert find_resume_checkpoint(str(ckpts), str(run)) == str(ckpts / "step000010.ckpt")
    _fake_ckpt(ckpts / "last.ckpt", 10, 300)  # same step: the later write wins
    assert find_resume_checkpoint(str(ckpts), str(run)) == str(ckpts / "last.ckpt")
    # SLURM pre-emption: Lightning's hpc_ckpt_<n>.ckpt in the run folder, newer than last.ckpt
    _fake_ckpt(run / "hpc_ckpt_1.ckpt", 13, 250)
    assert find_resume_checkpoint(str(ckpts), str(run)) == str(run / "hpc_ckpt_1.ckpt")
    assert read_resume_record(str(run / "hpc_ckpt_1.ckpt")) == {"wandb_run_id": "id13"}  # the same wandb run
    # sharded checkpoints are folders with meta.pt
    _fake_ckpt(ckpts / "step000020.ckpt", 20, 400, folder=True)
    assert find_resume_checkpoint(str(ckpts), str(run)) == str(ckpts / "step000020.ckpt")
    assert read_resume_record(str(ckpts / "step000020.ckpt")) == {"wandb_run_id": "id20"}


def test_unreadable_checkpoints_give_errors_naming_them(tmp_path, caplog):
    from omegaconf import OmegaConf

    from fgbg.train import _resolve_ckpt_path

    ckpts, run = tmp_path / "checkpoints", tmp_path
    (ckpts / "step000030.ckpt").mkdir(parents=True)  # a sharded save cut short: no meta.pt
    (ckpts / "step000040.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"(?s)no readable checkpoint.*step000030.ckpt is a folder without meta.pt"):
        find_resume_checkpoint(str(ckpts), str(run))
    for bad, message in (("step000030.ckpt", "folder without meta.pt"), ("step000040.ckpt", "not a readable")):
        with pytest.raises(ValueError, match=f"{bad}.* {message}"):
            read_resume_record(str(ckpts / bad))
    _fake_ckpt(ckpts / "step000020.ckpt", 20, 100)
    with caplog.at_level("WARNING"):  # resume=auto falls back to the newest readable one and says what it skipped
        assert find_resume_checkpoint(str(ckpts), str(run)) == str(ckpts / "step000020.ckpt")
    assert "skipping" in caplog.text and "step000030.ckpt" in caplog.text and "step000040.ckpt" in caplog.text

    def resolve(**kw):
        return _resolve_ckpt_path(OmegaConf.create({"paths": {"output_dir": str(run)}, "resume": None, **kw}))

    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        resolve(ckpt_path="last")
    _fake_ckpt(ckpts / "last.ckpt", 20, 100, folder=True)
    assert resolve(ckpt_path="last") == str(ckpts / "last.ckpt")
    with pytest.raises(ValueError, match="step000040.ckpt is not a readable Lightning checkpoint"):
        resolve(ckpt_path=str(ckpts / "step000040.ckpt"))
    torch.save({"state_dict": {}}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="weights.pt is not a Lightning checkpoint"):
        resolve(ckpt_path=str(tmp_path / "weights.pt"))


@pytest.mark.slow
def test_requeue_resumes_from_the_newer_hpc_checkpoint(tmp_path, synth_shard):
    """A SLURM requeue: hpc_ckpt_1.ckpt (step 4) in the run folder is newer than last.ckpt (step 2); resume=auto takes it."""
    short = ["trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2", *LAYOUTS["1worker"]]
    _run(_cmd(tmp_path, synth_shard, "run_name=job1", *short))
    run_dir = _run_dir(tmp_path, "job1")
    ckpts = run_dir / "checkpoints"
    # what a pre-empted job leaves: its periodic checkpoints up to step 2, then Lightning's SIGUSR1 save at step 4
    shutil.move(ckpts / "step000004.ckpt", run_dir / "hpc_ckpt_1.ckpt")
    shutil.copy(ckpts / "step000002.ckpt", ckpts / "last.ckpt")
    os.utime(run_dir / "hpc_ckpt_1.ckpt", (1e9, 1e9))  # older on disk: the step decides, not the file time
    for name in ("image.safetensors", "image_ema.safetensors"):
        (ckpts / name).unlink()

    _run(_cmd(tmp_path, synth_shard, "run_name=job1", "resume=auto", "trainer.max_steps=6", *short[1:]))
    log_text = (run_dir / "synthetic_tiny_image.log").read_text()
    assert f"resuming from {run_dir / 'hpc_ckpt_1.ckpt'} (step 4)" in log_text, log_text[-2000:]
    assert load_checkpoint_meta(str(ckpts / "last.ckpt"))["global_step"] == 6
    assert (ckpts / "step000006.ckpt").exists() and not (ckpts / "step000004.ckpt").exists(), "steps 3-4 were redone"


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_training_stream_resumed_at_batch_k_yields_batches_k_on(random_shards, num_workers):
    """A training loader built at position (epoch 1, k) yields batches k.. of the uninterrupted epoch 1, then epoch 2."""
    from fgbg.datamodules import ClipDataModule

    paths = random_shards(3, 3, t=8, h=32, w=32, n=60)
    args = dict(resolution=32, clip_len=2, batch_size=2, num_workers=num_workers, epoch_len=14, shuffle_buffer=4)

    def epochs(skip: int, count: int) -> list[list[dict]]:
        dm = ClipDataModule(train_shards=paths, **args)
        dm.train_position = lambda: (1, skip)  # what a resumed trainer's loop progress says
        loader = dm.train_dataloader()
        assert len(loader) == 7, "Lightning counts the skipped batches as done: the length stays the epoch's"
        return [list(loader) for _ in range(count)]

    straight = epochs(0, 2)
    assert [len(e) for e in straight] == [7, 7]
    for k in (1, 2, 3, 6):
        resumed = epochs(k, 2)
        assert [b["key"] for b in resumed[0]] == [b["key"] for b in straight[0][k:]], k
        for a, b in zip(resumed[0] + resumed[1], straight[0][k:] + straight[1], strict=True):
            assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["track_maps"], b["track_maps"])


def test_datamodule_saves_its_position_and_layout_and_warns_on_another_layout(random_shards, caplog):
    from types import SimpleNamespace

    from lightning.pytorch.loops.progress import _BatchProgress

    from fgbg.datamodules import ClipDataModule

    paths = random_shards(2, 2, t=8, h=32, w=32, n=60)
    args = dict(resolution=32, clip_len=2, batch_size=2, num_workers=0, epoch_len=16, shuffle_buffer=4)
    progress = _BatchProgress()
    progress.increment_by(5)  # 5 batches of epoch 3 trained on, as Lightning counts them in on_train_batch_end
    fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    trainer = SimpleNamespace(fit_loop=fit_loop, current_epoch=3, global_rank=0, world_size=1)
    dm = ClipDataModule(train_shards=paths, **args)
    dm.trainer = trainer
    state = dm.state_dict()
    assert state == {"epoch": 3, "batches_done": 5, "world_size": 1, "num_workers": 0, "batch_size": 2, "seed": 0,
                     "batches_per_rank": 8}  # fmt: skip
    progress.is_last_batch = True  # saved on the epoch's last batch: resumes at the next epoch's start
    assert dm.train_position() == (4, 0)
    progress.is_last_batch = False

    resumed = ClipDataModule(train_shards=paths, **args)
    resumed.trainer = trainer
    resumed.load_state_dict(state)
    with caplog.at_level("INFO"):
        assert len(resumed.train_dataloader()) == 8 and "layout" not in caplog.text
    assert "training data resumes at epoch 3, batch 5 of 8" in caplog.text
    other = ClipDataModule(train_shards=paths, **(args | {"batch_size": 4, "num_workers": 1}))
    other.trainer = trainer
    other.load_state_dict(state)
    caplog.clear()
    with caplog.at_level("WARNING"):
        other.train_dataloader()
    assert "another training data layout" in caplog.text and "num_workers 0 -> 1, batch_size 2 -> 4" in caplog.text


def test_resume_state_stores_wandb_id_and_restores_rng(tmp_path):
    import random
    from types import SimpleNamespace

    import numpy as np
    import torch
    from lightning.pytorch.loggers import WandbLogger

    from fgbg.callbacks.resume_state import ResumeState, read_resume_record

    trainer = SimpleNamespace(loggers=[WandbLogger(id="run42abc", offline=True, save_dir=str(tmp_path))])
    ckpt: dict = {"state_dict": {}, "global_step": 0}
    ResumeState().on_save_checkpoint(trainer, None, ckpt)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(ckpt, tmp_path / "x.ckpt")
    record = read_resume_record(str(tmp_path / "x.ckpt"))
    assert record["wandb_run_id"] == "run42abc"
    ResumeState().on_load_checkpoint(trainer, None, {"fgbg_resume": record})
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
