"""Checks of a composed config that run before any data, model or trainer is built.

Each problem names the config key, its value and what is allowed; all problems are reported together
in one :class:`ConfigError` so a bad sweep entry fails in seconds instead of after hours of compute.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fgbg.datamodules.clips import expand_shards
from fgbg.utils.config import missing_keys, plain

TRAIN_EXTRAS = ("ignore_warnings", "print_config")  # conf/extras/default.yaml, applied by fgbg.train.apply_extras


class ConfigError(ValueError):
    """One or more config values are out of range; the message lists each as ``key=value: allowed``."""


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_autoencoder(model_cfg: DictConfig) -> bool:
    """``model=tiny_vae`` (:class:`fgbg.models.vae.VAEModule`): none of the dual-motion model's keys apply."""
    return str(_get(model_cfg, "_target_", "")).endswith("VAEModule")


def _vae_blocks(config) -> list | None:
    """A VAE config's encoder block sizes (one downsampling per block but the last), in any class fgbg loads:
    ``encoder_block_out_channels`` (``AutoencoderDC``), ``down_block_out_channels`` (asymmetric) or
    ``block_out_channels``."""
    for key in ("encoder_block_out_channels", "down_block_out_channels", "block_out_channels"):
        value = config.get(key) if config is not None else None
        if value:
            return list(value)
    return None


def _folder_vae_blocks(model_cfg: DictConfig) -> list:
    """The VAE folder's encoder block sizes (``latent.pretrained[/subfolder]/config.json``), else SD's."""
    try:
        folder = _get(model_cfg, "latent.pretrained")
        sub = _get(model_cfg, "latent.subfolder")
        path = os.path.join(str(folder), str(sub), "config.json") if sub else os.path.join(str(folder), "config.json")
        with open(path) as f:
            return _vae_blocks(json.load(f)) or [128, 256, 512, 512]
    except Exception:  # no folder (yet), an unresolved interpolation, or no such key: Stable Diffusion's VAE
        return [128, 256, 512, 512]


def spatial_factor(model_cfg: DictConfig) -> int:
    """Pixels per UNet bottleneck cell: ``2**(len(unet blocks) - 1)`` times the latent's downsampling.

    ``IdentityLatent`` keeps pixels (factor 1); ``VAELatent`` downsamples by ``2**(len(vae blocks) - 1)``,
    the encoder's blocks from ``latent.config`` or the VAE folder's ``config.json`` (8, Stable Diffusion's, when
    neither).
    """
    if is_autoencoder(model_cfg):  # experiment=synthetic_tiny_vae: the autoencoder's own downsampling
        return 2 ** (len(_vae_blocks(_get(model_cfg, "config")) or [128, 256, 512, 512]) - 1)
    unet_blocks = _get(model_cfg, "unet.config.block_out_channels") or [320, 640, 1280, 1280]
    factor = 2 ** (len(unet_blocks) - 1)
    if str(_get(model_cfg, "latent._target_", "")).endswith("VAELatent"):
        vae_blocks = _vae_blocks(_get(model_cfg, "latent.config")) or _folder_vae_blocks(model_cfg)
        factor *= 2 ** (len(vae_blocks) - 1)
    return factor


def _model_problems(model: DictConfig, clip_len: Any) -> list[str]:
    """The dual-motion model's own checks (see :func:`check_train_config`)."""
    problems: list[str] = []
    max_len = _get(model, "motion_adapter.config.motion_max_seq_length")
    if (
        isinstance(clip_len, int)
        and _get(model, "stage") == "video"
        and isinstance(max_len, int)
        and clip_len > max_len
    ):
        problems.append(
            f"data.clip_len={clip_len}: stage video allows at most "
            f"model.motion_adapter.config.motion_max_seq_length={max_len} frames"
        )

    dropout = plain(_get(model, "cfg_dropout")) or {}
    if not isinstance(dropout, Mapping):
        problems.append(f"model.cfg_dropout={dropout!r}: expected a mapping condition -> rate in [0, 1]")
    else:
        for name, rate in dropout.items():
            if not (_number(rate) and 0 <= rate <= 1):
                problems.append(f"model.cfg_dropout.{name}={rate!r}: expected a rate in [0, 1]")

    kind = _get(model, "noise_scheduler.prediction_type")
    if kind == "epsilon" and _get(model, "noise_scheduler.rescale_betas_zero_snr", False):
        problems.append(
            "model.noise_scheduler.prediction_type='epsilon' with model.noise_scheduler.rescale_betas_zero_snr=true: "
            "expected v_prediction or sample (at zero terminal SNR the last timestep's input is pure noise, so an "
            "epsilon model only learns to copy it, and the sampler's first step x0 = (x_t - sigma * eps) / alpha "
            "divides by alpha = 0: DDIM returns NaN)"
        )

    link_prob = _get(model, "link_prob", 0.0)
    if not (_number(link_prob) and 0 <= link_prob <= 1):
        problems.append(f"model.link_prob={link_prob!r}: expected a probability in [0, 1]")

    problems += _link_augment_problems(model)

    kp_drop = _get(model, "reference_keypoints_dropout", 0.0)
    if not (_number(kp_drop) and 0 <= kp_drop <= 1):
        problems.append(f"model.reference_keypoints_dropout={kp_drop!r}: expected a rate in [0, 1]")
    kp_jitter = _get(model, "reference_keypoints_jitter", 0.0)
    if not (_number(kp_jitter) and 0 <= kp_jitter < 1):
        problems.append(
            f"model.reference_keypoints_jitter={kp_jitter!r}: expected a standard deviation in frame sides, in [0, 1)"
        )
    return problems


def check_train_config(cfg: DictConfig, check_paths: bool = True) -> None:
    """Validate the ``fgbg-train`` config (``conf/train.yaml``); raises :class:`ConfigError`.

    Checks: no required value (``???``) left unset; ``data.resolution`` divisible by :func:`spatial_factor`; ``1 <= data.clip_len`` and, in stage
    video, ``<= model.motion_adapter.config.motion_max_seq_length``; ``1 <= data.min_tracks <=
    data.max_tracks``; ``model.cfg_dropout.*``, ``model.link_prob`` and ``model.reference_keypoints_dropout``
    in [0, 1]; ``model.reference_keypoints_jitter`` in [0, 1); ``model.link_augment`` null or {prob in [0, 1], max_t in (0, 1]}; ``model.video_trainable`` a
    list of strings; no epsilon prediction with ``rescale_betas_zero_snr`` (see ``fgbg.models.module.min_snr_weights``); ``extras`` keys among
    :data:`TRAIN_EXTRAS`, each true or false; with ``check_paths``,
    ``data.train_shards`` / ``data.val_shards`` expand to existing files. For ``model=tiny_vae`` (an
    autoencoder, ``experiment=synthetic_tiny_vae``) the model checks are skipped: none of their keys exist.
    """
    problems: list[str] = [
        f"{key}=???: required, no default (e.g. a local weights folder for model=fgbg_sd15, docs/configs.md)"
        for key in missing_keys(cfg)
        if not key.startswith("hydra.")  # Hydra's own run-time node, when composed with it
    ]
    data, model = cfg.data, cfg.model

    resolution, factor = _get(data, "resolution"), spatial_factor(model)
    if not isinstance(resolution, int) or resolution <= 0 or resolution % factor:
        problems.append(
            f"data.resolution={resolution!r}: expected a positive multiple of {factor} "
            + ("(the autoencoder's downsampling)" if is_autoencoder(model) else
               f"(UNet downsampling x latent factor of model {_get(model, 'unet.config.block_out_channels')})")
        )  # fmt: skip

    clip_len = _get(data, "clip_len")
    if not isinstance(clip_len, int) or clip_len < 1:
        problems.append(f"data.clip_len={clip_len!r}: expected an integer >= 1")
    lo, hi = _get(data, "min_tracks"), _get(data, "max_tracks")
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        problems.append(f"data.min_tracks={lo!r}, data.max_tracks={hi!r}: expected integers with 1 <= min <= max")
    if not is_autoencoder(model):
        problems += _model_problems(model, clip_len)

    for key, value in (plain(cfg.get("extras")) or {}).items():
        if key not in TRAIN_EXTRAS:
            problems.append(f"extras.{key}={value!r}: unknown; fgbg-train reads {', '.join(TRAIN_EXTRAS)}")
        elif not isinstance(value, bool):
            problems.append(f"extras.{key}={value!r}: expected true or false")

    if check_paths and cfg.get("train", True):
        for key in ("train_shards", "val_shards"):
            shards = plain(_get(data, key))
            if shards is None:
                if key == "train_shards":
                    problems.append("data.train_shards=None: expected a brace pattern or a list of existing .tar files")
                continue
            try:
                expand_shards(shards)
            except (FileNotFoundError, ValueError) as err:
                problems.append(f"data.{key}: {err}")

    if problems:
        raise ConfigError("invalid fgbg-train config:\n  " + "\n  ".join(problems))


def _link_augment_problems(model: DictConfig) -> list[str]:
    """``model.link_augment`` (null or {prob in [0, 1], max_t in (0, 1]}) and ``model.video_trainable`` (a list
    of parameter name patterns; whether each matches a denoiser parameter is checked when the model is built)."""
    problems = []
    augment = plain(_get(model, "link_augment"))
    if augment is not None and not isinstance(augment, Mapping):
        problems.append(f"model.link_augment={augment!r}: expected null or a mapping {{prob, max_t}}")
    elif augment is not None:
        for key in sorted(set(augment) - {"prob", "max_t"}):
            problems.append(f"model.link_augment.{key}: unknown key; expected prob and max_t")
        prob, max_t = augment.get("prob", 0.5), augment.get("max_t", 0.3)
        if not (_number(prob) and 0 <= prob <= 1):
            problems.append(f"model.link_augment.prob={prob!r}: expected a probability in [0, 1]")
        if not (_number(max_t) and 0 < max_t <= 1):
            problems.append(f"model.link_augment.max_t={max_t!r}: expected a fraction of the schedule in (0, 1]")
    patterns = plain(_get(model, "video_trainable"))
    if patterns is not None and not (isinstance(patterns, list) and all(isinstance(p, str) for p in patterns)):
        problems.append(f"model.video_trainable={patterns!r}: expected a list of parameter name patterns")
    return problems


def check_generate_config(cfg: DictConfig) -> None:
    """Validate the ``fgbg-generate`` config: every ``guidance.*`` scale is a finite number >= 0; ``link_mode``
    one of channels, noise_init, both; ``link_noise``, ``link_init_weight`` and ``hint_anchor`` in [0, 1];
    ``anchor_finish`` null or one of blend, latent, pixel."""
    guidance = plain(cfg.get("guidance")) or {}
    problems = [
        f"guidance.{name}={scale!r}: expected a classifier-free guidance scale >= 0"
        for name, scale in (guidance.items() if isinstance(guidance, Mapping) else [("", guidance)])
        if not (_number(scale) and scale >= 0)
    ]
    mode = cfg.get("link_mode", "channels")
    if mode not in ("channels", "noise_init", "both"):
        problems.append(f"link_mode={mode!r}: expected channels, noise_init or both")
    for key, what in (("link_noise", "a fraction of the diffusion schedule"), ("link_init_weight", "a weight"),
                      ("hint_anchor", "a fraction of the sampling steps")):  # fmt: skip
        value = cfg.get(key, 0.0)
        if value is None and key == "hint_anchor":  # null: the model bundle's recommendation
            continue
        if not (_number(value) and 0 <= value <= 1):
            problems.append(f"{key}={value!r}: expected {what} in [0, 1]")
    finish = cfg.get("anchor_finish")
    if finish is not None and finish not in ("blend", "latent", "pixel"):  # null: the model bundle's recommendation
        problems.append(f"anchor_finish={finish!r}: expected blend, latent or pixel")
    if problems:
        raise ConfigError("invalid fgbg-generate config:\n  " + "\n  ".join(problems))
