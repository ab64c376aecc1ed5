"""The UNets: spatial UNet loading, the denoiser (UNet + motion modules) and ReferenceNet.

Everything is a diffusers model extended by composition: ``UNetMotionModel.from_unet2d``
for the denoiser, a ``UNet2DConditionModel`` for ReferenceNet, attention processors
(``fgbg.models.attention``) for the reference bank, and a widened ``conv_in`` whose
extra input channels start at zero so pretrained behaviour is kept exactly.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import nn

from fgbg.models.attention import ReferenceBank, set_processors
from fgbg.utils.config import plain_dict
from fgbg.utils.weights import load_state_dict_file


def _require_dir(path: str, what: str, key: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{key}={path!r}: expected a local folder holding {what}")


def load_unet2d(
    pretrained: str | None = None,
    subfolder: str | None = "unet",
    config: Mapping | None = None,
    variant: str | None = None,
):
    """The spatial UNet: from a local diffusers folder (``pretrained``/``subfolder``; ``variant="fp16"`` reads
    ``diffusion_pytorch_model.fp16.safetensors``) or a config dict."""
    if pretrained:
        _require_dir(pretrained, "a Stable Diffusion UNet in diffusers layout", "model.unet.pretrained")
        return UNet2DConditionModel.from_pretrained(
            pretrained, subfolder=subfolder or None, variant=variant, local_files_only=True
        )
    if not config:
        raise ValueError(
            "model.unet: give either `pretrained` (a local folder) or `config` (UNet2DConditionModel kwargs)"
        )
    return UNet2DConditionModel(**plain_dict(config))


def zero_motion_outputs(adapter: MotionAdapter) -> MotionAdapter:
    """Zero every motion module's ``proj_out`` so a fresh adapter is the identity (AnimateDiff's init)."""
    for name, module in adapter.named_modules():
        if name.endswith("proj_out") and isinstance(module, nn.Linear):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return adapter


def load_motion_adapter(
    pretrained: str | None = None,
    single_file: str | None = None,
    single_file_config: str | None = None,
    config: Mapping | None = None,
    variant: str | None = None,
) -> MotionAdapter:
    """AnimateDiff motion modules: a diffusers ``MotionAdapter`` folder, an original single file
    (``mm_sd_v15_v2.ckpt`` layout; ``single_file_config`` is a local folder with the adapter's
    ``config.json``, so nothing is fetched), or a fresh adapter from ``config`` with zeroed outputs."""
    if pretrained:
        _require_dir(pretrained, "a diffusers MotionAdapter (config.json + weights)", "model.motion_adapter.pretrained")
        return MotionAdapter.from_pretrained(pretrained, variant=variant, local_files_only=True)
    if single_file:
        if not os.path.isfile(single_file):
            raise FileNotFoundError(f"model.motion_adapter.single_file={single_file!r}: no such file")
        if not single_file_config:
            raise ValueError(
                "model.motion_adapter.single_file needs single_file_config: a local folder with the adapter's "
                "config.json (nothing can be fetched from the hub here)"
            )
        _require_dir(single_file_config, "a MotionAdapter config.json", "model.motion_adapter.single_file_config")
        # Read the file ourselves (safetensors, or torch.load(weights_only=True)) so a pickle payload in a
        # downloaded .ckpt is refused whatever diffusers' own loader does.
        state = load_state_dict_file(
            single_file,
            "model.motion_adapter.single_file",
            "AnimateDiff motion modules (.ckpt/.safetensors of tensors)",
        )
        check_motion_mid_block(state, single_file, single_file_config)
        adapter = MotionAdapter.from_single_file(state, config=single_file_config, local_files_only=True)
        check_single_file_keys(state, adapter, single_file)
        return adapter
    if not config:
        raise ValueError("model.motion_adapter: give `pretrained`, `single_file` or `config`")
    return zero_motion_outputs(MotionAdapter(**plain_dict(config)))


def check_motion_mid_block(state: Mapping[str, torch.Tensor], single_file: str, config_dir: str) -> None:
    """An original AnimateDiff file must agree with its config on the mid-block motion module.

    v1 files (``mm_sd_v15.ckpt``) have none, v2/v3 files have ``mid_block.motion_modules.*``; a
    ``config.json`` saying otherwise would leave the mid block randomly initialised or drop its weights,
    so the mismatch is an error naming the key to set.
    """
    import json

    has_mid = any(k.startswith("mid_block.") for k in state)
    with open(os.path.join(config_dir, "config.json")) as f:
        wants_mid = bool(json.load(f).get("use_motion_mid_block", True))  # MotionAdapter's default
    if has_mid != wants_mid:
        kind = (
            "has a mid-block motion module (AnimateDiff v2/v3)"
            if has_mid
            else "has no mid-block motion module (AnimateDiff v1)"
        )
        raise ValueError(
            f"model.motion_adapter.single_file={single_file!r} {kind}, but {config_dir}/config.json sets "
            f"use_motion_mid_block={str(wants_mid).lower()}: set it to {str(has_mid).lower()} in that config "
            f"(and model.motion_adapter.config.use_motion_mid_block={str(has_mid).lower()})"
        )


def check_single_file_keys(state: Mapping[str, torch.Tensor], adapter: MotionAdapter, single_file: str) -> None:
    """Strict loading: the file's tensors, renamed by diffusers' own AnimateDiff converter, must be exactly the
    adapter's parameters (diffusers only warns about unused file tensors and leaves missing ones at their
    initial values). Positional tables (``pos_encoder.pe``) are recomputed, not required."""
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    converted = set(convert_animatediff_checkpoint_to_diffusers(dict(state)))
    params = {n for n, _ in adapter.named_parameters()}
    missing, unexpected = sorted(params - converted), sorted(converted - set(adapter.state_dict()))
    if missing or unexpected:
        raise ValueError(
            f"model.motion_adapter.single_file={single_file!r} does not match its config: {len(missing)} adapter "
            f"weights missing from the file (e.g. {missing[:3]}), {len(unexpected)} file tensors without a place "
            f"(e.g. {unexpected[:3]}); check model.motion_adapter.single_file_config (blocks, layers, mid block)"
        )


def widen_conv_in(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs; the extra input weights are zero."""
    if in_channels < conv.in_channels:
        raise ValueError(f"cannot narrow conv_in from {conv.in_channels} to {in_channels} channels")
    wide = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    ).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, : conv.in_channels] = conv.weight
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    return wide


def down_residual_specs(unet_config: Mapping) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Shapes of the UNet's down-path skip features as (channels, stride) pairs, and the mid block's.

    Order is diffusers' ``down_block_res_samples``: conv_in output, then per down
    block its ``layers_per_block`` outputs and (except the last) its downsampler.
    """
    channels = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    specs = [(channels[0], 1)]
    for i, ch in enumerate(channels):
        specs += [(ch, 2**i)] * layers[i]
        if i < len(channels) - 1:
            specs.append((ch, 2 ** (i + 1)))
    return specs, (channels[-1], 2 ** (len(channels) - 1))


class Denoiser(nn.Module):
    """Denoising UNet with motion modules, widened input and reference-bank reading.

    ``unet``: a ``UNetMotionModel`` built from the spatial UNet and a motion adapter.
    Input channels, in order: noisy latent (c), then ``extra_channels`` (link latent,
    link mask, motion hint ...), all starting with zero weights.
    """

    def __init__(
        self,
        unet2d: UNet2DConditionModel,
        motion_adapter: MotionAdapter,
        extra_channels: int,
        bank: ReferenceBank,
        backend: str = "sdpa",
    ):
        super().__init__()
        self.latent_channels = unet2d.config.in_channels
        unet = UNetMotionModel.from_unet2d(unet2d, motion_adapter)
        if extra_channels:
            unet.conv_in = widen_conv_in(unet.conv_in, self.latent_channels + extra_channels)
            unet.register_to_config(in_channels=self.latent_channels + extra_channels)
        self.unet = unet
        self.bank = bank
        self.reader_names = set_processors(unet, backend, bank, "read")

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        down_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample: (B, C_in, F, h, w); timestep: (B,); encoder_hidden_states: (B, L, D);
        residuals: (B*F, C_i, h_i, w_i), frame-minor. Returns (B, c, F, h, w)."""
        # UNetMotionModel repeats the time embedding over frames but not the context.
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(sample.shape[2], dim=0)
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual,
            return_dict=False,
        )[0]

    def motion_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name relative to this module, parameter) of the AnimateDiff motion modules."""
        return [(n, p) for n, p in self.named_parameters() if "motion_modules" in n]


class ReferenceNet(nn.Module):
    """A spatial UNet run once on the reference (timestep 0) to fill the ReferenceBank.

    Optionally takes the reference person mask as one more input channel
    (``mask_input``; zero-initialised weights), which lets its tokens say which
    reference pixels are the person. Parameters whose output never reaches a bank
    write (the tail after the last ``attn1``, ``conv_out``...) are listed in
    ``unused_parameter_names`` and never trained.
    """

    def __init__(
        self, unet2d: UNet2DConditionModel, bank: ReferenceBank, mask_input: bool = False, backend: str = "sdpa"
    ):
        super().__init__()
        unet = copy.deepcopy(unet2d)
        self.mask_input = mask_input
        if mask_input:
            unet.conv_in = widen_conv_in(unet.conv_in, unet.config.in_channels + 1)
            unet.register_to_config(in_channels=unet.config.in_channels + 1)
        self.unet = unet
        self.bank = bank
        # The probe below runs on the (CPU) model being built: SDPA processors for it, then the requested
        # backend's (xformers has no CPU kernels). The processors' backend does not change which parameters
        # reach the bank, so the result is the same for every backend.
        self.writer_names = set_processors(unet, "sdpa", bank, "write")
        self.unused_parameter_names = self._find_unused_parameters()
        if backend != "sdpa":
            set_processors(unet, backend, bank, "write")

    def forward(
        self, latent: torch.Tensor, encoder_hidden_states: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """latent: (B, c, h, w); mask: (B, 1, h, w) when ``mask_input``. Returns {layer name: (B, M, C)}."""
        if self.mask_input:
            if mask is None:
                raise ValueError("this ReferenceNet takes the reference person mask (model.referencenet.mask_input)")
            latent = torch.cat([latent, mask.to(latent.dtype)], 1)
        timestep = torch.zeros(latent.shape[0], device=latent.device, dtype=torch.long)
        with self.bank.writing() as tokens:
            self.unet(latent, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)
        return tokens

    def _find_unused_parameters(self) -> set[str]:
        """Names of parameters that get no gradient from the bank (found by one tiny backward pass)."""
        cfg = self.unet.config
        size = 2 ** (len(cfg.block_out_channels) - 1) * 2
        x = torch.zeros(1, cfg.in_channels - int(self.mask_input), size, size)
        ctx = torch.zeros(1, 1, cfg.cross_attention_dim)
        mask = torch.zeros(1, 1, size, size) if self.mask_input else None
        device = next(self.parameters()).device
        saved = {n: p.requires_grad for n, p in self.named_parameters()}
        for p in self.parameters():
            p.requires_grad_(True)
        tokens = self.forward(x.to(device), ctx.to(device), None if mask is None else mask.to(device))
        if not tokens:
            raise ValueError("ReferenceNet has no spatial self-attention layers to write to the bank")
        sum(t.sum() for t in tokens.values()).backward()
        unused = {n for n, p in self.named_parameters() if p.grad is None}
        for n, p in self.named_parameters():
            p.grad = None
            p.requires_grad_(saved[n])
        return unused
