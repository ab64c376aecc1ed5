"""Training loss: every trainable parameter gets a gradient whatever the dropout draw; min-SNR weights stay finite
and positive (zero terminal SNR included); the loss target matches the prediction type."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from fgbg.config_checks import ConfigError, check_train_config
from fgbg.models.module import COND_KEYS, CONDITIONS, min_snr_weights
from tests.test_model import build, random_batch

KINDS = ("epsilon", "v_prediction", "sample")


def _grad_names(model, batch) -> set[str]:
    model.train()
    model.zero_grad(set_to_none=True)
    model.compute_loss(batch, torch.Generator().manual_seed(0))["loss"].backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


DRAWS = [(), CONDITIONS, ("pose", "tracks"), ("pose",), ("tracks",), ("reference",)]


@pytest.mark.parametrize("stage", ["image", "video"])
def test_the_parameters_with_a_gradient_are_the_trainable_set_whatever_the_dropout_draw(stage):
    """Dropout rates 1 drop a condition for every sample, 0 keep it: the extremes a 1-2 sample micro-batch draws.

    DDP (find_unused_parameters=False) needs the same gradient set on every rank, so it must not depend on the draw.
    Before the fix: all pose+tracks dropped left the ControlNet and track encoder without a gradient, all
    references dropped the ReferenceNet (158 tensors in this tiny model).
    """
    model = build(stage=stage)
    batch = random_batch(b=2, t=1 if stage == "image" else 2)
    for dropped in DRAWS if stage == "image" else DRAWS[:2]:  # stage video trains only the motion modules
        for link_prob in (0.0, 1.0) if dropped in ((), CONDITIONS) else (0.0,):  # link frame on/off
            model.cfg_dropout = {k: float(k in dropped) for k in CONDITIONS}
            model.link_prob = link_prob
            got, want = _grad_names(model, batch), model.trainable_names()
            assert got == want, (dropped, link_prob, len(want - got), sorted(want - got)[:3], sorted(got - want)[:3])


def test_generation_skips_an_all_dropped_branch_without_changing_the_output():
    """No graph: a branch whose keep is False for the whole batch is skipped; the output equals running it gated."""
    model = build(stage="image")
    model.eval()
    batch = random_batch(b=2, t=1)
    ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
    static = model.static_conditions(ctx, {k: batch[k] for k in COND_KEYS})
    with torch.no_grad():  # make the residual paths non-zero (zero-initialised output convs)
        for p in model.controlnet.controlnet_down_blocks.parameters():
            p.normal_(0, 0.1)
        for p in model.track_encoder.parameters():
            p.normal_(0, 0.1)
        static = model.static_conditions(ctx, {k: batch[k] for k in COND_KEYS})
    noisy = torch.randn(2, 1, 3, 16, 16)
    t = torch.tensor([10, 500])
    keep = {"reference": torch.ones(2, dtype=torch.bool), "pose": torch.zeros(2, dtype=torch.bool),
            "tracks": torch.zeros(2, dtype=torch.bool)}  # fmt: skip
    with torch.no_grad():
        skipped = model.denoise(noisy, t, ctx, static, keep)
    with torch.enable_grad():  # stage image with a graph runs every branch gated to zero
        ran = model.denoise(noisy, t, ctx, static, keep)
    torch.testing.assert_close(skipped, ran.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "scaled_linear", "linear"])
@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_min_snr_weights_are_finite_and_positive_at_every_timestep(schedule, zero_snr, kind):
    sched = DDPMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=zero_snr, prediction_type=kind)
    snr = compute_snr(sched, torch.arange(sched.config.num_train_timesteps))
    gamma = 5.0
    w = min_snr_weights(snr, gamma, kind)
    assert torch.isfinite(w).all() and (w > 0).all(), (w.min(), w.argmin())
    published = {"epsilon": snr.clamp(max=gamma) / snr, "v_prediction": snr.clamp(max=gamma) / (snr + 1),
                 "sample": snr.clamp(max=gamma)}[kind]  # fmt: skip
    positive = snr > 0
    torch.testing.assert_close(w[positive], published[positive], rtol=1e-6, atol=0)  # the paper's rule, unchanged
    if zero_snr:
        assert snr[-1] == 0 and w[-1] == 1.0  # the terminal step: weight 1 (see min_snr_weights)
        # What the published rule gives there: NaN (0/0) for epsilon, 0 for v and sample.
        assert torch.isnan(published[-1]) if kind == "epsilon" else published[-1] == 0
    else:
        assert (snr > 0).all()


def _pinned_loss(kind: str, answer: str) -> tuple[dict, torch.Tensor]:
    """compute_loss of a tiny ``kind`` model whose network returns the ``answer`` parameterisation's exact target.

    The drawn clean latent, noise and timesteps are read off ``add_noise`` (the real scheduler call).
    """
    model = build(**{"noise_scheduler.prediction_type": kind, "min_snr_gamma": 5.0})
    model.train()
    sched = model.noise_scheduler
    seen = {}
    real_add_noise = sched.add_noise

    def add_noise(z0, noise, t):
        seen.update(z0=z0, noise=noise, t=t)
        return real_add_noise(z0, noise, t)

    def denoise(noisy, timestep, *args, **kwargs):
        assert torch.equal(timestep, seen["t"])
        z0, noise = seen["z0"], seen["noise"]
        return {"epsilon": noise, "v_prediction": sched.get_velocity(z0, noise, timestep), "sample": z0}[answer]

    sched.add_noise = add_noise
    model.denoise = denoise
    out = model.compute_loss(random_batch(b=4, t=1), torch.Generator().manual_seed(1))
    return out, seen["t"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_loss_target_is_the_prediction_types_own(kind):
    """The exact target gives a zero loss; any other parameterisation's target a clearly non-zero one.

    (test_model.py::test_noise_options_train_and_sample only checks the loss is finite: it passes with
    epsilon and v swapped.) The drawn timesteps are checked to be where the targets differ (v ~ epsilon
    near t = 0, v ~ -x0 near t = T).
    """
    out, t = _pinned_loss(kind, kind)
    assert float(out["loss_unweighted"]) < 1e-12 and float(out["loss"]) < 1e-12, out
    assert ((t > 100) & (t < 900)).any(), f"timesteps {t.tolist()} do not separate the targets"
    for other in KINDS:
        if other != kind:
            wrong, _ = _pinned_loss(kind, other)
            assert float(wrong["loss_unweighted"]) > 0.05, (kind, other, wrong)


def test_epsilon_with_zero_terminal_snr_is_refused_by_the_config_check():
    from hydra import compose, initialize_config_dir

    from fgbg.train import CONF_DIR

    def cfg(kind: str):
        overrides = ["experiment=synthetic_tiny_image", "model.noise_scheduler.rescale_betas_zero_snr=true"]
        return compose("train", overrides=[*overrides, f"model.noise_scheduler.prediction_type={kind}"])

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        bad, good = cfg("epsilon"), [cfg("v_prediction"), cfg("sample")]
    with pytest.raises(ConfigError, match=r"prediction_type='epsilon' with .*rescale_betas_zero_snr=true: expected"):
        check_train_config(bad, check_paths=False)
    for cfg in good:
        check_train_config(cfg, check_paths=False)
