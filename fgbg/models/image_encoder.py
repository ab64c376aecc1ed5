"""Global image features: the reference image -> a few cross-attention tokens.

Two backbones by config: a transformers CLIP vision model (``CLIPImageEncoder``) or
a timm backbone (``TimmImageEncoder``). Both give a pooled vector and a grid of
patch features; the tokens are ``[proj(pooled), proj(patch features avg-pooled to
grid x grid)]``, i.e. ``1 + grid**2`` tokens of ``cross_attention_dim`` channels.
The projections always train in stage ``image``; the backbone only if
``trainable_backbone`` (frozen for pretrained CLIP, trainable for tiny random ones).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class _TokenHead(nn.Module):
    """Pooled (B, P) + patch grid (B, C, g, g) -> (B, 1 + grid**2, D) tokens."""

    def __init__(self, pooled_dim: int, patch_dim: int, out_dim: int, grid: int):
        super().__init__()
        self.grid = grid
        self.pooled = nn.Linear(pooled_dim, out_dim)
        self.patches = nn.Linear(patch_dim, out_dim) if grid > 0 else None
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, pooled: torch.Tensor, patch_grid: torch.Tensor) -> torch.Tensor:
        tokens = [self.pooled(pooled)[:, None]]
        if self.patches is not None:
            g = F.adaptive_avg_pool2d(patch_grid, self.grid).flatten(2).transpose(1, 2)  # (B, grid**2, C)
            tokens.append(self.patches(g))
        return self.norm(torch.cat(tokens, 1))


class ImageEncoderBase(nn.Module):
    """Shared input handling: [-1, 1] images resized and normalised for the backbone."""

    backbone: nn.Module
    trainable_backbone: bool

    def __init__(self, image_size: int, mean, std, trainable_backbone: bool):
        super().__init__()
        self.image_size = image_size
        self.trainable_backbone = trainable_backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) normalised for the backbone."""
        x = (images.float() + 1) / 2
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std

    def trainable_parameters(self):
        """(name, parameter) pairs this encoder trains in stage ``image``."""
        return [(n, p) for n, p in self.named_parameters() if self.trainable_backbone or not n.startswith("backbone.")]

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable_backbone:
            self.backbone.eval()
        return self


class CLIPImageEncoder(ImageEncoderBase):
    """transformers ``CLIPVisionModelWithProjection`` from a local folder or a (tiny) config dict.

    ``preprocess``: ``clip`` feeds the reference through transformers' ``CLIPImageProcessor`` (resize of the
    shortest edge, centre crop, the processor's mean/std; its torchvision backend works on tensors), read from
    the folder's ``preprocessor_config.json`` when there is one, else CLIP's published settings at the
    model's image size: what the pretrained encoder saw in training, a non-square reference is cropped,
    not squashed. ``squash``: resize to a square and normalise (the tiny random encoders were trained so).
    ``auto``: ``clip`` with ``pretrained``, else ``squash``.
    """

    def __init__(
        self,
        cross_attention_dim: int,
        pretrained: str | None = None,
        config: Mapping | None = None,
        grid: int = 2,
        trainable_backbone: bool = False,
        preprocess: str = "auto",
        variant: str | None = None,
    ):
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        if preprocess not in ("auto", "clip", "squash"):
            raise ValueError(f"model.image_encoder.preprocess={preprocess!r}: expected auto, clip or squash")

        if pretrained:
            if not os.path.isdir(pretrained):
                raise FileNotFoundError(
                    f"model.image_encoder.pretrained={pretrained!r}: expected a local CLIP vision folder "
                    "in transformers layout (config.json + weights)"
                )
            backbone = CLIPVisionModelWithProjection.from_pretrained(pretrained, variant=variant, local_files_only=True)
        elif config:
            backbone = CLIPVisionModelWithProjection(CLIPVisionConfig(**dict(config)))
        else:
            raise ValueError("model.image_encoder (clip): give `pretrained` (local folder) or `config`")
        cfg = backbone.config
        super().__init__(
            cfg.image_size,
            (0.48145466, 0.4578275, 0.40821073),
            (0.26862954, 0.26130258, 0.27577711),
            trainable_backbone,
        )
        self.backbone = backbone
        if not trainable_backbone:
            self.backbone.requires_grad_(False)
        self.head = _TokenHead(cfg.projection_dim, cfg.hidden_size, cross_attention_dim, grid)
        self.processor = None
        if preprocess == "clip" or (preprocess == "auto" and pretrained):
            if pretrained and os.path.isfile(os.path.join(pretrained, "preprocessor_config.json")):
                self.processor = CLIPImageProcessor.from_pretrained(pretrained, local_files_only=True)
            else:
                self.processor = CLIPImageProcessor(size={"shortest_edge": cfg.image_size}, crop_size=cfg.image_size)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) normalised for the backbone (see ``preprocess``)."""
        if self.processor is None:
            return super().prepare(images)
        x = ((images.detach().float() + 1) / 2).clamp(0, 1)
        out = self.processor(images=list(x), do_rescale=False, return_tensors="pt", device=x.device)
        return out["pixel_values"].to(x.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 1 + grid**2, cross_attention_dim)."""
        with torch.set_grad_enabled(self.trainable_backbone and torch.is_grad_enabled()):
            out = self.backbone(pixel_values=self.prepare(images))
        patches = out.last_hidden_state[:, 1:]  # drop CLS
        side = int(math.isqrt(patches.shape[1]))
        grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
        return self.head(out.image_embeds, grid)


class TimmImageEncoder(ImageEncoderBase):
    """A timm backbone (``pretrained=False``) with optional weights from a local file."""

    def __init__(
        self,
        cross_attention_dim: int,
        name: str,
        weights: str | None = None,
        image_size: int | None = None,
        grid: int = 2,
        trainable_backbone: bool = False,
        **model_kwargs,
    ):
        import timm

        backbone = timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
        if weights:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"model.image_encoder.weights={weights!r}: no such file")
            timm.models.load_checkpoint(backbone, weights, strict=True)
        data_cfg = timm.data.resolve_data_config({}, model=backbone)
        size = image_size or data_cfg["input_size"][-1]
        super().__init__(size, data_cfg["mean"], data_cfg["std"], trainable_backbone)
        self.backbone = backbone
        if not trainable_backbone:
            self.backbone.requires_grad_(False)
        self.num_prefix_tokens = getattr(backbone, "num_prefix_tokens", 0)
        dim = backbone.num_features
        self.head = _TokenHead(dim, dim, cross_attention_dim, grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 1 + grid**2, cross_attention_dim)."""
        with torch.set_grad_enabled(self.trainable_backbone and torch.is_grad_enabled()):
            feats = self.backbone.forward_features(self.prepare(images))
        if feats.ndim == 4:  # CNN: (B, C, h, w)
            grid = feats
        else:  # ViT: (B, prefix + h*w, C)
            patches = feats[:, self.num_prefix_tokens :]
            side = int(math.isqrt(patches.shape[1]))
            grid = patches.transpose(1, 2).reshape(feats.shape[0], -1, side, side)
        return self.head(grid.mean((2, 3)), grid)
