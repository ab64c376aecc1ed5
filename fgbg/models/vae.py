"""A small diffusers autoencoder (``AutoencoderKL``, or ``AutoencoderDC``) trained on fgbg shards: the latent space of
``model=fgbg_tiny_latent``.

    fgbg-train experiment=synthetic_tiny_vae                 # writes <run>/vae/ (a diffusers folder)
    fgbg-train experiment=synthetic_tiny_vae_dc              # the AutoencoderDC: 30.9 dB held out in 30 CPU minutes
    python -m fgbg.eval.vae <run>/vae data/synthetic/val-000001.tar --out vae_eval.json   # held-out frames

The tiny model in pixel space at 32x32 skips the latent path every real run takes (SD-1.5's VAE). This
module trains the same kind of autoencoder at toy size (downsampling 4, 8 latent channels: 64x64 frames
become 16x16x8 latents; 4 channels, as SD has, plateaued at 24.6 dB PSNR) with SD's recipe minus the
adversary: an L1 + MSE reconstruction loss, a small gradient (edge) term that keeps stripes and checks
sharp, and a KL weight of 1e-6. The latent scaling factor is computed from data as SD did (1 / std of
the latents over training frames) and written into the folder's ``config.json``, so
:class:`fgbg.models.latent.VAELatent` loads it unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fgbg.models.latent import build_autoencoder, encode_posterior, load_autoencoder

# AutoencoderKL kwargs of the tiny configuration (conf/model/tiny_vae.yaml repeats them; tests build from here)
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 8,
    "block_out_channels": [32, 32, 48],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "mid_block_add_attention": True,
    "scaling_factor": 1.0,
}


def frames_of(batch: dict[str, Any]) -> torch.Tensor:
    """A training batch -> its images (M, 3, H, W) in [-1, 1]: every frame of every clip, and the references."""
    frames = batch["frames"]
    if frames.ndim != 5:
        raise ValueError(f"batch['frames'] must be (B, T, 3, H, W), got shape {tuple(frames.shape)}")
    return torch.cat([frames.flatten(0, 1), batch["reference"]])


def masks_of(batch: dict[str, Any]) -> torch.Tensor | None:
    """The person masks of ``frames_of(batch)``'s images (M, 1, H, W) in {0, 1}, or None when the batch has none."""
    if "masks" not in batch or "reference_mask" not in batch:
        return None
    return torch.cat([batch["masks"].flatten(0, 1), batch["reference_mask"]])


def sobel(images: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical Sobel responses per channel: (M, C, H, W) -> (M, 2C, H, W)."""
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=images.device)
    k = torch.stack([kx, kx.T]).unsqueeze(1).to(images.dtype)  # (2, 1, 3, 3)
    c = images.shape[1]
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), k.repeat(c, 1, 1, 1), groups=c)


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak 1 on the [0, 1] scale)."""
    mse = ((recon.clamp(-1, 1) - target) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


class VAEModule(L.LightningModule):
    """Trains an ``AutoencoderKL`` (or an ``AutoencoderDC``: ``model=tiny_vae_dc``) on the frames of fgbg batches
    (``fgbg-train experiment=synthetic_tiny_vae``, ``experiment=synthetic_tiny_vae_dc``).

    loss = l1_weight * |x - x'| + mse_weight * (x - x')^2 + grad_weight * |sobel(x) - sobel(x')| + kl_weight * KL,
    each a mean over pixels (the KL a mean over latent elements; an ``AutoencoderDC`` has no posterior, so no KL:
    its ``kl_weight`` must be 0), on random ``crop`` x ``crop`` windows of the frames. Validation logs
    ``val/loss`` and ``val/psnr`` (whole frames, the posterior's mode decoded, in dB).
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        l1_weight: float = 1.0,
        mse_weight: float = 1.0,
        grad_weight: float = 0.1,
        kl_weight: float = 1e-6,
        crop: int | None = 32,
        person_weight: float = 1.0,
        sample_posterior: bool = False,
        encoder_from: str | None = None,
        stage: str = "vae",
        optimizer=None,
        lr_scheduler=None,
    ):
        super().__init__()
        for name, value in (("l1_weight", l1_weight), ("mse_weight", mse_weight), ("grad_weight", grad_weight),
                            ("kl_weight", kl_weight)):  # fmt: skip
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"model.{name}={value!r}: expected a finite number >= 0")
        if not (isinstance(person_weight, int | float) and math.isfinite(person_weight) and person_weight >= 1):
            raise ValueError(
                f"model.person_weight={person_weight!r}: expected a finite number >= 1 (1: every pixel alike)"
            )
        # The reconstruction terms weigh pixels inside the person mask this many times the rest (the person is
        # ~15% of a frame, with its thinnest, most detailed structures: limbs, faces, shirt patterns).
        self.person_weight = float(person_weight)
        if pretrained:
            self.vae = load_autoencoder(pretrained, "model.pretrained")
        elif config:
            self.vae = build_autoencoder(config)
        else:
            raise ValueError("model (VAEModule): give `config` (AutoencoderKL kwargs) or `pretrained` (a folder)")
        if type(self.vae).__name__ == "AutoencoderDC":  # deterministic latents: nothing to sample or pull
            for key, value, expected in (("kl_weight", kl_weight, 0), ("sample_posterior", sample_posterior, False)):
                if value != expected:
                    raise ValueError(
                        f"model.{key}={value!r}: {type(self.vae).__name__} has no posterior (deterministic latents); "
                        f"expected {expected}"
                    )
        condition = getattr(getattr(self.vae, "decoder", None), "condition_encoder", None)
        if condition is not None:  # AsymmetricAutoencoderKL's inpainting branch: fgbg decodes latents alone, so it
            condition.requires_grad_(False)  # never runs (frozen: no unused parameters under DDP, none in the EMA)
        # A new decoder for an existing latent space: the encoder (and quant_conv) copied from `encoder_from` and
        # frozen, so every model trained on that VAE's latents decodes with this one; its scaling factor kept.
        self.fixed_scaling_factor: float | None = None
        if encoder_from:
            source = load_autoencoder(encoder_from, "model.encoder_from")
            copy_encoder(source, self.vae, f"model.encoder_from={encoder_from!r}")
            self.vae.encoder.requires_grad_(False)
            if getattr(self.vae, "quant_conv", None) is not None:
                self.vae.quant_conv.requires_grad_(False)
            self.fixed_scaling_factor = float(source.config.scaling_factor)
        if crop is not None and (not isinstance(crop, int) or crop < 8 or crop % 8):
            raise ValueError(f"model.crop={crop!r}: expected null (whole frames) or a multiple of 8, >= 8")
        self.crop = crop
        self.sample_posterior = sample_posterior
        self.weights = {"l1": l1_weight, "mse": mse_weight, "grad": grad_weight, "kl": kl_weight}
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        if stage != "vae":
            raise ValueError(f"model.stage={stage!r}: the autoencoder has one stage, 'vae'")
        self.stage = stage

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def losses(
        self, images: torch.Tensor, sample: bool = True, masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The loss terms, ``loss`` and ``psnr`` (and ``psnr_person`` with ``masks``, (M, 1, H, W)); the
        reconstruction terms are means weighted by ``person_weight`` inside ``masks`` (plain means without)."""
        z, dist = encode_posterior(self.vae, images, sample)
        recon = self.vae.decode(z).sample
        weight = None
        if masks is not None and self.person_weight != 1.0:
            weight = 1.0 + (self.person_weight - 1.0) * masks.to(images.dtype)
            weight = weight / weight.mean()

        def mean(err: torch.Tensor) -> torch.Tensor:
            return (err * weight).mean() if weight is not None else err.mean()

        terms = {
            "l1": mean((recon - images).abs()),
            "mse": mean((recon - images).square()),
            "grad": mean((sobel(recon) - sobel(images)).abs()),
            "kl": 0.5 * (dist.mean.square() + dist.var - 1.0 - dist.logvar).mean()
            if dist is not None
            else z.new_zeros(()),
        }
        terms["loss"] = sum(self.weights[k] * v for k, v in terms.items())
        terms["psnr"] = psnr(recon.detach().float(), images.float()).mean()
        if masks is not None:
            m = masks.float()
            err = ((recon.detach().float().clamp(-1, 1) - images.float()) / 2).square() * m
            mse = err.sum() / (m.sum() * images.shape[1]).clamp_min(1.0)
            terms["psnr_person"] = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
        return terms

    def random_crops(self, images: torch.Tensor) -> torch.Tensor:
        """One random ``crop`` x ``crop`` window per image (the network is convolutional; SD trained its VAE on
        crops too): four times the images per second at 32 of 64 pixels, whole frames at validation. Extra
        channels (the person mask) are cut from the same window."""
        h, w = images.shape[-2:]
        if self.crop is None or self.crop >= min(h, w):
            return images
        c = self.crop
        ys = torch.randint(0, h - c + 1, (len(images),)).tolist()
        xs = torch.randint(0, w - c + 1, (len(images),)).tolist()
        return torch.stack([im[:, y : y + c, x : x + c] for im, y, x in zip(images, ys, xs, strict=True)])

    def _images_and_masks(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        masks = masks_of(batch)
        if masks is None and self.person_weight != 1.0:
            raise ValueError(
                f"model.person_weight={self.person_weight}: the batch has no person masks (keys 'masks' and "
                f"'reference_mask'; it has {sorted(batch)}); use shards with masks or model.person_weight=1"
            )
        images = frames_of(batch).to(self.dtype)
        return images, None if masks is None else masks.to(self.dtype)

    def training_step(self, batch, batch_idx):
        images, masks = self._images_and_masks(batch)
        if masks is not None:
            both = self.random_crops(torch.cat([images, masks], 1))
            images, masks = both[:, :3], both[:, 3:]
        else:
            images = self.random_crops(images)
        terms = self.losses(images, sample=self.sample_posterior, masks=masks)
        n = len(batch["frames"])
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}, batch_size=n)
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, batch_size=n)
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        real = ~batch["val_pad"] if "val_pad" in batch else None
        if real is not None and not bool(real.any()):
            return
        images, masks = self._images_and_masks(batch)
        terms = self.losses(images, sample=False, masks=masks)
        n = len(batch["frames"])
        self.log("val/loss", terms["loss"], sync_dist=True, batch_size=n)
        self.log("val/psnr", terms["psnr"], sync_dist=True, batch_size=n, prog_bar=True)
        if "psnr_person" in terms:
            self.log("val/psnr_person", terms["psnr_person"], sync_dist=True, batch_size=n)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # not a frozen encoder (model.encoder_from)
        if self.optimizer_factory is None:
            return torch.optim.AdamW(params, lr=1e-3)
        optimizer = self.optimizer_factory(params=params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.no_grad()
def encoder_state(vae: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that define a VAE's latent space: its encoder's and ``quant_conv``'s (an ``AutoencoderDC`` has
    none)."""
    return {k: v for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}


def copy_encoder(source: nn.Module, target: nn.Module, where: str) -> None:
    """Load ``source``'s encoder and ``quant_conv`` into ``target`` (an ``AutoencoderKL`` or an
    ``AsymmetricAutoencoderKL``); a different encoder architecture raises ``ValueError`` naming ``where``."""
    src, dst = encoder_state(source), encoder_state(target)
    if not src:
        raise ValueError(f"{where}: the VAE there has no encoder weights (expected encoder.* and quant_conv.*)")
    shapes = {k: tuple(v.shape) for k, v in src.items()}
    wanted = {k: tuple(v.shape) for k, v in dst.items()}
    if shapes != wanted:
        differ = sorted(set(shapes) ^ set(wanted)) or sorted(k for k in shapes if shapes[k] != wanted[k])
        raise ValueError(
            f"{where}: its encoder does not fit model.config's (latent_channels "
            f"{source.config.latent_channels} vs {target.config.latent_channels}; first differing weights "
            f"{differ[:3]}): give model.config the encoder's sizes (down_block_out_channels, layers_per_down_block, "
            "latent_channels, norm_num_groups)"
        )
    with torch.no_grad():
        for k, v in dst.items():
            v.copy_(src[k])


def latent_scaling_factor(vae: nn.Module, batches: Iterable[torch.Tensor], sample: bool = False) -> float:
    """SD's recipe: 1 / std of the latents over data (posterior samples, or its mean when not ``sample``, as
    the model that uses the VAE encodes), so scaled latents have unit variance."""
    total, total_sq, count = 0.0, 0.0, 0
    for images in batches:
        z = encode_posterior(vae, images.to(vae.device, vae.dtype), sample)[0].double()
        total, total_sq, count = total + z.sum().item(), total_sq + z.square().sum().item(), count + z.numel()
    if count == 0:
        raise ValueError("latent_scaling_factor: no images to measure the latents on")
    var = total_sq / count - (total / count) ** 2
    return float(1.0 / math.sqrt(max(var, 1e-12)))


def save_vae(vae: nn.Module, folder: str | os.PathLike, scaling_factor: float) -> Path:
    """Write ``vae`` as a diffusers folder (config.json + safetensors) with ``scaling_factor`` in its config."""
    folder = Path(folder)
    vae.register_to_config(scaling_factor=float(scaling_factor))
    tmp = folder.with_name(folder.name + f".tmp.{os.getpid()}")
    vae.save_pretrained(str(tmp), safe_serialization=True)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
