"""Track-point encoder: a light conv net over the track maps, one zero-initialised
residual per skip feature of the denoiser's down path (the ControlNet residual shapes)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class TrackEncoder(nn.Module):
    """Track maps (M, 3, H, W) -> residuals for the denoiser's down path and mid block.

    ``residual_specs``: (channels, stride) per down residual, strides relative to the
    latent grid (see ``fgbg.models.unets.down_residual_specs``); ``mid_spec`` likewise.
    ``latent_factor`` (1 in pixel space, 8 for the SD VAE) is the stride of the stem,
    made of stride-2 convs. ``channels[i]`` is the width at stride 2**i of the latent
    grid. Every output conv is zero-initialised, so a fresh encoder adds nothing.
    """

    def __init__(
        self,
        residual_specs: Sequence[tuple[int, int]],
        mid_spec: tuple[int, int],
        latent_factor: int = 1,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 32),
    ):
        super().__init__()
        levels = int(math.log2(max(s for _, s in [*residual_specs, mid_spec]))) + 1
        if len(channels) < levels:
            raise ValueError(
                f"model.track_encoder.channels needs {levels} entries (one per UNet level), got {channels}"
            )
        if latent_factor < 1 or latent_factor & (latent_factor - 1):
            raise ValueError(f"latent_factor must be a power of two, got {latent_factor}")
        stem: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        for _ in range(int(math.log2(latent_factor))):
            stem += [nn.Conv2d(channels[0], channels[0], 3, stride=2, padding=1), nn.SiLU()]
        self.stem = nn.Sequential(*stem)
        self.levels = nn.ModuleList()
        for i in range(levels):
            cin = channels[max(i - 1, 0)]
            stride = 1 if i == 0 else 2
            self.levels.append(
                nn.Sequential(
                    nn.Conv2d(cin, channels[i], 3, stride=stride, padding=1),
                    nn.SiLU(),
                    nn.Conv2d(channels[i], channels[i], 3, padding=1),
                    nn.SiLU(),
                )
            )
        self.residual_levels = [int(math.log2(s)) for _, s in residual_specs]
        self.outputs = nn.ModuleList(
            _zero_conv(channels[lv], ch) for lv, (ch, _) in zip(self.residual_levels, residual_specs, strict=True)
        )
        self.mid_level = int(math.log2(mid_spec[1]))
        self.mid_output = _zero_conv(channels[self.mid_level], mid_spec[0])

    def forward(self, track_maps: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """track_maps: (M, 3, H, W) -> ([ (M, C_i, h_i, w_i) ... ], (M, C_mid, h_mid, w_mid))."""
        x = self.stem(track_maps)
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        down = [conv(feats[lv]) for lv, conv in zip(self.residual_levels, self.outputs, strict=True)]
        return down, self.mid_output(feats[self.mid_level])


def gate_residuals(residuals: Sequence[torch.Tensor], gate: torch.Tensor) -> list[torch.Tensor]:
    """Multiply each (M, C, h, w) residual by ``gate`` (M, 1, H, W) area-pooled to (h, w)."""
    return [r * F.adaptive_avg_pool2d(gate, r.shape[-2:]).to(r.dtype) for r in residuals]
