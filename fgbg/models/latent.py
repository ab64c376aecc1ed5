"""Latent spaces: a frozen diffusers autoencoder (``AutoencoderKL``, ``AsymmetricAutoencoderKL`` or
``AutoencoderDC``) or the identity (pixel space)."""

from __future__ import annotations

import os

import torch
from torch import nn


class IdentityLatent(nn.Module):
    """Pixel space: latents are the images in [-1, 1], c = 3, factor 1."""

    channels = 3
    factor = 1

    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None, mean: bool = False
    ) -> torch.Tensor:
        """(M, 3, H, W) in [-1, 1] -> (M, 3, H, W)."""
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


AUTOENCODER_CLASSES = ("AutoencoderKL", "AsymmetricAutoencoderKL", "AutoencoderDC")


def autoencoder_class(name: str, where: str):
    """The diffusers class of a VAE config's ``_class_name``: ``AutoencoderKL`` (SD's), ``AsymmetricAutoencoderKL``
    (an encoder and a decoder of their own sizes: a larger decoder trained for a frozen encoder keeps the latent
    space, see ``fgbg.models.vae``) or ``AutoencoderDC`` (a deterministic autoencoder whose down- and upsamplings
    carry space-to-depth shortcuts; the tiny one learns far faster than an ``AutoencoderKL`` of its size)."""
    import diffusers

    if name not in AUTOENCODER_CLASSES:
        raise ValueError(f"{where}: _class_name={name!r}, expected one of {list(AUTOENCODER_CLASSES)}")
    return getattr(diffusers, name)


def autoencoder_name(config) -> str:
    """The class a VAE config (a dict of its kwargs) is for: its ``_class_name``, else told by its keys
    (``encoder_block_out_channels``: ``AutoencoderDC``; ``up_block_out_channels``: ``AsymmetricAutoencoderKL``)."""
    name = config.get("_class_name")
    if name:
        return name
    if "encoder_block_out_channels" in config:
        return "AutoencoderDC"
    return "AsymmetricAutoencoderKL" if "up_block_out_channels" in config else "AutoencoderKL"


def spatial_compression(config) -> int:
    """Pixels per latent cell along a side of a VAE config (a dict or a diffusers ``FrozenDict``): one
    downsampling per encoder block but the last, in every class (SD-1.5's VAE: 8)."""
    blocks = next(
        (config.get(k) for k in ("encoder_block_out_channels", "down_block_out_channels", "block_out_channels")
         if config.get(k)),
        None,
    )  # fmt: skip
    if not blocks:
        raise ValueError(f"VAE config: no encoder block sizes (keys {sorted(config)})")
    return 2 ** (len(blocks) - 1)


def encode_posterior(vae: nn.Module, images: torch.Tensor, sample: bool = False, generator=None):
    """``(latents, posterior)`` of ``images`` through ``vae``: the posterior's sample (``sample``) or mode for a
    KL autoencoder, and the deterministic latents with posterior None for an ``AutoencoderDC``."""
    out = vae.encode(images)
    dist = getattr(out, "latent_dist", None)
    if dist is None:
        return out.latent, None
    return (dist.sample(generator) if sample else dist.mode()), dist


def build_autoencoder(config) -> nn.Module:
    """A diffusers autoencoder with random weights from its kwargs (a dict or a ``DictConfig``): the class of
    :func:`autoencoder_name`. Keys the class does not take are dropped (a saved config's ``_class_name``, or
    ``block_out_channels`` and ``force_upcast``, which the asymmetric class records itself)."""
    import inspect

    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    config = dict(config)
    name = autoencoder_name(config)
    cls = autoencoder_class(name, "VAE config")
    kwargs = {k: list(v) if isinstance(v, tuple | list) else v for k, v in config.items() if not k.startswith("_")}
    if name != "AutoencoderKL":
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    if name == "AsymmetricAutoencoderKL":
        down, up = kwargs.get("down_block_out_channels", [64]), kwargs.get("up_block_out_channels", [64])
        if len(down) != len(up):
            raise ValueError(
                f"VAE config: down_block_out_channels {down} and up_block_out_channels {up} must have the same "
                "length (one downsampling per encoder block is undone by one decoder block)"
            )
    if name == "AutoencoderDC":
        enc, dec = kwargs.get("encoder_block_out_channels"), kwargs.get("decoder_block_out_channels")
        if enc is None or dec is None or len(enc) != len(dec):
            raise ValueError(
                f"VAE config: AutoencoderDC needs encoder_block_out_channels {enc} and decoder_block_out_channels "
                f"{dec} of the same length (one downsampling per stage but the last, undone by the decoder)"
            )
        for side, chans in (("encoder", enc), ("decoder", dec)):
            for a, b in zip(chans[:-1], chans[1:], strict=True):
                if (a * 4) % b:
                    raise ValueError(
                        f"VAE config: {side}_block_out_channels {chans}: each stage's channels x 4 must be a "
                        f"multiple of the next stage's ({a} x 4 vs {b}; AutoencoderDC's space-to-depth shortcut)"
                    )
    return cls(**kwargs)


def load_autoencoder(folder: str, key: str, subfolder: str | None = None, variant: str | None = None) -> nn.Module:
    """A diffusers autoencoder (the class its ``config.json`` names: ``AUTOENCODER_CLASSES``) from a local
    folder; ``key`` names the config value in the error."""
    import json

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{key}={folder!r}: expected a local AutoencoderKL folder")
    config_path = os.path.join(folder, subfolder or "", "config.json")
    name = "AutoencoderKL"
    if os.path.isfile(config_path):  # else from_pretrained names what is missing
        try:
            with open(config_path) as f:
                name = json.load(f).get("_class_name", name)
        except (OSError, ValueError) as err:
            raise ValueError(f"{key}: {config_path} is not a readable JSON VAE config ({err})") from None
    cls = autoencoder_class(name, f"{key}: {config_path}")
    return cls.from_pretrained(folder, subfolder=subfolder or None, variant=variant, local_files_only=True)


class VAELatent(nn.Module):
    """Frozen autoencoder from a local diffusers folder; latents scaled by ``scaling_factor``.

    encode: (M, 3, H, W) in [-1, 1] -> (M, c, H/f, W/f); decode the inverse (clamped to [-1, 1]).
    ``chunk_frames``: encode and decode at most this many images per VAE call (the VAE's activations at
    512x512 are about 1 GB per image in fp32; B x 16 frames in one call do not fit), same output.
    The posterior sample draws from ``generator`` when one is given (training passes its seeded one, so a
    resumed run and every rank draw what an uninterrupted run would), else from the global RNG;
    ``encode(..., mean=True)`` takes the posterior's mean whatever ``sample_posterior`` says (conditioning
    inputs such as pixel-space hints, which should not carry sampling noise). An ``AutoencoderDC`` has no
    posterior: its latents are deterministic whatever ``sample_posterior`` says.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        subfolder: str | None = "vae",
        sample_posterior: bool = True,
        config: dict | None = None,
        chunk_frames: int | None = None,
        variant: str | None = None,
    ):
        super().__init__()
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"model.latent.chunk_frames={chunk_frames}: expected an integer >= 1 or null (one call)")
        self.chunk_frames = chunk_frames

        if pretrained:
            self.vae = load_autoencoder(pretrained, "model.latent.pretrained", subfolder, variant)
        elif config:  # random weights with the right shapes (benchmarks, tests)
            self.vae = build_autoencoder(config)
        else:
            raise ValueError("model.latent (VAELatent): give `pretrained` (a local folder) or `config`")
        self.vae.requires_grad_(False).eval()
        self.channels = self.vae.config.latent_channels
        self.factor = spatial_compression(self.vae.config)
        self.scaling_factor = self.vae.config.scaling_factor
        self.sample_posterior = sample_posterior

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    def _chunks(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.split(self.chunk_frames) if self.chunk_frames else (x,)

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None, mean: bool = False
    ) -> torch.Tensor:
        out = []
        for chunk in self._chunks(images):
            z, _ = encode_posterior(self.vae, chunk.to(self.vae.dtype), self.sample_posterior and not mean, generator)
            out.append(z)
        return torch.cat(out).float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = [self.vae.decode((c / self.scaling_factor).to(self.vae.dtype)).sample for c in self._chunks(latents)]
        return torch.cat(out).float().clamp(-1, 1)
