"""trainer=ddp_sim survives rank-dependent condition dropout and a non-finite loss or gradient on one rank.

One real ``python -m fgbg.train`` run: 2 gloo ranks, batch 1 per rank, the production DDP strategy
(``DDPStrategy``, ``find_unused_parameters=False``: conf/trainer/ddp_sim.yaml). Two helpers here are named by
``_target_`` in the overrides (the relaunched rank 1 imports them too): ``ScriptedDropout``, an
``FgbgModule`` whose condition dropout rates and faults follow a per-(rank, step) script, and
``RankDump``, a callback that saves each rank's trainable weights, guard counters and keep draws.
"""

from __future__ import annotations

import json
import time

import lightning as L
import torch

from fgbg.callbacks import NumericalGuard
from fgbg.models.module import CONDITIONS, FgbgModule
from tests.conftest import run_synth
from tests.test_scale import run_train

STEPS = 7
# (rank, step) -> conditions dropped for the whole micro-batch; every other draw keeps everything.
# Step 0: rank 0 drops pose and tracks (its ControlNet and track encoder would get no gradient), rank 1 none.
# Step 1: both ranks drop pose and tracks (the old code passed down=None on both).
# Step 2: rank 0 drops everything, reference too (bank, global tokens and hints zeroed), rank 1 only tracks.
# Step 5: rank 1 drops pose and tracks, rank 0 none.
DROPS = {(0, 0): ("pose", "tracks"), (0, 1): ("pose", "tracks"), (1, 1): ("pose", "tracks"),
         (0, 2): CONDITIONS, (1, 2): ("tracks",), (1, 5): ("pose", "tracks")}  # fmt: skip
NAN_LOSS = (1, 3)  # (rank, step): the loss is NaN on rank 1 only
NAN_GRAD = (0, 4)  # (rank, step): one gradient is NaN on rank 0 only (before DDP's all-reduce)
NAN_GRAD_LOCAL = (1, 5)  # (rank, step): one gradient element set to NaN on rank 1 after the all-reduce


class ScriptedDropout(FgbgModule):
    """The real module; only its dropout rates (1 = drop every sample, 0 = keep) and two faults follow a script.

    The keep masks are drawn by the real ``compute_loss`` (``rand >= rate``) and go through the real ``denoise``.
    """

    def on_fit_start(self) -> None:
        self.keeps: list[dict] = []
        param = next(p for n, p in self.named_parameters() if p.requires_grad and n.startswith("controlnet."))
        param.register_hook(lambda g: g * float("nan") if self._now() == NAN_GRAD else g)
        # In a list: a Parameter attribute would register a second name for it.
        self.largest = [max((p for p in self.parameters() if p.requires_grad), key=lambda p: p.numel())]

    def on_after_backward(self) -> None:  # rank-local, as an FSDP2 gradient shard would be
        if self._now() == NAN_GRAD_LOCAL:
            grad = self.largest[0].grad
            with torch.no_grad():
                (grad.to_local() if hasattr(grad, "to_local") else grad).view(-1)[0] = float("nan")

    def _now(self) -> tuple[int, int]:
        return self.global_rank, self.global_step

    def on_train_batch_start(self, batch, batch_idx) -> None:
        dropped = DROPS.get(self._now(), ())
        self.cfg_dropout = {k: 1.0 if k in dropped else 0.0 for k in CONDITIONS}

    def denoise(self, noisy, timestep, ctx, static, keep, *args, **kwargs):
        if self.training:
            self.keeps.append({"step": self.global_step} | {k: v.tolist() for k, v in keep.items()})
        return super().denoise(noisy, timestep, ctx, static, keep, *args, **kwargs)

    def compute_loss(self, batch, *args, **kwargs) -> dict:
        out = super().compute_loss(batch, *args, **kwargs)
        if self.training and self._now() == NAN_LOSS:
            out = {k: v * float("nan") for k, v in out.items()}
        return out


class RankDump(L.Callback):
    """Every rank saves its trainable weights (start and end) to ``rank{r}.pt`` and its guard state to ``rank{r}.json``."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self.initial: dict[str, torch.Tensor] = {}
        self.skipped_by_step: list[int] = []

    @staticmethod
    def _trainable(pl_module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    @staticmethod
    def _guard(trainer) -> NumericalGuard:
        (guard,) = (c for c in trainer.callbacks if isinstance(c, NumericalGuard))
        return guard

    def on_fit_start(self, trainer, pl_module) -> None:
        self.initial = self._trainable(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.skipped_by_step.append(self._guard(trainer).skipped_steps)

    def on_fit_end(self, trainer, pl_module) -> None:
        import os

        os.makedirs(self.dirpath, exist_ok=True)
        r = trainer.global_rank
        torch.save({"initial": self.initial, "final": self._trainable(pl_module)}, f"{self.dirpath}/rank{r}.pt")
        state = self._guard(trainer).state_dict() | {
            "skipped_by_step": self.skipped_by_step,
            "global_step": trainer.global_step,
            "keeps": pl_module.keeps,
        }
        with open(f"{self.dirpath}/rank{r}.json", "w") as f:
            json.dump(state, f)


def test_ddp_sim_survives_rank_dependent_dropout_and_one_rank_nan(tmp_path):
    """Seven steps, 2 ranks x 1 sample; the script above. Before the fix step 0 raised DDP's "parameters that
    were not used in producing the loss" (step 2 with the reference dropped on rank 0 only: a hang), and the
    NaN loss on one rank Lightning's "Skipping the `training_step` by returning None in distributed training
    is not supported". Checked: the run ends after 7 steps; both ranks skip exactly steps 3 (NaN loss on
    rank 1), 4 (NaN gradient on rank 0 before the all-reduce: DDP's average makes it NaN on both) and 5
    (NaN gradient element on rank 1 after the all-reduce: only the guard's all-reduced flag makes rank 0
    skip too); the keep draws were the scripted ones; the replicas' trainable weights are bitwise equal,
    and moved.
    """
    shards = run_synth(tmp_path / "synth", 2, 1)
    dump = tmp_path / "dump"
    me = "tests.test_scale_ddp_robust"
    args = [
        "experiment=synthetic_tiny_image", "trainer=ddp_sim", f"model._target_={me}.ScriptedDropout",
        f"trainer.max_steps={STEPS}", "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1",
        f"data.train_shards='{shards}/train-{{000000..000001}}.tar'", "data.val_shards=null",
        "data.batch_size=1", "data.num_workers=0", "data.resolution=32", "data.epoch_len=64",
        "model.lr_scheduler=null", "model.optimizer.lr=1e-3", "callbacks.sample_video.every_n_steps=0",
        "extras.print_config=false", f"+callbacks.rank_dump._target_={me}.RankDump",
        f"+callbacks.rank_dump.dirpath={dump}",
    ]  # fmt: skip
    start = time.monotonic()
    run_train(args, tmp_path / "logs", timeout=600)
    print(f"ddp_sim run: {time.monotonic() - start:.1f} s")

    states = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, state in enumerate(states):
        assert state["global_step"] == STEPS
        assert state["skipped_steps"] == 3 and state["consecutive"] == 0, (r, state)
        assert state["skipped_by_step"] == [0, 0, 0, 1, 2, 3, 3], (r, state["skipped_by_step"])
        keeps = {k["step"]: k for k in state["keeps"]}
        assert sorted(keeps) == list(range(STEPS)), f"rank {r}: one training forward per step"
        for step, keep in keeps.items():
            dropped = DROPS.get((r, step), ())
            assert all(keep[c] == [c not in dropped] for c in CONDITIONS), (r, step, keep)

    w0, w1 = (torch.load(dump / f"rank{r}.pt") for r in (0, 1))
    assert w0["final"].keys() == w1["final"].keys() and w0["final"]
    unequal = [n for n in w0["final"] if not torch.equal(w0["final"][n], w1["final"][n])]
    diff = max(float((w0["final"][n] - w1["final"][n]).abs().max()) for n in w0["final"])
    moved = max(float((w0["final"][n] - w0["initial"][n]).abs().max()) for n in w0["final"])
    print(f"max |w_rank0 - w_rank1| = {diff:.3g}; largest move {moved:.3g}")
    assert not unequal, f"replicas diverged in {len(unequal)} tensors, up to {diff:.3g}"
    assert moved > 1e-4, "the weights did not move: the comparison would prove nothing"
    assert all(torch.isfinite(w).all() for w in w0["final"].values())
