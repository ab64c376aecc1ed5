"""Generation reuses what is fixed across sampling steps and clips: the bank's projected keys/values
(``ReferenceBank.reuse_projections``) and the ControlNet's pose embedding. The output must not change,
and a new reference or new weights must never see stale projections."""

from __future__ import annotations

import copy

import pytest
import torch

from fgbg.models.module import COND_KEYS
from tests.test_model import build, random_batch

STEPS = 2
GUIDANCE = {"reference": 2.0, "pose": 1.5, "tracks": 1.3}  # four passes per step, one without the bank


@pytest.fixture(scope="module")
def model():
    """The tiny seeded model with every zero-initialised weight (widened conv_in, ControlNet zero convs,
    track encoder outputs, motion modules' proj_out) made non-zero, so every input reaches the output."""
    m = build(stage="video").eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.where(p == 0, torch.randn(p.shape, generator=g) * 0.1, p))
    return m


def two_clips(model, reference_seed: int = 0, reuse: bool = True) -> list[torch.Tensor]:
    """Two clips from one reference context: plain, then linked with compositional guidance (as the predictor)."""
    ref = random_batch(b=1, seed=10 + reference_seed)
    batch = random_batch(b=1, seed=0)
    cond = {k: batch[k] for k in COND_KEYS} | {"reference_keypoints": ref["reference_keypoints"]}
    model.reuse_in_sampling = reuse
    try:
        ctx = model.encode_reference(ref["reference"], ref["reference_mask"])
        first = model.sample_clip(ctx, cond, None, STEPS, generator=torch.Generator().manual_seed(0))
        second = model.sample_clip(
            ctx, cond, first[:, -1], STEPS, guidance=GUIDANCE, generator=torch.Generator().manual_seed(1)
        )
    finally:
        model.reuse_in_sampling = True
    return [first, second]


def test_reuse_leaves_generation_unchanged_and_projects_once_per_reference(model):
    pose_embeddings = []
    hook = model.controlnet.controlnet_cond_embedding.conv_in.register_forward_hook(
        lambda mod, args, out: pose_embeddings.append(1)
    )
    try:
        before = model.bank.projections_computed
        reused = two_clips(model, reuse=True)
        projections, embeddings = model.bank.projections_computed - before, len(pose_embeddings)
        pose_embeddings.clear()
        fresh = two_clips(model, reuse=False)
    finally:
        hook.remove()
    for a, b in zip(reused, fresh, strict=True):
        assert a.abs().max() > 0.1  # a real video, not a constant
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    readers = len(model.denoiser.reader_names)
    # once per reader layer for both clips, their 2 steps and 4 guidance passes (2 + 2 * 3 reads of the bank each)
    assert projections == readers
    # the pose embedding: once per clip (two clips) instead of once per ControlNet call (2 + 2 * 3 calls)
    assert embeddings == 2 and len(pose_embeddings) == 2 + 2 * 3


def test_a_new_reference_gives_what_a_fresh_model_gives(model):
    pristine = copy.deepcopy(model)  # never generated: its bank holds nothing
    first_ref = two_clips(model, reference_seed=0)  # fills the projections from reference 0
    computed = model.bank.projections_computed
    second = two_clips(model, reference_seed=1)
    assert model.bank.projections_computed == computed + len(model.denoiser.reader_names)
    expected = two_clips(pristine, reference_seed=1)
    for a, b, other in zip(second, expected, first_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert (a - other).abs().max() > 1e-3  # the reference matters, so stale projections would show


def test_changed_weights_are_never_served_stale_projections(model):
    batch = random_batch(b=1, seed=10)
    cond = {k: batch[k] for k in COND_KEYS}
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
    model.sample_clip(ctx, cond, None, 2, generator=gen())  # projections cached for ctx
    layer = model.denoiser.unet.get_submodule(sorted(model.denoiser.reader_names)[0])
    saved = layer.to_k.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.to_k.weight.mul_(1.5)  # in place, as an optimizer step or load_state_dict would
        after = model.sample_clip(ctx, cond, None, 2, generator=gen())
        model.reuse_in_sampling = False
        expected = model.sample_clip(ctx, cond, None, 2, generator=gen())
    finally:
        model.reuse_in_sampling = True
        with torch.no_grad():
            layer.to_k.weight.copy_(saved)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=0)
    restored = model.sample_clip(ctx, cond, None, 2, generator=gen())
    assert (after - restored).abs().max() > 1e-4  # the changed weight did change the output


def test_no_reuse_where_gradients_flow():
    """With a graph the readers project every time, so to_k/to_v and the ReferenceNet get their gradients."""
    m = build(stage="image")
    batch = random_batch(b=1, t=1)
    with m.bank.reuse_projections():
        for _ in range(2):
            loss = m.compute_loss(batch, torch.Generator().manual_seed(0), dropout=False)["loss"]
            loss.backward()
    assert m.bank.projections_computed == 0 and not m.bank.projected
    layer = m.denoiser.unet.get_submodule(sorted(m.denoiser.reader_names)[0])
    assert layer.to_k.weight.grad is not None and layer.to_k.weight.grad.abs().sum() > 0
    m.bank.clear()
    assert not m.bank.reuse
