"""Loading public formats from local folders: diffusers UNet folder, MotionAdapter folder,
AnimateDiff's original single-file motion modules. Tiny random models saved to tmp folders."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from fgbg.models.attention import ReferenceBank
from fgbg.models.unets import Denoiser, load_motion_adapter, load_unet2d

UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=16,
    attention_head_dim=2,
    norm_num_groups=4,
)
ADAPTER = dict(
    block_out_channels=(8, 16),
    motion_layers_per_block=1,
    motion_num_attention_heads=2,
    motion_norm_num_groups=4,
    motion_max_seq_length=8,
    use_motion_mid_block=True,
)
B, F_, HW = 2, 3, 16


def _perturb(model, scale=0.05, seed=1):
    """Random non-zero weights everywhere (diffusers zero-inits nothing we rely on here)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def _inputs():
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(B, 4, F_, HW, HW, generator=g)
    ctx = torch.randn(B, 5, 16, generator=g)
    return sample, torch.tensor([10, 600]), ctx


def test_unet_folder_reproduces_diffusers_frame_by_frame(tmp_path):
    torch.manual_seed(0)
    _perturb(UNet2DConditionModel(**UNET)).save_pretrained(tmp_path / "sd" / "unet")
    ours_unet = load_unet2d(str(tmp_path / "sd"), subfolder="unet")
    theirs = UNet2DConditionModel.from_pretrained(tmp_path / "sd", subfolder="unet").eval()
    adapter = load_motion_adapter(config=ADAPTER)  # fresh: outputs zeroed, the identity
    den = Denoiser(ours_unet, adapter, extra_channels=0, bank=ReferenceBank()).eval()
    sample, t, ctx = _inputs()
    with torch.no_grad():
        out = den(sample, t, ctx)
        for f in range(F_):
            ref = theirs(sample[:, :, f], t, encoder_hidden_states=ctx).sample
            torch.testing.assert_close(out[:, :, f], ref, atol=1e-5, rtol=0)


def _diffusers_motion_reference(unet, adapter, sample, t, ctx):
    """diffusers' own UNetMotionModel with its default attention processors."""
    model = UNetMotionModel.from_unet2d(unet, adapter).eval()
    with torch.no_grad():
        return model(sample, t, encoder_hidden_states=ctx.repeat_interleave(F_, 0)).sample


def test_motion_adapter_folder_reproduces_diffusers(tmp_path):
    torch.manual_seed(0)
    unet = _perturb(UNet2DConditionModel(**UNET))
    _perturb(MotionAdapter(**ADAPTER), seed=2).save_pretrained(tmp_path / "mm")
    adapter = load_motion_adapter(pretrained=str(tmp_path / "mm"))
    den = Denoiser(unet, adapter, extra_channels=0, bank=ReferenceBank()).eval()
    sample, t, ctx = _inputs()
    with torch.no_grad():
        ours = den(sample, t, ctx)
    theirs = _diffusers_motion_reference(unet, MotionAdapter.from_pretrained(tmp_path / "mm"), sample, t, ctx)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # the motion modules really act: frames are not processed independently
    plain = torch.stack([unet(sample[:, :, f], t, encoder_hidden_states=ctx).sample for f in range(F_)], 2)
    assert (ours - plain).abs().max() > 1e-3


def to_animatediff_keys(state: dict[str, torch.Tensor], max_len: int) -> dict[str, torch.Tensor]:
    """diffusers MotionAdapter keys -> AnimateDiff's original ``mm_sd_v15_v2.ckpt`` layout
    (the inverse of diffusers' ``convert_animatediff_checkpoint_to_diffusers``), with the
    sinusoidal ``pos_encoder.pe`` buffers the original stores."""
    out = {}
    for k, v in state.items():
        k2 = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", k)
        k2 = (
            k2.replace(".norm1", ".norms.0")
            .replace(".norm2", ".norms.1")
            .replace(".norm3", ".ff_norm")
            .replace(".attn1", ".attention_blocks.0")
            .replace(".attn2", ".attention_blocks.1")
        )
        out[k2] = v
        m = re.match(r"(.*\.attention_blocks\.\d+)\.to_q\.weight$", k2)
        if m:
            out[f"{m.group(1)}.pos_encoder.pe"] = torch.zeros(1, max_len, v.shape[1])
    return out


def test_single_file_motion_modules_reproduce_diffusers(tmp_path):
    torch.manual_seed(0)
    unet = _perturb(UNet2DConditionModel(**UNET))
    adapter = _perturb(MotionAdapter(**ADAPTER), seed=3)
    adapter.save_config(tmp_path / "mm_config")  # config.json only: what from_single_file needs locally
    ckpt = tmp_path / "mm_tiny_v2.ckpt"
    torch.save(to_animatediff_keys(adapter.state_dict(), ADAPTER["motion_max_seq_length"]), ckpt)
    assert "mid_block.motion_modules.0.temporal_transformer.norm.bias" in torch.load(ckpt)

    loaded = load_motion_adapter(single_file=str(ckpt), single_file_config=str(tmp_path / "mm_config"))
    for k, v in adapter.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, msg=k)
    den = Denoiser(unet, loaded, extra_channels=0, bank=ReferenceBank()).eval()
    sample, t, ctx = _inputs()
    with torch.no_grad():
        ours = den(sample, t, ctx)
    torch.testing.assert_close(ours, _diffusers_motion_reference(unet, adapter, sample, t, ctx), atol=1e-5, rtol=0)


def test_missing_folders_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.unet.pretrained"):
        load_unet2d(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="model.motion_adapter.single_file"):
        load_motion_adapter(single_file=str(tmp_path / "mm.ckpt"))
    (tmp_path / "mm.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="single_file_config"):
        load_motion_adapter(single_file=str(tmp_path / "mm.ckpt"))


def test_fp16_variant_folders_load(tmp_path):
    """SD-1.5-style repositories publish ``*.fp16.safetensors``: ``variant: fp16`` loads them (UNet, VAE, adapter)."""
    from diffusers import AutoencoderKL

    from fgbg.models.latent import VAELatent
    from tests.test_latent import TINY_VAE

    torch.manual_seed(0)
    unet = _perturb(UNet2DConditionModel(**UNET)).half()
    unet.save_pretrained(tmp_path / "sd" / "unet", variant="fp16")
    AutoencoderKL(**TINY_VAE).half().save_pretrained(tmp_path / "sd" / "vae", variant="fp16")
    _perturb(MotionAdapter(**ADAPTER)).half().save_pretrained(tmp_path / "mm", variant="fp16")
    assert list((tmp_path / "sd" / "unet").glob("*.fp16.safetensors"))

    loaded = load_unet2d(str(tmp_path / "sd"), variant="fp16")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), unet.state_dict().values()))
    assert VAELatent(pretrained=str(tmp_path / "sd"), variant="fp16").channels == TINY_VAE["latent_channels"]
    assert load_motion_adapter(str(tmp_path / "mm"), variant="fp16").config.use_motion_mid_block
    with pytest.raises((OSError, EnvironmentError, ValueError)):
        load_unet2d(str(tmp_path / "sd"))  # no plain diffusion_pytorch_model.safetensors in the folder


def test_v1_single_file_without_mid_block_needs_the_matching_config(tmp_path):
    """AnimateDiff v1 files have no mid-block motion module: with a v2 config (mid block on) the load names the
    mismatch; with use_motion_mid_block=false it loads and reproduces the adapter."""
    torch.manual_seed(0)
    v1 = _perturb(MotionAdapter(**{**ADAPTER, "use_motion_mid_block": False}), seed=3)
    v1.save_config(tmp_path / "v1_config")
    MotionAdapter(**ADAPTER).save_config(tmp_path / "v2_config")
    ckpt = tmp_path / "mm_tiny_v1.ckpt"
    torch.save(to_animatediff_keys(v1.state_dict(), ADAPTER["motion_max_seq_length"]), ckpt)
    assert not any(k.startswith("mid_block.") for k in torch.load(ckpt))
    with pytest.raises(ValueError, match=r"has no mid-block motion module \(AnimateDiff v1\).*set it to false"):
        load_motion_adapter(single_file=str(ckpt), single_file_config=str(tmp_path / "v2_config"))
    loaded = load_motion_adapter(single_file=str(ckpt), single_file_config=str(tmp_path / "v1_config"))
    assert not loaded.config.use_motion_mid_block
    for k, v in v1.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, msg=k)


def published_animatediff_keys(channels, layers, mid: bool, max_len: int) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of an original AnimateDiff motion-module file, written out from the published
    module structure (guoyww/AnimateDiff ``animatediff/models/motion_module.py``: ``VanillaTemporalModule`` ->
    ``temporal_transformer`` with ``norm``, ``proj_in``, ``transformer_blocks.<l>.attention_blocks.<a>``
    (``to_q/to_k/to_v`` without bias, ``to_out.0``, ``pos_encoder.pe``), ``norms.<a>``, ``ff.net.0.proj``
    (GEGLU), ``ff.net.2``, ``ff_norm``, then ``proj_out``), placed as ``down_blocks.<i>.motion_modules.<j>``,
    ``up_blocks.<i>.motion_modules.<j>`` (one more per up block) and ``mid_block.motion_modules.0``; one
    transformer block with two temporal self-attentions, as in the v2 files. Independent of any converter."""
    places = [(f"down_blocks.{i}.motion_modules.{j}", c) for i, c in enumerate(channels) for j in range(layers)]
    places += [
        (f"up_blocks.{i}.motion_modules.{j}", c) for i, c in enumerate(channels[::-1]) for j in range(layers + 1)
    ]
    places += [("mid_block.motion_modules.0", channels[-1])] if mid else []
    keys = {}
    for place, c in places:
        t = f"{place}.temporal_transformer"
        keys |= {f"{t}.norm.weight": (c,), f"{t}.norm.bias": (c,), f"{t}.proj_in.weight": (c, c),
                 f"{t}.proj_in.bias": (c,), f"{t}.proj_out.weight": (c, c), f"{t}.proj_out.bias": (c,)}  # fmt: skip
        blk = f"{t}.transformer_blocks.0"
        for a in range(2):
            att = f"{blk}.attention_blocks.{a}"
            keys |= {f"{att}.to_q.weight": (c, c), f"{att}.to_k.weight": (c, c), f"{att}.to_v.weight": (c, c),
                     f"{att}.to_out.0.weight": (c, c), f"{att}.to_out.0.bias": (c,),
                     f"{att}.pos_encoder.pe": (1, max_len, c),
                     f"{blk}.norms.{a}.weight": (c,), f"{blk}.norms.{a}.bias": (c,)}  # fmt: skip
        keys |= {f"{blk}.ff.net.0.proj.weight": (8 * c, c), f"{blk}.ff.net.0.proj.bias": (8 * c,),
                 f"{blk}.ff.net.2.weight": (c, 4 * c), f"{blk}.ff.net.2.bias": (c,),
                 f"{blk}.ff_norm.weight": (c,), f"{blk}.ff_norm.bias": (c,)}  # fmt: skip
    return keys


def test_single_file_with_the_published_key_names_fills_every_adapter_weight(tmp_path):
    """Every tensor of a file laid out as the published checkpoints (names above, not our converter's inverse) gets a
    distinct constant; after loading, every adapter parameter holds one of them and every one is used: nothing left
    at its initial value, nothing dropped (the positional tables, recomputed by diffusers, aside)."""
    keys = published_animatediff_keys(list(ADAPTER["block_out_channels"]), 1, True, ADAPTER["motion_max_seq_length"])
    state = {k: torch.full(shape, float(i + 1)) for i, (k, shape) in enumerate(sorted(keys.items()))}
    MotionAdapter(**ADAPTER).save_config(tmp_path / "cfg")
    torch.save(state, tmp_path / "mm_published_layout.ckpt")
    adapter = load_motion_adapter(single_file=str(tmp_path / "mm_published_layout.ckpt"),
                                  single_file_config=str(tmp_path / "cfg"))  # fmt: skip
    params = dict(adapter.named_parameters())
    used = set()
    for name, p in params.items():
        values = p.detach().unique()
        assert values.numel() == 1, f"{name} was not filled from the file (values {values[:4].tolist()})"
        used.add(float(values[0]))
    expected = {float(v.flatten()[0]) for k, v in state.items() if not k.endswith("pos_encoder.pe")}
    assert used == expected and len(params) == len(expected), "a file tensor went unused or to two parameters"

    renamed = dict(state)
    renamed[k.replace("ff_norm", "ffnorm")] = renamed.pop(k := next(x for x in state if x.endswith("ff_norm.weight")))
    torch.save(renamed, tmp_path / "mm_misnamed.ckpt")
    with pytest.raises(ValueError, match=r"1 adapter weights missing from the file.*1 file tensors without a place"):
        load_motion_adapter(single_file=str(tmp_path / "mm_misnamed.ckpt"), single_file_config=str(tmp_path / "cfg"))
