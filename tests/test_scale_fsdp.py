"""Periodic callbacks once per optimizer step, and FSDP2 (trainer=fsdp_sim: 2 gloo processes on CPU).

``StepWeights`` (named by ``_target_`` in the overrides, so the relaunched rank 1 imports it too) records
the full trainable weights after every optimizer step and the EMA's own step count; rank 0 saves them.
From them the test computes the EMA by hand (diffusers' warm-up decay, written out below) and compares
it with the ``*_ema.safetensors`` the run wrote.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from fgbg.callbacks.ema import find_ema
from fgbg.callbacks.steps import OptimizerStepGate
from fgbg.models.sharding import full_state
from tests.conftest import train_config
from tests.test_scale import run_train

ME = "tests.test_scale_fsdp"


class StepWeights(L.Callback):
    """After each optimizer step: the full trainable weights (collective under FSDP); at fit end rank 0 saves
    ``{"steps": [...], "weights": [...], "ema_steps": int, "written": [...], "sampled": [...]}`` to ``path``."""

    def __init__(self, path: str):
        self.path = path
        self.gate = OptimizerStepGate()
        self.steps: list[int] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def _full(self, pl_module) -> dict[str, torch.Tensor]:
        return {k: v.clone().cpu() for k, v in full_state(dict(pl_module.named_parameters())).items()
                if k in pl_module.trainable_names()}  # fmt: skip

    def on_fit_start(self, trainer, pl_module) -> None:
        self.gate.start(trainer)
        self.steps, self.weights = [trainer.global_step], [self._full(pl_module)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.gate.new_step(trainer):
            self.steps.append(trainer.global_step)
            self.weights.append(self._full(pl_module))

    def on_fit_end(self, trainer, pl_module) -> None:
        cbs = {type(c).__name__: c for c in trainer.callbacks}
        record = {
            "steps": self.steps,
            "weights": self.weights,
            "ema_steps": find_ema(trainer).ema.optimization_step,
            "written": cbs["StageWeightsCheckpoint"].written_steps,
            "sampled": cbs["SampleVideoCallback"].sampled_steps,
            "world_size": trainer.world_size,
        }
        if trainer.is_global_zero:
            torch.save(record, self.path)


def hand_ema(weights: list[dict[str, torch.Tensor]], decay=0.999, power=0.75) -> dict[str, torch.Tensor]:
    """EMA over the weights after each optimizer step, diffusers' ``EMAModel`` rule written out:
    at update n (1-based), d = 0 for n = 1 else min(decay, 1 - (1 + (n - 1)) ** -power); ema = d ema + (1 - d) w."""
    ema = {k: v.double().clone() for k, v in weights[0].items()}
    for n, w in enumerate(weights[1:], start=1):
        d = 0.0 if n == 1 else min(decay, 1 - (1 + (n - 1)) ** -power)
        ema = {k: d * ema[k] + (1 - d) * w[k].double() for k in ema}
    return ema


def test_optimizer_step_gate_fires_once_per_step_and_never_at_the_start():
    gate, trainer = OptimizerStepGate(), SimpleNamespace(global_step=0)
    gate.start(trainer)
    fired = []
    for step in (0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 4, 4):  # global_step seen at each micro-batch's end
        trainer.global_step = step
        fired.append(gate.due(trainer, 2))
    assert [s for s, f in zip((0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 4, 4), fired, strict=True) if f] == [2, 4]
    assert not OptimizerStepGate().due(SimpleNamespace(global_step=5), 0), "every_n 0 never fires"


def _overrides(shard: str, record: str, steps: int, every: int) -> list[str]:
    return [
        "experiment=synthetic_tiny_image", f"data.train_shards={shard}", f"data.val_shards={shard}",
        f"trainer.max_steps={steps}", "trainer.val_check_interval=null", "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1", "data.num_workers=0", "data.resolution=32", "data.epoch_len=64",
        "model.lr_scheduler=null", "model.optimizer.lr=1e-3",
        f"callbacks.stage_weights.every_n_train_steps={every}", f"callbacks.sample_video.every_n_steps={every}",
        "callbacks.sample_video.num_inference_steps=2", "callbacks.sample_video.num_samples=1",
        f"callbacks.model_checkpoint.every_n_train_steps={every}", "extras.print_config=false",
        f"+callbacks.step_weights._target_={ME}.StepWeights", f"+callbacks.step_weights.path={record}",
    ]  # fmt: skip


def _check_ema_and_files(record: dict, ckpt_dir: Path, steps: int, every: int) -> None:
    assert record["steps"] == list(range(steps + 1))
    assert record["ema_steps"] == steps, "one EMA update per optimizer step"
    due = list(range(every, steps + 1, every))
    assert record["written"] == due and record["sampled"] == due, "each periodic file once per due step"
    raw, ema = load_file(ckpt_dir / "image.safetensors"), load_file(ckpt_dir / "image_ema.safetensors")
    final, expected = record["weights"][-1], hand_ema(record["weights"])
    assert raw.keys() == ema.keys() == final.keys() == expected.keys()
    assert all(torch.equal(raw[k], final[k]) for k in raw), "image.safetensors is not the full final weights"
    worst = max(float((ema[k].double() - expected[k]).abs().max()) for k in ema)
    moved = max(float((final[k] - record["weights"][0][k]).abs().max()) for k in final)
    print(f"EMA vs hand-computed: max |diff| {worst:.3g}; largest weight move {moved:.3g}")
    assert moved > 1e-3, "the weights barely moved: the EMA comparison would prove nothing"
    assert worst <= 1e-6


def test_accumulated_batches_step_the_ema_and_write_files_once_per_optimizer_step(tmp_path, synth_shard):
    """accumulate_grad_batches=4, 4 optimizer steps (16 micro-batches): the EMA takes 4 updates and equals the EMA
    of the 4 post-step weights computed by hand; stage weights and samples are written at steps 2 and 4 only."""
    from fgbg.train import train

    record = tmp_path / "record.pt"
    cfg = train_config(tmp_path, [*_overrides(synth_shard, str(record), 4, 2), "trainer.accumulate_grad_batches=4",
                                  "data.batch_size=1"])  # fmt: skip
    train(cfg)
    _check_ema_and_files(torch.load(record), tmp_path / "checkpoints", 4, 2)
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.mp4")) == ["step000002.mp4", "step000004.mp4"]


@pytest.mark.slow
def test_fsdp_sim_trains_and_writes_full_weights_ema_samples_and_sharded_checkpoints(tmp_path, synth_shard):
    """trainer=fsdp_sim (FSDP2 over 2 gloo ranks, the production trainer=fsdp code): 4 steps; the stage weights
    load strictly into a single-process model and equal the gathered full weights; the EMA file equals the
    hand-computed EMA of the full weights; a sample video is written (the run has a timeout: a rank-0-only
    forward would hang); .ckpt files are distributed-checkpoint folders."""
    from hydra.utils import instantiate

    from fgbg.models.checkpoint import load_stage_weights

    record = tmp_path / "record.pt"
    args = [*_overrides(synth_shard, str(record), 4, 2), "trainer=fsdp_sim", "data.batch_size=null",
            "data.global_batch_size=2", "run_name=fsdp"]  # fmt: skip
    run_train(args, tmp_path, timeout=900)  # tests.test_scale: the real CLI in a subprocess
    run = tmp_path / "synthetic_tiny_image" / "runs" / "fsdp"
    rec = torch.load(record)
    assert rec["world_size"] == 2
    _check_ema_and_files(rec, run / "checkpoints", 4, 2)
    model = instantiate(train_config(tmp_path / "x", ["experiment=synthetic_tiny_image"]).model)
    for name in ("image.safetensors", "image_ema.safetensors"):
        assert load_stage_weights(model, str(run / "checkpoints" / name)) == "image"
    assert (run / "samples" / "step000004.mp4").is_file() and (run / "samples" / "step000004_sheet.png").is_file()
    for ckpt in ("step000002.ckpt", "last.ckpt"):
        assert (run / "checkpoints" / ckpt / "meta.pt").is_file(), f"{ckpt} is not a sharded checkpoint folder"


@pytest.mark.slow
def test_fsdp_sim_trains_stage_video_with_gradient_checkpointing(tmp_path, synth_shard):
    """Stage video under FSDP2 (frozen sharded units, trainable motion blocks) with activation checkpointing: 2 steps,
    with cfg dropout high enough that ranks drop different conditions (no rank may skip a sharded forward)."""
    from hydra.utils import instantiate

    from fgbg.models.checkpoint import load_stage_weights

    args = [*_overrides(synth_shard, str(tmp_path / "record.pt"), 2, 2), "trainer=fsdp_sim", "data.batch_size=1",
            "model.stage=video", "data.clip_len=4", "callbacks.gradient_checkpointing.enabled=true",
            "model.cfg_dropout.pose=0.5", "model.cfg_dropout.tracks=0.5", "run_name=video"]  # fmt: skip
    run_train(args, tmp_path, timeout=900)  # tests.test_scale: the real CLI in a subprocess
    run = tmp_path / "synthetic_tiny_image" / "runs" / "video"
    model = instantiate(train_config(tmp_path / "x", ["experiment=synthetic_tiny_image", "model.stage=video"]).model)
    for name in ("video.safetensors", "video_ema.safetensors"):
        assert load_stage_weights(model, str(run / "checkpoints" / name)) == "video"
    assert (run / "samples" / "step000002.mp4").is_file()


def test_validation_batches_are_padded_to_the_same_count_on_every_rank(tmp_path):
    """3 validation clips over 2 ranks x batch 1: rank 0 reads 2, rank 1 reads 1 and pads one batch (``val_pad``),
    so both run 2 validation steps (an FSDP forward on one rank only would hang); real samples each once."""
    from fgbg.datamodules.clips import ClipStream, ExampleBuilder
    from tests.conftest import run_synth

    urls = [str(p) for p in sorted(run_synth(tmp_path, 3, 3).glob("train-*.tar"))]
    streams = [ClipStream(urls, ExampleBuilder(resolution=16, clip_len=4), 1, train=False, rank=r, world_size=2)
               for r in (0, 1)]  # fmt: skip
    batches = [list(s) for s in streams]
    assert [len(b) for b in batches] == [2, 2]
    real = [k for bs in batches for b in bs if not b.get("val_pad") for k in b["key"]]
    assert sorted(real) == sorted(set(real)) and len(real) == 3
    assert [bool(b.get("val_pad")) for b in batches[1]] == [False, True]
    assert streams[0].even_val_batches(0, 1) == 2


@pytest.mark.slow
def test_fsdp_sim_validates_when_one_rank_has_no_validation_sample(tmp_path, synth_shard):
    """One validation clip, 2 FSDP ranks: rank 1 runs a padding batch (weight 0) so both ranks take part in every
    sharded forward and in the epoch-end reduction; val/loss is rank 0's clip's loss. The run has a timeout."""
    from tests.conftest import run_synth

    val = sorted(run_synth(tmp_path / "val", 1).glob("train-*.tar"))[0]
    args = [*_overrides(synth_shard, str(tmp_path / "record.pt"), 2, 0), "trainer=fsdp_sim", "data.batch_size=1",
            f"data.val_shards={val}", "trainer.val_check_interval=1", "trainer.limit_val_batches=null",
            "run_name=val"]  # fmt: skip
    run_train(args, tmp_path, timeout=900)  # tests.test_scale: the real CLI in a subprocess
    metrics = (tmp_path / "synthetic_tiny_image" / "runs" / "val" / "csv" / "metrics.csv").read_text()
    rows = [r.split(",") for r in metrics.splitlines()]
    col = rows[0].index("val/loss")
    values = [float(r[col]) for r in rows[1:] if len(r) > col and r[col]]
    assert len(values) == 2 and all(0 < v < float("inf") for v in values), values
