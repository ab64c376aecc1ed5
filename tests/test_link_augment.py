"""Link augmentation (issue 16, point 2): the link latent noised in training with its level as an input channel,
stage video's extra trainable parameters (``model.video_trainable``), the noise-init link at generation, and
backward compatibility with the keys off (tiny seeded models, seconds each)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fgbg.config_checks import ConfigError, check_generate_config, check_train_config
from fgbg.data.video import read_video
from fgbg.generation.predictor import LongVideoPredictor
from fgbg.models.bundle import bundle_names, load_bundle, read_bundle_info
from fgbg.models.checkpoint import load_stage_weights, save_stage_weights, stage_state
from fgbg.models.module import COND_KEYS
from fgbg.utils.config import CONF_DIR
from tests.conftest import REPO, save_tiny_bundle, train_config
from tests.test_model import H, W, build, random_batch, small_model_cfg

C = 3  # the tiny model's latent channels (pixel space)
LEVEL = 2 * C + 1  # the level channel's index in the denoiser input: noisy (c), link (c), link mask (1), level
AUGMENT = {"prob": 1.0, "max_t": 0.3}
# module.py before link augmentation: with the new keys off, today's module must train and sample bitwise alike.
BEFORE = "f351e13df051daecfb1132970b230b40ec0dd959"
BUILD_ERROR = (ValueError, InstantiationException)  # hydra wraps what the module raises


def denoiser_inputs(model) -> list[torch.Tensor]:
    """Record every denoiser input (B, C_in, F, h, w) of ``model`` from now on."""
    seen: list[torch.Tensor] = []
    forward = model.denoiser.forward

    def spy(sample, *args, **kwargs):
        seen.append(sample.detach().clone())
        return forward(sample, *args, **kwargs)

    model.denoiser.forward = spy
    return seen


def video_batch(seed: int = 0) -> dict:
    return random_batch(b=2, t=3, seed=seed)


def test_the_level_channel_is_fed_and_follows_the_drawn_level():
    model = build(stage="video", link_prob=1.0, link_augment=AUGMENT)
    assert model.denoiser.unet.conv_in.in_channels == 3 + 3 + 1 + 1 + 4 + 4
    seen = denoiser_inputs(model)
    batch = video_batch()
    levels = []
    for seed in (0, 1, 0):
        model.compute_loss(batch, generator=torch.Generator().manual_seed(seed))
        sample = seen[-1]
        level = sample[:, LEVEL]  # (B, F, h, w)
        per_sample = level.flatten(1)
        assert torch.equal(per_sample, per_sample[:, :1].expand_as(per_sample)), "one constant level per sample"
        lv = per_sample[:, 0]
        assert bool(((lv > 0) & (lv <= AUGMENT["max_t"])).all()), lv
        num_t = model.noise_scheduler.config.num_train_timesteps
        assert torch.allclose(lv * num_t, (lv * num_t).round(), atol=1e-3), "level = timestep / num_train_timesteps"
        # the link channels hold the link noised, not the clean frame (identity latent: the frame itself)
        link = sample[:, C : 2 * C, 0]
        assert (link - batch["link_frame"]).abs().mean() > 1e-3
        assert bool((sample[:, 2 * C] == 1).all()), "link mask on"
        levels.append(lv)
    assert torch.equal(levels[0], levels[2]), "the drawn levels repeat with the seed"
    assert not torch.equal(levels[0], levels[1]), "and change with it"
    assert not torch.equal(levels[0][0], levels[0][1]), "drawn per sample"


def test_levels_are_zero_where_the_link_is_off_or_not_augmented():
    model = build(stage="video", link_prob=1.0, link_augment={"prob": 0.5, "max_t": 0.3})
    seen = denoiser_inputs(model)
    batch = random_batch(b=8, t=2, seed=3)
    batch["link_available"][:2] = False
    model.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    lv = seen[-1][:, LEVEL, 0, 0, 0]
    assert bool((lv[:2] == 0).all()), "no link, no level"
    assert bool((lv[2:] == 0).any()) and bool((lv[2:] > 0).any()), f"prob 0.5 over 6 linked samples: {lv}"
    link = seen[-1][:, C : 2 * C, 0]
    clean = (lv == 0) & batch["link_available"]
    assert torch.equal(link[clean], batch["link_frame"][clean]), "not augmented: the clean link"


def test_prob_zero_gives_todays_inputs_and_draws():
    """prob 0: no draw, the inputs are the model's without augmentation plus an all-zero level channel."""
    batch = video_batch()
    inputs, states = [], []
    for augment in (None, {"prob": 0.0, "max_t": 0.3}):
        model = build(stage="video", link_prob=1.0, link_augment=augment)
        seen = denoiser_inputs(model)
        gen = torch.Generator().manual_seed(5)
        model.compute_loss(batch, generator=gen)
        inputs.append(seen[-1])
        states.append(gen.get_state())
    today, zero = inputs
    assert torch.equal(zero[:, LEVEL], torch.zeros_like(zero[:, LEVEL]))
    assert torch.equal(torch.cat([zero[:, :LEVEL], zero[:, LEVEL + 1 :]], 1), today)
    assert torch.equal(states[0], states[1]), "the training generator drew the same numbers"


def test_video_trainable_adds_conv_in_to_stage_video(tmp_path):
    conv_in = {"denoiser.unet.conv_in.weight", "denoiser.unet.conv_in.bias"}
    plain = build(stage="video")
    model = build(stage="video", link_augment=AUGMENT, link_prob=1.0, video_trainable=["denoiser.unet.conv_in"])
    assert not conv_in & plain.trainable_names()
    assert model.trainable_names() == plain.trainable_names() | conv_in
    assert all(p.requires_grad == (n in model.trainable_names()) for n, p in model.named_parameters())
    assert bundle_names(model) == bundle_names(plain), "bundles hold conv_in anyway (stage image trains it)"

    # the stage-video optimizer gets conv_in, and conv_in gets a gradient through the link channels
    class Trainer:
        model = None

    Trainer.model = model
    model._trainer = Trainer()
    model.optimizer_factory, model.lr_scheduler_factory = (lambda params: torch.optim.AdamW(params, lr=1e-3)), None
    optimized = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    model._trainer = None
    names = {n for n, p in model.named_parameters() if id(p) in optimized}
    assert names == model.trainable_names() and conv_in <= names
    model.train()
    model.compute_loss(video_batch(), generator=torch.Generator().manual_seed(0))["loss"].backward()
    grad = model.denoiser.unet.conv_in.weight.grad
    assert grad is not None and grad[:, C : 2 * C + 2].abs().sum() > 0, "link and level columns learn"

    # stage weights round-trip with conv_in; a model without video_trainable refuses them (strict key sets)
    with torch.no_grad():
        model.denoiser.unet.conv_in.weight.add_(0.5)
    path = str(tmp_path / "video.safetensors")
    save_stage_weights(stage_state(model), path, "video", step=3)
    fresh = build(stage="video", link_augment=AUGMENT, video_trainable=["denoiser.unet.conv_in"])
    assert load_stage_weights(fresh, path) == "video"
    assert torch.equal(fresh.denoiser.unet.conv_in.weight, model.denoiser.unet.conv_in.weight)
    with pytest.raises(BUILD_ERROR, match="stage 'video' weights do not match this model: 0 missing .* 2 unexpected"):
        load_stage_weights(build(stage="video", link_augment=AUGMENT), path)


def test_video_trainable_globs_and_bad_patterns():
    model = build(stage="video", video_trainable=["denoiser.unet.conv_in.*"])
    assert {"denoiser.unet.conv_in.weight", "denoiser.unet.conv_in.bias"} <= model.trainable_names()
    with pytest.raises(BUILD_ERROR, match=r"model.video_trainable: 'denoiser.nope' matches no parameter"):
        build(stage="video", video_trainable=["denoiser.nope"])
    with pytest.raises(BUILD_ERROR, match=r"'controlnet' matches parameters outside the denoiser's spatial layers"):
        build(stage="video", video_trainable=["controlnet"])
    with pytest.raises(BUILD_ERROR, match=r"model.video_trainable='denoiser': expected a list"):
        build(stage="video", video_trainable="denoiser")


def test_old_bundles_without_the_new_keys_load_and_generate(tmp_path):
    """The shipped 32x32 pixel bundle (the demo model until 2026-12-01) predates link_augment and video_trainable:
    it loads strictly and generates, also with the new generation keys (a warning: it never saw a noised link)."""
    demo = REPO / "fgbg" / "assets" / "pixel32_model.safetensors"
    model, info = load_bundle(demo)
    assert "link_augment" not in info.model_config and "video_trainable" not in info.model_config
    assert model.link_augment is None and model.video_trainable == ()
    example = REPO / "fgbg" / "assets" / "examples" / "wave_zoom"
    report = generate_with(tmp_path / "demo", demo, example, "link_mode=both", "link_noise=0.1", "clip_len=2")
    assert report["frames"] == 4 and report["clips"] == 2


def generate_with(out, bundle, example, *overrides) -> dict:
    from fgbg.generate import generate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("generate", overrides=[
            f"ckpt_path={bundle}", f"reference={example}.png", f"reference_mask={example}_mask.png",
            f"reference_keypoints={example}.tar", f"motion={example}.tar", "camera=static", "num_frames=4",
            "steps=2", "gif=false", "device=cpu", f"output_dir={out}", *overrides,
        ])  # fmt: skip
    return generate(cfg)


def first_step_inputs(model, link_mode: str, **kw) -> list[torch.Tensor]:
    """The noisy input (B, F, c, h, w) at the first step of clip 1 (no link) and clip 2 (linked)."""
    seen = denoiser_inputs(model)
    batch = random_batch(b=1, t=3, seed=2)
    cond = {k: batch[k] for k in COND_KEYS}
    ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
    out = []
    link = None
    for k in range(2):
        gen = torch.Generator().manual_seed(k)
        frames = model.sample_clip(ctx, cond, link, num_inference_steps=2, generator=gen, link_mode=link_mode, **kw)
        out.append(seen[-2][:, :C].transpose(1, 2))  # the first of this clip's 2 steps
        link = frames[:, -1]
    return out


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_noise_init_changes_the_starting_noise_of_linked_clips_only(sampler):
    model = build(stage="video").eval()
    base = first_step_inputs(model, "channels", scheduler=sampler)
    noise_init = first_step_inputs(model, "noise_init", scheduler=sampler, link_init_weight=0.7)
    assert torch.equal(noise_init[0], base[0]), "clip 1 has no link: unchanged"
    assert not torch.allclose(noise_init[1], base[1]), "clip 2 starts from noise mixed with the noised link"
    assert noise_init[1].std().item() == pytest.approx(base[1].std().item(), rel=0.3), "variance kept"
    # the shared link noise makes the frames' starting noise alike
    frames = noise_init[1][0]
    corr = torch.corrcoef(torch.stack([frames[0].flatten(), frames[1].flatten()]))[0, 1]
    assert corr.item() > 0.5, corr
    none = first_step_inputs(model, "noise_init", scheduler=sampler, link_init_weight=0.0)
    assert torch.equal(none[1], base[1]), "weight 0: the fresh noise alone"


def test_link_noise_at_generation_feeds_the_level(tmp_path):
    model = build(stage="video", link_augment=AUGMENT).eval()
    seen = denoiser_inputs(model)
    batch = random_batch(b=1, t=2, seed=2)
    ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
    cond = {k: batch[k] for k in COND_KEYS}
    link = batch["link_frame"]
    for noise in (0.0, 0.1):
        model.sample_clip(ctx, cond, link, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                          link_noise=noise)  # fmt: skip
        sample = seen[-1]
        assert torch.allclose(sample[:, LEVEL], torch.full_like(sample[:, LEVEL], noise))
        linked = sample[:, C : 2 * C, 0]
        assert torch.equal(linked, link) == (noise == 0)


def test_noise_init_generation_runs_end_to_end(tmp_path):
    bundle = save_tiny_bundle(tmp_path / "tiny.safetensors", clip_len=2)
    example = REPO / "fgbg" / "assets" / "examples" / "dance_pan"
    runs = {
        mode: generate_with(tmp_path / mode, bundle, example, f"link_mode={mode}")
        for mode in ("channels", "noise_init")
    }
    for report in runs.values():
        assert report["frames"] == 4 and report["clips"] == 2
    a, b = (read_video(str(tmp_path / mode / "video.mp4"))[0].astype(np.float32) for mode in runs)
    assert a.shape[0] == 4
    assert np.abs(a[:2] - b[:2]).mean() < 1.0, "clip 1 alike"
    assert np.abs(a[2:] - b[2:]).mean() > 1.0, "clip 2 differs"


def test_bad_values_give_clear_errors(tmp_path):
    with pytest.raises(BUILD_ERROR, match=r"model.link_augment.prob=1.5: expected a probability in \[0, 1\]"):
        build(link_augment={"prob": 1.5})
    with pytest.raises(BUILD_ERROR, match=r"model.link_augment.max_t=0: expected a fraction .* in \(0, 1\]"):
        build(link_augment={"max_t": 0})
    with pytest.raises(BUILD_ERROR, match=r"model.link_augment: unknown keys \['level'\]"):
        build(link_augment={"level": 1})
    model = build(stage="video")
    with pytest.raises(ValueError, match="link_mode='noise': expected one of"):
        LongVideoPredictor(model, link_mode="noise")
    with pytest.raises(ValueError, match=r"link_noise=-0.1: expected a fraction of the diffusion schedule in \[0, 1\]"):
        LongVideoPredictor(model, link_noise=-0.1)
    with pytest.raises(ValueError, match=r"link_init_weight=2: expected a weight in \[0, 1\]"):
        model.sample_clip(None, {k: None for k in COND_KEYS}, link_init_weight=2)

    gen = OmegaConf.create({"guidance": {"pose": 1.0}, "link_mode": "nope", "link_noise": 2, "link_init_weight": -1})
    with pytest.raises(ConfigError) as err:
        check_generate_config(gen)
    for text in ("link_mode='nope': expected channels, noise_init or both", "link_noise=2: expected",
                 "link_init_weight=-1: expected a weight in [0, 1]"):  # fmt: skip
        assert text in str(err.value)
    cfg = train_config(tmp_path, ["model.link_augment={prob:2,max_t:0,extra:1}", "model.video_trainable=conv_in"])
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg, check_paths=False)
    for text in ("model.link_augment.prob=2: expected a probability in [0, 1]",
                 "model.link_augment.max_t=0: expected a fraction of the schedule in (0, 1]",
                 "model.link_augment.extra: unknown key", "model.video_trainable='conv_in': expected a list"):  # fmt: skip
        assert text in str(err.value)
    good = train_config(
        tmp_path, ["model.link_augment={prob:0.5,max_t:0.3}", "model.video_trainable=[denoiser.unet.conv_in]"]
    )
    check_train_config(good, check_paths=False)


def _module_before():
    """``fgbg/models/module.py`` at ``BEFORE``, imported under another name; None when git cannot show it."""
    done = subprocess.run(["git", "show", f"{BEFORE}:fgbg/models/module.py"], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        return None
    spec = importlib.util.spec_from_loader("fgbg_module_before", loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    exec(compile(done.stdout, "module_before.py", "exec"), mod.__dict__)
    return mod


@pytest.mark.parametrize("stage", ["image", "video"])
def test_keys_off_train_and_sample_bitwise_as_before(stage):
    """Same seed: the same loss and the same generated frames as the module before link augmentation. (Retire or
    re-pin this test when ``compute_loss``/``sample_clip`` change behaviour on purpose.)"""
    before = _module_before()
    if before is None:
        pytest.skip(f"git cannot show {BEFORE} (a shallow or exported copy)")
    cfg = OmegaConf.create(OmegaConf.to_container(small_model_cfg(stage=stage, link_prob=0.6), resolve=True))
    old_cfg = cfg.copy()
    for key in ("link_augment", "video_trainable", "reference_keypoints_jitter", "hint_space"):  # added since, off
        old_cfg.pop(key, None)
    old_cfg._target_ = "fgbg_module_before.FgbgModule"
    torch.manual_seed(0)
    new = instantiate(cfg)
    torch.manual_seed(0)
    old = instantiate(old_cfg)
    assert new.trainable_names() == old.trainable_names()
    for (n, p), (m, q) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
        assert n == m and torch.equal(p, q), n
    batch = random_batch(b=2, t=2, seed=4)
    batch["link_available"][0] = False
    losses = [m.compute_loss(batch, generator=torch.Generator().manual_seed(7)) for m in (new, old)]
    for key in ("loss", "loss_unweighted"):
        assert torch.equal(losses[0][key], losses[1][key]), key
    losses[0]["loss"].backward()
    losses[1]["loss"].backward()
    for (n, p), (_, q) in zip(new.named_parameters(), old.named_parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), n
    cond = {k: batch[k] for k in COND_KEYS}
    frames = []
    for m in (new, old):
        m.eval()
        ctx = m.encode_reference(batch["reference"], batch["reference_mask"])
        gen = torch.Generator().manual_seed(3)
        frames.append(m.sample_clip(ctx, cond, batch["link_frame"], num_inference_steps=2, generator=gen,
                                    guidance={"tracks": 2.0}))  # fmt: skip
    assert torch.equal(frames[0], frames[1])
    assert frames[0].shape == (2, 2, 3, H, W)


def test_training_with_link_augment_then_video_with_conv_in(tmp_path, synth_shard):
    """fgbg-train (in process, 2 steps each): stage image with link_augment, then stage video from its weights with
    conv_in trainable: the video weights carry conv_in, trained, and the run makes a bundle that loads."""
    from safetensors import safe_open

    from fgbg.models.bundle import bundle_from_run
    from fgbg.train import train
    from tests.test_train import FAST

    data = [f"data.train_shards={synth_shard}", f"data.val_shards={synth_shard}", *FAST]
    augment = ["model.link_augment={prob:1.0,max_t:0.3}", "model.link_prob=1.0"]
    train(train_config(tmp_path / "img", ["experiment=synthetic_tiny_image", *augment, *data]))
    weights = tmp_path / "img" / "checkpoints" / "image_ema.safetensors"
    video = ["experiment=synthetic_tiny_video", f"model.init_from={weights}", "data.clip_len=4",
             "model.video_trainable=[denoiser.unet.conv_in]", *augment, *data]  # fmt: skip
    video_cfg = train_config(tmp_path / "vid", video)
    train(video_cfg)
    (tmp_path / "vid" / ".hydra").mkdir()
    OmegaConf.save(video_cfg, tmp_path / "vid" / ".hydra" / "config.yaml")  # what the CLI writes
    with safe_open(weights, "pt") as f:
        before = f.get_tensor("denoiser.unet.conv_in.weight")
    with safe_open(tmp_path / "vid" / "checkpoints" / "video.safetensors", "pt") as f:
        keys = set(f.keys())
        after = f.get_tensor("denoiser.unet.conv_in.weight")
    assert {"denoiser.unet.conv_in.weight", "denoiser.unet.conv_in.bias"} <= keys
    assert after.shape[1] == 3 + 3 + 1 + 1 + 4 + 4 and not torch.equal(after, before), "conv_in trained in video"
    bundle = bundle_from_run(tmp_path / "vid", tmp_path / "model.safetensors", ema=False)
    model, info = load_bundle(bundle)
    assert info.model_config.link_augment.prob == 1.0 and list(info.model_config.video_trainable) == [
        "denoiser.unet.conv_in"
    ]
    assert torch.equal(model.denoiser.unet.conv_in.weight, after)
    # the bundle CLI records the sampling settings a bundle recommends; a bad one is refused before any writing
    from fgbg.models.bundle import main as bundle_main

    bundle_main([str(tmp_path / "vid"), str(tmp_path / "rec.safetensors"), "--raw", "--generation", "hint_anchor=1.0"])
    assert read_bundle_info(tmp_path / "rec.safetensors").extra["generation"] == {"hint_anchor": 1.0}
    for bad in ("hint_anchor=2", "anchor=1", "link_mode=noise"):
        with pytest.raises(SystemExit):
            bundle_main([str(tmp_path / "vid"), str(tmp_path / "bad.safetensors"), "--generation", bad])
        assert not (tmp_path / "bad.safetensors").exists()


def test_init_from_a_bundle_without_the_level_channel():
    """The 32x32 pixel bundle (no link_augment) starts a link-augmented stage-video model: conv_in gets a zero column at
    the level channel, every other weight is the bundle's, and with a clean link it generates the same frames."""
    demo = REPO / "fgbg" / "assets" / "pixel32_model.safetensors"
    old, info = load_bundle(demo)
    cfg = info.model_config.copy()
    cfg.link_augment = AUGMENT
    cfg.video_trainable = ["denoiser.unet.conv_in"]
    cfg.init_from = str(demo)
    new = instantiate(cfg).eval()
    w_old, w_new = old.denoiser.unet.conv_in.weight, new.denoiser.unet.conv_in.weight
    assert w_new.shape[1] == w_old.shape[1] + 1
    assert torch.equal(w_new[:, LEVEL], torch.zeros_like(w_new[:, LEVEL]))
    assert torch.equal(torch.cat([w_new[:, :LEVEL], w_new[:, LEVEL + 1 :]], 1), w_old)
    size = info.data["resolution"]
    batch = random_batch(b=1, t=2, seed=1)
    batch = {k: torch.nn.functional.interpolate(v.flatten(0, 1), size=(size, size)).unflatten(0, v.shape[:2])
             if k in ("pose_maps", "body_region", "track_maps") else v for k, v in batch.items()}  # fmt: skip
    ref = torch.nn.functional.interpolate(batch["reference"], size=(size, size))
    mask = torch.nn.functional.interpolate(batch["reference_mask"], size=(size, size))
    link = torch.nn.functional.interpolate(batch["link_frame"], size=(size, size))
    cond = {k: batch[k] for k in COND_KEYS}
    frames = []
    for m in (old, new):
        ctx = m.encode_reference(ref, mask)
        frames.append(m.sample_clip(ctx, cond, link, num_inference_steps=2, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(frames[0], frames[1], rtol=0, atol=1e-5)
    with pytest.raises(BUILD_ERROR, match="conv_in.weight has shape"):
        bad = cfg.copy()
        bad.person_hint = False  # 4 channels fewer: not the level channel, refused
        instantiate(bad)


def test_generate_cli_takes_the_link_keys(tmp_path):
    """The real fgbg-generate (a subprocess): link_mode=both with link_noise (and hint_anchor) runs; a bad link_mode
    is refused first."""
    bundle = save_tiny_bundle(tmp_path / "tiny.safetensors", clip_len=2)
    example = REPO / "fgbg" / "assets" / "examples" / "dance_pan"
    args = [sys.executable, "-m", "fgbg.generate", f"ckpt_path={bundle}", f"reference={example}.png",
            f"reference_mask={example}_mask.png", f"reference_keypoints={example}.tar", f"motion={example}.tar",
            "camera=static", "num_frames=4", "steps=2", "gif=false", "device=cpu"]  # fmt: skip
    ok = subprocess.run([*args, f"output_dir={tmp_path / 'ok'}", "link_mode=both", "link_noise=0.05",
                         "hint_anchor=0.5"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "4 frames in 2 clips" in ok.stdout and (tmp_path / "ok" / "video.mp4").is_file()
    bad = subprocess.run([*args, f"output_dir={tmp_path / 'bad'}", "link_mode=noise"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "link_mode='noise': expected channels, noise_init or both" in bad.stderr
    assert not (tmp_path / "bad" / "video.mp4").exists()
