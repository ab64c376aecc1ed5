"""Training drops the reference keypoints alone (model.reference_keypoints_dropout), so a person-hint model has seen
what fgbg-generate feeds it when it has no reference keypoints (reference_keypoints=none, or mediapipe finding no
person): pose and reference present, person hint absent."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from PIL import Image

from fgbg.app.examples import driving_example
from fgbg.config_checks import ConfigError, check_train_config
from fgbg.data.conditioning import collate_conditions
from fgbg.generate import prepare_jobs
from fgbg.models.person_hint import jitter_reference_keypoints, person_hint
from fgbg.utils.config import CONF_DIR
from tests.test_model import H, W, build

B = 16  # the training batch: one generation job repeated


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    """Clip 0 of a real fgbg-generate job (reference_keypoints=none), 4 frames of the dance_pan pose at 16x16."""
    folder = tmp_path_factory.mktemp("ref")
    ref, mask = folder / "reference.png", folder / "mask.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(ref)
    person = np.zeros((H, W), np.uint8)
    person[2:, 3:13] = 255  # white = person
    Image.fromarray(person).save(mask)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("generate", overrides=[
            "ckpt_path=unused", f"reference={ref}", f"reference_mask={mask}", "reference_keypoints=none",
            f"motion={driving_example('dance_pan').shard}", "camera=static", "num_frames=4",
        ])  # fmt: skip
    jobs, _ = prepare_jobs(cfg, {"resolution": H, "clip_len": 4, "stage": "video"})
    return collate_conditions([jobs[0]])


class Seen(Exception):
    """Raised once the denoiser's inputs are planned: the network pass itself is not needed."""


def hint_inputs(model, call) -> torch.Tensor:
    """The person-hint channels (the last c + 1 of the denoiser's extra inputs) of the first network call."""
    seen = []
    plan_of = model.denoise_plan

    def spy(*args, **kwargs):
        seen.append(plan_of(*args, **kwargs)["inputs"][:, :, -(model.latent.channels + 1) :].clone())
        raise Seen

    model.denoise_plan = spy
    try:
        with pytest.raises(Seen):
            call()
    finally:
        del model.denoise_plan
    return seen[0]


def generation_hint(model, job) -> torch.Tensor:
    """What fgbg-generate's predictor feeds for this job (no reference keypoints): (1, T, c + 1, h, w)."""
    cond = {k: v for k, v in job.items() if k not in ("reference", "reference_mask", "key")}
    with torch.no_grad():
        ctx = model.encode_reference(job["reference"], job["reference_mask"])
        return hint_inputs(model, lambda: model.sample_clip(ctx, cond, None, 1, "ddim", None, torch.Generator()))


def training_batch(job) -> dict:
    """The job as a training batch of B samples with the true reference keypoints (the first frame's pose)."""
    batch = {k: v.expand(B, *v.shape[1:]) for k, v in job.items() if isinstance(v, torch.Tensor)}
    frames = torch.rand(B, *job["pose_maps"].shape[1:], generator=torch.Generator().manual_seed(1)) * 2 - 1
    return batch | {"frames": frames, "reference_keypoints": batch["keypoints"][:, 0]}


@pytest.fixture(scope="module")
def model():
    return build(stage="video", cfg_dropout={}, link_prob=0.0)


def training_hint(model, rate: float, job, seed: int = 0, jitter: float = 0.0) -> torch.Tensor:
    """Person-hint channels a training step with ``reference_keypoints_dropout=rate`` (and ``_jitter``) feeds:
    (B, T, c + 1, h, w)."""
    model.reference_keypoints_dropout = rate
    model.reference_keypoints_jitter = jitter
    batch = training_batch(job)
    with torch.no_grad():
        return hint_inputs(model, lambda: model.compute_loss(batch, torch.Generator().manual_seed(seed)))


def dropped(hint: torch.Tensor) -> torch.Tensor:
    return hint.flatten(1).eq(0).all(1)


def test_rate_one_feeds_what_generation_feeds_without_reference_keypoints(model, job):
    assert not job["reference_keypoints"].any()  # reference_keypoints=none: the absent keypoints
    generated = generation_hint(model, job)
    hint = training_hint(model, 1.0, job)
    assert hint.shape == (B, *generated.shape[1:])
    assert torch.equal(hint, generated.expand_as(hint))
    assert dropped(hint).all()  # and that is no hint at all


def test_rate_zero_feeds_the_person_hint_of_the_true_keypoints(model, job):
    hint = training_hint(model, 0.0, job)
    batch = training_batch(job)
    with torch.no_grad():
        ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
        expected = person_hint(ctx.latent, ctx.mask, batch["reference_keypoints"], batch["keypoints"], ctx.image_size)
    assert torch.equal(hint, expected)
    assert not dropped(hint).any()
    assert (hint[:, :, -1] > 0.5).sum() > B * 4 * 4  # the person landed somewhere in every frame


def test_rate_half_drops_about_half_the_batch_reproducibly(model, job):
    full = training_hint(model, 0.0, job)
    hint = training_hint(model, 0.5, job, seed=0)
    drop = dropped(hint)
    assert 4 <= int(drop.sum()) <= 12, drop
    assert torch.equal(hint[~drop], full[~drop])  # the kept samples keep their hint exactly
    assert torch.equal(dropped(training_hint(model, 0.5, job, seed=0)), drop)  # seeded by the module's generator
    assert not torch.equal(dropped(training_hint(model, 0.5, job, seed=1)), drop)


def test_jitter_moves_present_joints_by_the_configured_std_and_leaves_absent_ones_at_zero():
    kp = torch.rand(4000, 18, 3) * 32
    kp[:, ::3] = 0  # absent joints: what dropout and a failed estimate give
    out = jitter_reference_keypoints(kp, 1.5, torch.Generator().manual_seed(0))
    shift = (out - kp)[kp[..., 2] > 0]
    assert torch.equal(out[:, ::3], kp[:, ::3]) and torch.equal(out[..., 2], kp[..., 2])
    assert abs(float(shift[:, :2].std()) - 1.5) < 0.02 and abs(float(shift[:, :2].mean())) < 0.02
    again = jitter_reference_keypoints(kp, 1.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_training_jitter_changes_the_hint_reproducibly_and_keeps_dropped_samples_empty(model, job):
    exact = training_hint(model, 0.0, job)
    moved = training_hint(model, 0.0, job, jitter=0.1)
    changed = (moved != exact).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # most samples' hints moved (at 16x16 one may sample outside the mask)
    assert torch.equal(moved, training_hint(model, 0.0, job, jitter=0.1))  # drawn from the training generator
    both = training_hint(model, 1.0, job, jitter=0.1)
    assert dropped(both).all()  # dropped keypoints stay absent: jitter moves nothing that is not there
    assert torch.equal(training_hint(model, 0.0, job, jitter=0.0), exact)  # 0: no draw, the same stream


def test_jitter_key_composes_and_bad_values_are_refused_clearly():
    assert _train_cfg().model.reference_keypoints_jitter == 0.0
    check_train_config(_train_cfg("model.reference_keypoints_jitter=0.035"), check_paths=False)
    for bad in ("1.5", "-0.1"):
        with pytest.raises(ConfigError, match=rf"model\.reference_keypoints_jitter={re.escape(bad)}: expected"):
            check_train_config(_train_cfg(f"model.reference_keypoints_jitter={bad}"), check_paths=False)
    with pytest.raises(InstantiationException, match=r"model.reference_keypoints_jitter=2: expected"):
        build(reference_keypoints_jitter=2)


def _train_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["experiment=synthetic_tiny_image", *overrides])


def test_the_key_composes_and_bad_rates_are_refused_clearly():
    assert _train_cfg().model.reference_keypoints_dropout == 0.1  # conf/model/fgbg_tiny.yaml
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        assert compose("train", overrides=["model=fgbg_sd15"]).model.reference_keypoints_dropout == 0.1
    cfg = _train_cfg("model.reference_keypoints_dropout=0.25")
    check_train_config(cfg, check_paths=False)
    assert cfg.model.reference_keypoints_dropout == 0.25
    for bad in ("1.5", "-0.1", "often"):
        shown = re.escape(bad) if bad[-1].isdigit() else f"'{bad}'"
        with pytest.raises(
            ConfigError, match=rf"model\.reference_keypoints_dropout={shown}: expected a rate in \[0, 1\]"
        ):
            check_train_config(_train_cfg(f"model.reference_keypoints_dropout={bad}"), check_paths=False)
    with pytest.raises(
        InstantiationException, match=r"model.reference_keypoints_dropout=2: expected a rate in \[0, 1\]"
    ):
        build(reference_keypoints_dropout=2)


def test_fgbg_train_refuses_a_bad_rate_before_any_work(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fgbg.train", "experiment=synthetic_tiny_image", f"paths.log_dir={tmp_path}",
         "model.reference_keypoints_dropout=1.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "model.reference_keypoints_dropout=1.5: expected a rate in [0, 1]" in done.stderr + done.stdout
