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
