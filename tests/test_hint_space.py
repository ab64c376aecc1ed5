"""model.hint_space: the motion and person hints warped in pixel space and encoded, or warped as latents."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from fgbg.models.module import CONDITIONS
from fgbg.models.person_hint import person_hint
from tests.test_model import H, random_batch
from tests.test_tiny_latent import C, latent_cfg, vae_dir  # noqa: F401 (the fixture)

COND = ("pose_maps", "body_region", "track_maps", "tracks", "track_visible", "track_anchor",
        "track_anchor_visible", "keypoints", "reference_keypoints")  # fmt: skip


def build_latent(vae_dir, **overrides):  # noqa: F811
    torch.manual_seed(0)
    return instantiate(latent_cfg(vae_dir, person_hint=True, **overrides))


def hints(model, batch):
    with torch.no_grad():
        ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
        return model.static_conditions(ctx, {k: batch[k] for k in COND})


def test_pixel_model_hints_are_the_same_in_either_space():
    from tests.test_model import build

    batch = random_batch()
    latent = hints(build(person_hint=True), batch)
    pixel = hints(build(person_hint=True, hint_space="pixel"), batch)
    for key in ("hint", "person_hint"):
        assert torch.equal(latent[key], pixel[key]), key


def test_latent_model_encodes_the_pixel_space_warp(vae_dir):  # noqa: F811
    model = build_latent(vae_dir, hint_space="pixel")
    batch = random_batch()
    static = hints(model, batch)
    b, t = batch["keypoints"].shape[:2]
    h = H // model.latent.factor
    for key in ("hint", "person_hint"):
        assert static[key].shape == (b, t, C + 1, h, h), key
    # The person hint is the 16x16 pixel warp, its colours through the VAE's mean, its validity area-pooled.
    warped = person_hint(batch["reference"], batch["reference_mask"], batch["reference_keypoints"],
                         batch["keypoints"], (H, H), radius=model.person_hint_radius)  # fmt: skip
    expected_colour = model.latent.encode(warped[:, :, :3].flatten(0, 1), mean=True).unflatten(0, (b, t))
    expected_valid = F.adaptive_avg_pool2d(warped[:, :, 3:].flatten(0, 1), (h, h)).unflatten(0, (b, t))
    assert torch.allclose(static["person_hint"][:, :, :C], expected_colour, atol=1e-6)
    assert torch.allclose(static["person_hint"][:, :, C:], expected_valid, atol=1e-6)
    # ... which is not what warping the latent gives
    latent_space = hints(build_latent(vae_dir), batch)
    assert not torch.allclose(latent_space["person_hint"], static["person_hint"], atol=1e-3)


def test_pixel_hints_are_deterministic_with_a_sampling_posterior(vae_dir):  # noqa: F811
    model = build_latent(vae_dir, hint_space="pixel", **{"latent.sample_posterior": True})
    batch = random_batch()
    first, second = hints(model, batch), hints(model, batch)
    for key in ("hint", "person_hint"):
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("stage", ["image", "video"])
def test_latent_model_with_pixel_hints_trains_and_samples(vae_dir, stage):  # noqa: F811
    model = build_latent(vae_dir, hint_space="pixel", stage=stage)
    batch = random_batch(t=1 if stage == "image" else 3)
    out = model.compute_loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith("denoiser.unet.conv_in"))  # fmt: skip
    with torch.no_grad():
        ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
        clip = model.sample_clip(ctx, {k: batch[k] for k in COND}, batch["link_frame"], num_inference_steps=2,
                                 generator=torch.Generator().manual_seed(0), guidance={c: 1.0 for c in CONDITIONS})  # fmt: skip
    assert clip.shape == batch["frames"].shape and torch.isfinite(clip).all()


def test_unknown_hint_space_is_refused(vae_dir):  # noqa: F811
    with pytest.raises(InstantiationException, match=r"model.hint_space='rgb'.*latent.*pixel"):
        build_latent(vae_dir, hint_space="rgb")
