"""Generation's ``hint_anchor`` (issue 16: the latent model's person): each sampling step's predicted clean frames
get the hints' pixels pasted where the hints are valid, and the latents follow (tiny seeded models, seconds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from fgbg.config_checks import ConfigError, check_generate_config
from fgbg.generation.predictor import LongVideoPredictor
from fgbg.models.module import COND_KEYS, CONDITIONS
from tests.test_model import build, random_batch


def setup(model, seed: int = 2):
    """A held pose and a still camera: the person hint is the reference person, the motion hint its background;
    a smooth reference (what a VAE can reconstruct)."""
    batch = random_batch(b=1, t=2, seed=seed)
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    batch["reference"] = F.interpolate(coarse, size=batch["reference"].shape[-2:], mode="bilinear")
    batch["keypoints"] = batch["reference_keypoints"][:, None].repeat(1, 2, 1, 1)
    batch["keypoints"][..., 2] = batch["reference_keypoints"][..., 2] = 1.0
    batch["tracks"] = batch["track_anchor"][:, None].repeat(1, 2, 1, 1)
    batch["track_visible"] = torch.ones_like(batch["track_visible"])
    batch["track_anchor_visible"] = torch.ones_like(batch["track_anchor_visible"])
    for key in ("reference_mask", "body_region"):
        batch[key] = torch.zeros_like(batch[key])
        batch[key][..., 4:12, 5:11] = 1.0
    cond = {k: batch[k] for k in COND_KEYS}
    ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
    return ctx, cond


def sample(model, ctx, cond, **kw) -> torch.Tensor:
    return model.sample_clip(ctx, cond, num_inference_steps=3, generator=torch.Generator().manual_seed(0), **kw)


def anchor_of(model, ctx, cond, **keep):
    on = {k: torch.tensor([keep.get(k, True)]) for k in CONDITIONS}
    return model.hint_anchor_pixels(ctx, cond, model.static_conditions(ctx, cond), on)


@pytest.mark.parametrize("hint_space", ["latent", "pixel"])
@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp"])
def test_the_anchor_pulls_the_covered_pixels_to_the_hint(hint_space, sampler):
    torch.manual_seed(0)
    model = build(stage="video", hint_space=hint_space).eval()
    ctx, cond = setup(model)
    pixels, weight = anchor_of(model, ctx, cond)
    covered = weight.unflatten(0, (1, 2)) > 0.99
    assert 0.05 < covered.float().mean().item() < 0.95, "the random batch's hints cover part of each frame"
    hint = pixels.unflatten(0, (1, 2)).clamp(-1, 1)
    free = sample(model, ctx, cond, scheduler=sampler)
    anchored = sample(model, ctx, cond, scheduler=sampler, hint_anchor=1.0)
    err = lambda x: (x - hint).abs().mul(covered).sum().item() / (3 * covered.sum().item())  # noqa: E731
    assert err(free) > 0.2, err(free)
    # the last step pastes the hint into the clean frames: in pixel space they are the hint where it is valid
    assert err(anchored) < 0.05 * err(free), (err(anchored), err(free))
    half = sample(model, ctx, cond, scheduler=sampler, hint_anchor=0.5)
    assert err(anchored) < err(half), "the last steps run free when only the first half is anchored"
    assert torch.equal(sample(model, ctx, cond, scheduler=sampler, hint_anchor=0.0), free), "0 is today's sampling"


def test_what_the_anchor_pastes_follows_the_conditions_kept():
    model = build(stage="video").eval()
    ctx, cond = setup(model)
    _, weight = anchor_of(model, ctx, cond)
    assert anchor_of(model, ctx, cond, reference=False) is None, "no reference: no warped reference to paste"
    # without the pose only the motion hint is pasted, and never inside the frame's body region
    _, weight_tracks = anchor_of(model, ctx, cond, pose=False)
    body = cond["body_region"].flatten(0, 1)
    assert weight_tracks.gt(0).any() and not weight_tracks.mul(body).gt(0).any()
    _, weight_pose = anchor_of(model, ctx, cond, tracks=False)
    assert weight_pose.gt(0).any() and weight.ge(weight_pose).all() and weight.ge(weight_tracks).all()
    assert weight.le(1).all()
    # nothing pasted when the only hint left is covered by the person's body everywhere
    no_person = build(stage="video", person_hint=False).eval()
    ctx2, cond2 = setup(no_person)
    cond2["body_region"] = torch.ones_like(cond2["body_region"])
    assert anchor_of(no_person, ctx2, cond2) is None


def test_bad_hint_anchor_is_named():
    model = build(stage="video")
    with pytest.raises(ValueError, match=r"hint_anchor=2: expected a fraction of the sampling steps in \[0, 1\]"):
        model.sample_clip(None, {k: None for k in COND_KEYS}, hint_anchor=2)
    with pytest.raises(ValueError, match=r"hint_anchor=-0.5: expected a fraction"):
        LongVideoPredictor(model, hint_anchor=-0.5)
    assert LongVideoPredictor(model).link_options == {}, "at 0 the option is not passed (models without it)"
    assert LongVideoPredictor(model, hint_anchor=0.5).link_options == {"hint_anchor": 0.5}
    with pytest.raises(ConfigError, match=r"hint_anchor='all': expected a fraction of the sampling steps in \[0, 1\]"):
        check_generate_config(OmegaConf.create({"guidance": {}, "hint_anchor": "all"}))
    # how an anchored clip ends: checked by the predictor, the generate config and a bundle's recommendation
    from fgbg.models.bundle import recommended_generation

    with pytest.raises(ValueError, match=r"anchor_finish='exact': expected one of \('blend', 'latent', 'pixel'\)"):
        LongVideoPredictor(model, hint_anchor=1.0, anchor_finish="exact")
    assert LongVideoPredictor(model, anchor_finish="pixel").link_options == {"anchor_finish": "pixel"}
    with pytest.raises(ConfigError, match=r"anchor_finish='exact': expected blend, latent or pixel"):
        check_generate_config(OmegaConf.create({"guidance": {}, "anchor_finish": "exact"}))
    check_generate_config(OmegaConf.create({"guidance": {}, "anchor_finish": None}))  # null: the bundle's choice
    assert recommended_generation(["hint_anchor=1.0", "anchor_finish=pixel"]) == {"hint_anchor": 1.0,
                                                                                  "anchor_finish": "pixel"}  # fmt: skip
    with pytest.raises(ValueError, match=r"anchor_finish='exact'"):
        recommended_generation(["anchor_finish=exact"])


def test_a_bundle_recommends_hint_anchor_and_a_given_value_wins(tmp_path):
    """fgbg-generate (in process) on a bundle whose metadata recommends hint_anchor=1: left null it is used (and
    recorded in generation.json), given it is the user's; the anchored video differs."""
    import numpy as np

    from fgbg.data.video import read_video
    from fgbg.generate import model_data_settings
    from tests.conftest import REPO, save_tiny_bundle
    from tests.test_link_augment import generate_with

    bundle = save_tiny_bundle(tmp_path / "tiny.safetensors", clip_len=2, extra={"generation": {"hint_anchor": 1.0}})
    assert model_data_settings(str(bundle))["generation"] == {"hint_anchor": 1.0}
    example = REPO / "fgbg" / "assets" / "examples" / "dance_pan"
    runs = {"recommended": [], "off": ["hint_anchor=0.0"]}
    reports = {name: generate_with(tmp_path / name, bundle, example, *args) for name, args in runs.items()}
    assert reports["recommended"]["settings"]["resolved"]["sampling"]["hint_anchor"] == 1.0
    assert reports["off"]["settings"]["resolved"]["sampling"]["hint_anchor"] == 0.0
    a, b = (read_video(str(tmp_path / name / "video.mp4"))[0].astype(np.float32) for name in runs)
    assert np.abs(a - b).mean() > 1.0


def test_a_track_that_leaves_the_fitted_motion_carries_its_neighbourhood():
    """motion_hint's local_sigma: with a still camera (the other tracks hold still) one track moves 10 px right;
    a dot at its anchor shows at its new place too (a backward warp copies, it leaves the source as it was), and
    far from the track the image stays where the affine puts it."""
    from fgbg.models.motion_hint import motion_hint

    size = 32
    image = torch.zeros(1, 3, size, size)
    image[:, :, 9:11, 9:11] = 1.0  # a dot around (10, 10)
    anchor = torch.tensor([[[10.0, 10.0], [4.0, 28.0], [28.0, 4.0], [28.0, 28.0], [16.0, 24.0]]])
    tracks = torch.stack([anchor, anchor.clone()], 1)  # (1, 2, 5, 2)
    tracks[:, 1, 0, 0] += 10.0
    visible, anchor_visible = torch.ones(1, 2, 5, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)
    args = (image, None, tracks, visible, anchor, anchor_visible, (size, size))
    rigid = motion_hint(*args, fit="irls")
    local = motion_hint(*args, fit="irls", local_sigma=2.0)
    dot = lambda x: (x[0, 1, 0, 9:11, 19:21].mean().item(), x[0, 1, 0, 9:11, 9:11].mean().item())  # noqa: E731
    assert dot(rigid) == pytest.approx((0.0, 1.0), abs=0.05), "the affine (a still camera) keeps the dot"
    moved, kept = dot(local)
    assert moved > 0.6 and kept > 0.99, (moved, kept)
    far = (slice(None), slice(None), slice(None), slice(20, 32), slice(0, 12))
    assert torch.allclose(local[far], rigid[far], atol=1e-5), "far from the moving track nothing changes"
    assert torch.allclose(local[:, 0], rigid[:, 0], atol=1e-4), "frame 0: the tracks sit at their anchors"
