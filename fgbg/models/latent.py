"""Latent spaces: a frozen diffusers ``AutoencoderKL`` or the identity (pixel space)."""

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


def build_autoencoder(config) -> nn.Module:
    """A diffusers ``AutoencoderKL`` with random weights from its kwargs (a dict or a ``DictConfig``)."""
    from diffusers import AutoencoderKL
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    return AutoencoderKL(**{k: list(v) if isinstance(v, tuple | list) else v for k, v in dict(config).items()})


def load_autoencoder(folder: str, key: str, subfolder: str | None = None, variant: str | None = None) -> nn.Module:
    """A diffusers ``AutoencoderKL`` from a local folder; ``key`` names the config value in the error."""
    from diffusers import AutoencoderKL

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{key}={folder!r}: expected a local AutoencoderKL folder")
    return AutoencoderKL.from_pretrained(folder, subfolder=subfolder or None, variant=variant, local_files_only=True)


class VAELatent(nn.Module):
    """Frozen ``AutoencoderKL`` from a local diffusers folder; latents scaled by ``scaling_factor``.

    encode: (M, 3, H, W) in [-1, 1] -> (M, c, H/f, W/f); decode the inverse (clamped to [-1, 1]).
    ``chunk_frames``: encode and decode at most this many images per VAE call (the VAE's activations at
    512x512 are about 1 GB per image in fp32; B x 16 frames in one call do not fit), same output.
    The posterior sample draws from ``generator`` when one is given (training passes its seeded one, so a
    resumed run and every rank draw what an uninterrupted run would), else from the global RNG;
    ``encode(..., mean=True)`` takes the posterior's mean whatever ``sample_posterior`` says (conditioning
    inputs such as pixel-space hints, which should not carry sampling noise).
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
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
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
            dist = self.vae.encode(chunk.to(self.vae.dtype)).latent_dist
            out.append(dist.sample(generator) if self.sample_posterior and not mean else dist.mode())
        return torch.cat(out).float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = [self.vae.decode((c / self.scaling_factor).to(self.vae.dtype)).sample for c in self._chunks(latents)]
        return torch.cat(out).float().clamp(-1, 1)
