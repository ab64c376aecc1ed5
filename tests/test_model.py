"""Tiny seeded models: shapes, stage freezing, zero-initialised paths, ReferenceNet bank, motion hint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fgbg.models.attention import check_backend
from fgbg.models.checkpoint import load_stage_weights, save_stage_weights, stage_state
from fgbg.models.module import COND_KEYS, CONDITIONS, FgbgModule
from fgbg.models.motion_hint import fit_affine, motion_hint, warp_affine

CONF = Path(__file__).resolve().parents[1] / "conf"
H = W = 16


def small_model_cfg(**overrides):
    """conf/model/fgbg_tiny.yaml shrunk for tests (channels 8/16, 16x16)."""
    cfg = OmegaConf.create({"model": OmegaConf.load(CONF / "model" / "fgbg_tiny.yaml")})
    unet = cfg.model.unet.config
    unet.block_out_channels = [8, 16]
    unet.down_block_types = ["DownBlock2D", "CrossAttnDownBlock2D"]
    unet.up_block_types = ["CrossAttnUpBlock2D", "UpBlock2D"]
    unet.cross_attention_dim = 16
    unet.attention_head_dim = 2
    unet.norm_num_groups = 4
    unet.sample_size = H
    cfg.model.motion_adapter.config.motion_num_attention_heads = 2
    cfg.model.image_encoder.config = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 8,
        "projection_dim": 16,
    }
    cfg.model.track_encoder.channels = [8, 8]
    for k, v in overrides.items():
        OmegaConf.update(cfg, f"model.{k}", v, force_add=True)
    return cfg.model


def build(**overrides) -> FgbgModule:
    torch.manual_seed(0)
    return instantiate(small_model_cfg(**overrides))


def random_batch(b: int = 2, t: int = 3, n: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    return {
        "frames": r(b, t, 3, H, W) * 2 - 1,
        "reference": r(b, 3, H, W) * 2 - 1,
        "reference_mask": (r(b, 1, H, W) > 0.7).float(),
        "pose_maps": r(b, t, 3, H, W),
        "keypoints": r(b, t, 18, 3) * H,
        "reference_keypoints": r(b, 18, 3) * H,
        "body_region": (r(b, t, 1, H, W) > 0.6).float(),
        "track_maps": r(b, t, 3, H, W),
        "tracks": r(b, t, n, 2) * W,
        "track_visible": r(b, t, n) > 0.2,
        "track_anchor": r(b, n, 2) * W,
        "track_anchor_visible": r(b, n) > 0.1,
        "link_frame": r(b, 3, H, W) * 2 - 1,
        "link_available": torch.ones(b, dtype=torch.bool),
    }


@pytest.fixture(scope="module")
def image_model():
    return build(stage="image")


@pytest.fixture(scope="module")
def video_model():
    return build(stage="video")


def all_on(b):
    return {k: torch.ones(b, dtype=torch.bool) for k in CONDITIONS}


def test_fgbg_tiny_fits_the_parameter_budget():
    cfg = OmegaConf.create({"model": OmegaConf.load(CONF / "model" / "fgbg_tiny.yaml")})
    model = instantiate(cfg.model)
    assert model.num_parameters() <= 5_000_000
    # noisy, link, link mask, motion hint (warped reference + validity), person hint (same)
    assert model.denoiser.unet.conv_in.in_channels == 3 + 3 + 1 + 4 + 4


@pytest.mark.parametrize("stage", ["image", "video"])
def test_forward_shapes_and_loss(stage, request):
    model = request.getfixturevalue(f"{stage}_model")
    model.train()
    batch = random_batch()
    out = model.compute_loss(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
    static = model.static_conditions(ctx, {k: batch[k] for k in COND_KEYS})
    noisy = torch.randn(2, 3, 3, H, W)
    pred = model.denoise(noisy, torch.tensor([10, 500]), ctx, static, all_on(2))
    assert pred.shape == (2, 3, 3, H, W)
    assert static["hint"].shape == (2, 3, 4, H, W)


def test_requires_grad_is_exactly_the_stage_set_and_all_of_it_learns(image_model, video_model):
    image = image_model
    image.zero_grad(set_to_none=True)
    names = {n for n, p in image.named_parameters() if p.requires_grad}
    assert names == image.trainable_names("image")
    assert not any("motion_modules" in n for n in names)
    assert not any(n.startswith("latent.") for n in names)
    for prefix in ("referencenet.", "controlnet.", "track_encoder.", "image_encoder.head.", "denoiser.unet.conv_in"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert "referencenet.unet.conv_out.weight" not in names  # never reaches the bank
    image.compute_loss(random_batch(), dropout=False)["loss"].backward()
    with_grad = {n for n, p in image.named_parameters() if p.grad is not None}
    assert with_grad == names  # every trained parameter gets a gradient, no frozen one does

    video = video_model
    video.zero_grad(set_to_none=True)
    names = {n for n, p in video.named_parameters() if p.requires_grad}
    assert names and all("motion_modules" in n for n in names)
    assert names == {f"denoiser.{n}" for n, _ in video.denoiser.motion_parameters()}
    video.train()
    assert not video.referencenet.training and not video.controlnet.training
    assert not video.denoiser.unet.down_blocks[0].resnets.training
    assert video.denoiser.unet.down_blocks[0].motion_modules.training
    video.compute_loss(random_batch(t=4), dropout=False)["loss"].backward()
    assert {n for n, p in video.named_parameters() if p.grad is not None} == names


def test_zero_initialised_paths_without_bank_equal_the_plain_unet():
    cfg = small_model_cfg()
    torch.manual_seed(0)
    unet = instantiate(cfg.unet)
    with torch.no_grad():  # a non-trivial UNet output (diffusers zero-inits conv_out? no, but be explicit)
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model = instantiate(cfg, unet=unet)
    model.eval()
    batch = random_batch()
    ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
    ctx.bank = {}  # no reference bank
    static = model.static_conditions(ctx, {k: batch[k] for k in COND_KEYS})
    noisy = torch.randn(2, 3, 3, H, W)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        ours = model.denoise(noisy, t, ctx, static, all_on(2), batch["link_frame"], torch.ones(2, dtype=torch.bool))
        for i in range(3):  # frame by frame
            ref = unet(noisy[:, i], t, encoder_hidden_states=ctx.global_tokens).sample
            torch.testing.assert_close(ours[:, i], ref, atol=1e-5, rtol=0)


def test_referencenet_runs_once_per_sample_and_the_bank_changes_the_output(image_model):
    model = image_model
    model.eval()
    model.referencenet_calls = 0
    calls = []
    hook = model.referencenet.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    batch = random_batch()
    ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
    cond = {k: batch[k] for k in COND_KEYS}
    frames = model.sample_clip(
        ctx, cond, num_inference_steps=3, guidance={"reference": 2.0, "tracks": 1.5}, generator=torch.Generator()
    )
    assert frames.shape == (2, 3, 3, H, W) and frames.abs().max() <= 1
    hook.remove()
    assert calls == [2] and model.referencenet_calls == 1  # one batched pass: once per sample
    assert set(ctx.bank) == set(model.referencenet.writer_names)

    static = model.static_conditions(ctx, cond)
    noisy, t = torch.randn(2, 3, 3, H, W), torch.tensor([5, 5])
    with torch.no_grad():
        with_bank = model.denoise(noisy, t, ctx, static, all_on(2))
        ctx_empty = type(ctx)({}, ctx.global_tokens, ctx.latent, ctx.mask, ctx.image_size)
        without = model.denoise(noisy, t, ctx_empty, static, all_on(2))
        assert (with_bank - without).abs().max() > 1e-4
        # dropping the reference for sample 0 masks the bank (and global tokens, hint) for it only
        keep = all_on(2) | {"reference": torch.tensor([False, True])}
        dropped = model.denoise(noisy, t, ctx, static, keep)
        ctx_null = type(ctx)({}, torch.zeros_like(ctx.global_tokens), ctx.latent, ctx.mask, ctx.image_size)
        null_static = dict(static, hint=torch.zeros_like(static["hint"]))
        null = model.denoise(noisy, t, ctx_null, null_static, all_on(2))
    torch.testing.assert_close(dropped[0], null[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(dropped[1], with_bank[1], atol=1e-5, rtol=0)


def test_fit_affine_recovers_a_known_affine_and_falls_back():
    g = torch.Generator().manual_seed(0)
    anchor = torch.rand(2, 20, 2, generator=g) * 32
    true = torch.tensor([[[1.1, 0.1, 2.0], [-0.05, 0.9, -3.0]], [[1.0, 0.0, 4.0], [0.0, 1.0, -1.5]]])
    pts = torch.einsum("bij,bnj->bni", true[:, :2, :2], anchor) + true[:, None, :, 2]
    weight = torch.ones(2, 1, 20)
    fit = fit_affine(anchor, pts[:, None], weight)
    torch.testing.assert_close(fit[:, 0], true, atol=2e-2, rtol=0)
    # two points: translation (their mean displacement); none: identity
    w2 = torch.zeros(2, 1, 20)
    w2[:, :, :2] = 1
    fit2 = fit_affine(anchor, pts[:, None], w2)[:, 0]
    shift = (pts[:, :2] - anchor[:, :2]).mean(1)
    torch.testing.assert_close(fit2[..., :2], torch.eye(2).expand(2, 2, 2))
    torch.testing.assert_close(fit2[..., 2], shift)
    fit0 = fit_affine(anchor, pts[:, None], torch.zeros(2, 1, 20))[:, 0]
    torch.testing.assert_close(fit0, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))


def test_warp_follows_the_corner_origin_convention():
    img = torch.rand(1, 3, 16, 16)
    shift = torch.tensor([[[1.0, 0.0, 3.0], [0.0, 1.0, 2.0]]])  # content moves right 3, down 2
    out = warp_affine(img, shift, (16, 16))
    torch.testing.assert_close(out[..., 2:, 3:], img[..., :-2, :-3], atol=1e-5, rtol=0)
    assert out[..., :2, :].abs().max() == 0 and out[..., :, :3].abs().max() == 0
    # a latent at half resolution shares the pixel-space affine (shift by 4 px = 2 latent px)
    lat = torch.rand(1, 4, 8, 8)
    out = warp_affine(lat, torch.tensor([[[1.0, 0.0, 4.0], [0.0, 1.0, 0.0]]]), (16, 16))
    torch.testing.assert_close(out[..., 2:], lat[..., :-2], atol=1e-5, rtol=0)


def test_motion_hint_removes_the_reference_person():
    ref = torch.rand(1, 3, 16, 16) + 0.5
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:8, 4:8] = 1
    anchor = torch.tensor([[[2.0, 2.0], [12.0, 3.0], [5.0, 13.0]]])
    tracks = anchor[:, None] + torch.tensor([2.0, 0.0])  # pan right by 2 px
    vis = torch.ones(1, 1, 3, dtype=torch.bool)
    hint = motion_hint(ref, mask, tracks, vis, anchor, torch.ones(1, 3, dtype=torch.bool), (16, 16), 1)
    assert hint.shape == (1, 1, 4, 16, 16)
    valid = hint[0, 0, 3]
    assert valid[4:8, 6:10].max() < 1e-5  # the dilated person hole moved with the pan
    assert valid[:, :2].max() < 1e-5  # nothing came in from the left edge
    torch.testing.assert_close(hint[0, 0, :3, 12:, 12:], ref[0, :, 12:, 10:14], atol=1e-5, rtol=0)


def test_xformers_backend_errors_clearly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        check_backend("xformers")
    with pytest.raises(ValueError, match="expected one of"):
        check_backend("flash")
    with pytest.raises(Exception, match="needs a CUDA GPU"):
        build(attention_backend="xformers")


def test_stage_weights_round_trip_and_strict_keys(tmp_path, image_model, video_model):
    image, video = image_model, video_model
    path = str(tmp_path / "image.safetensors")
    before = dict(video.named_parameters())["denoiser.unet.conv_in.weight"].clone()
    with torch.no_grad():
        dict(image.named_parameters())["denoiser.unet.conv_in.weight"].add_(1.0)
    save_stage_weights(stage_state(image), path, "image", 8)
    assert load_stage_weights(video, path) == "image"
    after = dict(video.named_parameters())["denoiser.unet.conv_in.weight"]
    torch.testing.assert_close(after, before + 1.0)
    bad = stage_state(image)
    bad.pop("denoiser.unet.conv_in.weight")
    save_stage_weights(bad, path, "image")
    with pytest.raises(ValueError, match="1 missing"):
        load_stage_weights(video, path)
    with pytest.raises(FileNotFoundError, match="init_from"):
        load_stage_weights(video, str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_timm_image_encoder_gives_tokens_and_loads_local_weights(tmp_path, name):
    from safetensors.torch import save_file

    from fgbg.models.image_encoder import TimmImageEncoder

    enc = TimmImageEncoder(cross_attention_dim=16, name=name, grid=2, trainable_backbone=False)
    tokens = enc(torch.rand(2, 3, H, W) * 2 - 1)
    assert tokens.shape == (2, 5, 16)
    assert all(n.startswith("head.") for n, _ in enc.trainable_parameters())
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in enc.backbone.state_dict().items()}, str(path))
    again = TimmImageEncoder(cross_attention_dim=16, name=name, weights=str(path))
    for k, v in enc.backbone.state_dict().items():
        torch.testing.assert_close(again.backbone.state_dict()[k], v)


@pytest.mark.parametrize(
    "overrides",
    [
        {"noise_scheduler.prediction_type": "epsilon", "offset_noise": 0.1},
        {"noise_scheduler.prediction_type": "sample", "min_snr_gamma": None},
        {"noise_scheduler.rescale_betas_zero_snr": True, "noise_scheduler.beta_schedule": "scaled_linear"},
    ],
)
def test_noise_options_train_and_sample(overrides):
    model = build(**overrides)
    batch = random_batch(b=2, t=1)
    loss = model.compute_loss(batch)["loss"]
    assert torch.isfinite(loss)
    model.eval()
    ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
    for sampler in ("ddim", "euler", "dpmpp"):
        out = model.sample_clip(ctx, {k: batch[k] for k in COND_KEYS}, batch["link_frame"], 2, sampler)
        assert out.shape == (2, 1, 3, H, W) and torch.isfinite(out).all()


def test_person_loss_weight_counts_the_person_more():
    batch = random_batch(b=2, t=1)
    batch["masks"] = torch.zeros(2, 1, 1, H, W)
    plain = build(person_loss_weight=1.0)
    heavy = build(person_loss_weight=5.0)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    same = [m.compute_loss(batch, gen(), dropout=False)["loss"] for m in (plain, heavy)]
    torch.testing.assert_close(same[0], same[1])  # no person pixels: identical
    batch["masks"][..., :8, :] = 1
    a, b = (m.compute_loss(batch, gen(), dropout=False)["loss"] for m in (plain, heavy))
    assert b > a * 1.5


def test_drop_reference_makes_the_clip_independent_of_the_reference(image_model):
    """sample_clip(drop=("reference",)): the first-clip-only ablation sees no reference at all."""
    model = image_model
    model.eval()
    batch = random_batch()
    cond = {k: batch[k] for k in COND_KEYS}
    # Make every reference-dependent path non-trivial: zero-initialised input weights get values.
    with torch.no_grad():
        conv_in = model.denoiser.unet.conv_in
        saved = conv_in.weight.clone()
        conv_in.weight.normal_(0, 0.1)
    try:
        outs = {}
        for name, drop in (("keep", ()), ("drop", ("reference",))):
            for ref_seed in (0, 1):
                other = random_batch(seed=ref_seed + 10)
                ctx = model.encode_reference(other["reference"], other["reference_mask"])
                c = cond | {"reference_keypoints": other["reference_keypoints"]}
                outs[name, ref_seed] = model.sample_clip(
                    ctx, c, num_inference_steps=2, generator=torch.Generator().manual_seed(0), drop=drop
                )
        assert (outs["keep", 0] - outs["keep", 1]).abs().max() > 1e-3
        assert torch.allclose(outs["drop", 0], outs["drop", 1], atol=1e-6)
        with pytest.raises(ValueError, match="drop: unknown conditions"):
            model.sample_clip(ctx, cond, num_inference_steps=1, drop=("colour",))
    finally:
        with torch.no_grad():
            conv_in.weight.copy_(saved)
