"""Inference bundles: one safetensors file that holds a trained model for generation.

A bundle carries the weights both training stages learn (stage ``image``:
ReferenceNet, denoiser spatial layers, ControlNet, track encoder, image-encoder
parts; stage ``video``: motion modules) and, in its metadata, the model config
and the data settings the model was trained with (resolution, clip length and
the renderers' settings, so conditions at generation time are drawn exactly as
in training). Frozen pretrained parts (a VAE, a CLIP backbone) are not copied:
the config names their local folders.

    python -m fgbg.models.bundle RUN_DIR OUT.safetensors [--raw] [--half] [--generation hint_anchor=1.0]

makes a bundle from a training run folder (its ``.hydra/config.yaml`` and
``checkpoints/{stage}[_ema].safetensors``; a stage-``video`` run takes its
stage-``image`` weights from ``model.init_from``). A small VAE (the tiny latent model's, at most
``EMBED_LATENT_MAX_PARAMS``) is the exception: when its weights are the VAE shipped in ``fgbg/assets``
(``tiny_vae``) the bundle names that asset and records its weights' SHA-256, which loading checks (a retrained
asset cannot silently decode an old bundle's latents); any other small VAE is embedded, so the bundle stands
alone (``--embed-vae`` embeds the shipped one too). ``--generation KEY=VALUE`` records sampling settings
the bundle recommends (the link options and ``hint_anchor``): ``fgbg-generate``/``fgbg-evaluate`` and the demo
page use them where the config leaves the key null (``hint_anchor`` is null by default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

from fgbg.models.checkpoint import copy_exact

FORMAT = "fgbg-bundle-1"
DATA_KEYS = (
    "resolution", "clip_len", "max_tracks", "min_tracks", "pose_line_scale", "pose_conf_threshold",
    "track_sigma", "body_limb_scale",
)  # fmt: skip


@dataclass
class BundleInfo:
    """What a bundle says about its model besides the weights."""

    path: str
    model_config: DictConfig
    data: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    latent: dict[str, Any] = field(default_factory=dict)  # {asset, sha256} when the bundle names a shipped VAE


EMBED_LATENT_MAX_PARAMS = 20_000_000  # a VAE this small travels inside the bundle (SD-1.5's, 84 M, does not)


def bundle_names(module) -> set[str]:
    """Parameter names a bundle holds: what either stage trains."""
    return module.trainable_names("image") | module.trainable_names("video")


def embedded_latent_names(module) -> set[str]:
    """The frozen VAE's parameter names when it is small enough to travel in the bundle (the tiny latent model's).

    Such a bundle is self-contained: its config builds the VAE from the embedded ``config`` instead of
    naming a folder, and the weights come from the bundle.
    """
    from fgbg.models.latent import VAELatent

    if not isinstance(getattr(module, "latent", None), VAELatent):
        return set()
    params = {n: p for n, p in module.named_parameters() if n.startswith("latent.")}
    return set(params) if sum(p.numel() for p in params.values()) <= EMBED_LATENT_MAX_PARAMS else set()


# fgbg/assets folders a bundle may name instead of embedding the VAE: the tiny latent models' 8-channel VAE, its
# 16-channel twin (conf/model/tiny_vae.yaml with model.config.latent_channels=16) and the 16-channel AutoencoderDC
# (conf/model/tiny_vae_dc.yaml)
SHIPPED_VAES = ("tiny_vae", "tiny_vae_c16", "tiny_vae_dc")


def latent_digest(vae: torch.nn.Module) -> str:
    """SHA-256 of a frozen VAE's weights as float32 (names, shapes and values, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(vae.state_dict().items()):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def shipped_latent_asset(module) -> dict[str, str] | None:
    """``{asset, sha256}`` of the ``fgbg/assets`` VAE (a name of ``SHIPPED_VAES``) whose weights ``module``'s
    frozen VAE holds, or None."""
    from fgbg.models.latent import VAELatent, load_autoencoder
    from fgbg.utils.config import asset_path

    if not isinstance(getattr(module, "latent", None), VAELatent):
        return None
    own = latent_digest(module.latent.vae)
    for name in SHIPPED_VAES:
        folder = asset_path(name)
        if os.path.isdir(folder) and latent_digest(load_autoencoder(folder, f"fgbg/assets/{name}")) == own:
            return {"asset": name, "sha256": own}
    return None


def bundle_keys(module, f) -> set[str]:
    """The names an open bundle file ``f`` must hold for ``module``: :func:`bundle_names`, plus the VAE's
    when the file embeds one (older bundles and SD-sized ones do not)."""
    embedded = any(k.startswith("latent.") for k in f.keys())
    return bundle_names(module) | (embedded_latent_names(module) if embedded else set())


def _model_config_for_inference(model_cfg: DictConfig) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    cfg.stage = "video"
    cfg.init_from = None
    for key in ("optimizer", "lr_scheduler"):
        cfg.pop(key, None)
    return cfg


def save_bundle(
    module,
    path: str | os.PathLike,
    model_cfg: DictConfig,
    data_cfg: DictConfig | dict,
    half: bool = False,
    extra: dict[str, Any] | None = None,
    embed_vae: bool = False,
) -> Path:
    """Write ``module``'s bundle weights plus configs to ``path`` (atomically).

    A small frozen VAE is embedded unless its weights are a shipped asset's (``shipped_latent_asset``; the
    bundle then names the asset and its digest); ``embed_vae`` embeds it regardless.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    latent_names = embedded_latent_names(module)
    shipped = shipped_latent_asset(module) if latent_names and not embed_vae else None
    if shipped:
        latent_names = set()
    names = bundle_names(module) | latent_names
    dtype = torch.float16 if half else torch.float32
    tensors = {n: p.detach().to("cpu", dtype).contiguous() for n, p in module.named_parameters() if n in names}
    inference_cfg = _model_config_for_inference(model_cfg)
    if shipped:  # the installed asset, checked against its digest when the bundle loads
        inference_cfg.latent.pretrained = "${fgbg_asset:" + shipped["asset"] + "}"
        inference_cfg.latent.subfolder = None
        inference_cfg.latent.pop("config", None)
    elif latent_names:  # built from the embedded config, weights from the bundle: no folder needed to load it
        vae_config = {k: v for k, v in dict(module.latent.vae.config).items() if not k.startswith("_")}
        inference_cfg.latent.pretrained = None
        inference_cfg.latent.config = OmegaConf.create(json.loads(json.dumps(vae_config)))
    data = {k: (OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else data_cfg).get(k)
            for k in DATA_KEYS}  # fmt: skip
    meta = {
        "format": FORMAT,
        "model_config": OmegaConf.to_yaml(inference_cfg),
        "data": json.dumps(data),
        "extra": json.dumps(extra or {}),
    }
    if shipped:
        meta["latent"] = json.dumps(shipped)
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_bundle_info(path: str | os.PathLike) -> BundleInfo:
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"model bundle {path!r} does not exist (expected a .safetensors bundle or a run folder)"
        )
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a safetensors file ({err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an fgbg model bundle (metadata format={meta.get('format')!r}, expected {FORMAT!r});"
            " make one with `python -m fgbg.models.bundle RUN_DIR OUT.safetensors`"
        )
    return BundleInfo(path, OmegaConf.create(meta["model_config"]), json.loads(meta["data"]), json.loads(meta["extra"]),
                      json.loads(meta.get("latent", "{}")))  # fmt: skip


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, BundleInfo]:
    """Build the bundle's model from its config and load its weights strictly; eval mode."""
    info = read_bundle_info(path)
    module = hydra.utils.instantiate(info.model_config)
    installed = latent_digest(module.latent.vae) if info.latent.get("sha256") else None
    if installed and installed != info.latent["sha256"]:
        raise ValueError(
            f"{info.path} was made with the VAE fgbg/assets/{info.latent.get('asset')} whose weights hash "
            f"{info.latent['sha256'][:16]}..., but the installed one hashes {installed[:16]}... (the asset "
            "was retrained since); use the fgbg version the bundle was made with, or re-bundle it from its run "
            "with --embed-vae"
        )
    with safe_open(info.path, framework="pt") as f:
        copy_exact(module, f, bundle_keys(module, f), f"{info.path}: weights do not match the model its config builds")
    return module.to(device).eval(), info


def load_run(run_dir: str | os.PathLike, ema: bool = True) -> tuple[torch.nn.Module, DictConfig]:
    """A training run folder -> its model with the latest stage weights loaded, and its full config."""
    from fgbg.models.checkpoint import load_stage_weights

    run = Path(run_dir)
    cfg_path = run / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run} is not a training run folder: {cfg_path} is missing")
    cfg = OmegaConf.load(cfg_path)
    stage = cfg.model.stage
    weights = run / "checkpoints" / f"{stage}{'_ema' if ema else ''}.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{run}: no stage weights at {weights}")
    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    model_cfg.pop("optimizer", None)
    model_cfg.pop("lr_scheduler", None)
    module = hydra.utils.instantiate(model_cfg)
    load_stage_weights(module, str(weights))
    return module.eval(), cfg


def swap_decoder(module, folder: str) -> str:
    """Give ``module`` the VAE in ``folder`` (a larger decoder trained for the frozen encoder of the VAE the model
    was trained on: ``experiment=synthetic_tiny_vae_decoder``, ``model.encoder_from``); returns its ``latent_digest``.

    Its encoder, ``quant_conv`` and scaling factor must equal the model's: the latents the model learned are the
    same, only their decoding changes. Anything else raises ``ValueError`` naming what differs.
    """
    from fgbg.models.latent import VAELatent, load_autoencoder
    from fgbg.models.vae import encoder_state

    if not isinstance(getattr(module, "latent", None), VAELatent):
        raise ValueError(f"--decoder {folder}: the model works in pixel space (no VAE to give a new decoder)")
    new = load_autoencoder(folder, "--decoder")
    old_state, new_state = encoder_state(module.latent.vae), encoder_state(new)
    same = old_state.keys() == new_state.keys() and all(
        old_state[k].shape == new_state[k].shape and torch.equal(old_state[k].float(), new_state[k].float())
        for k in old_state
    )
    if not same:
        raise ValueError(
            f"--decoder {folder}: its encoder is not the one the model was trained on (a decoder for this model is "
            "trained with model.encoder_from=<the model's VAE>); its latents would be decoded wrongly"
        )
    if float(new.config.scaling_factor) != float(module.latent.scaling_factor):
        raise ValueError(
            f"--decoder {folder}: scaling_factor {new.config.scaling_factor} differs from the model's "
            f"{module.latent.scaling_factor} (the same encoder keeps its factor)"
        )
    module.latent.vae = new.requires_grad_(False).eval()
    return latent_digest(new)


def bundle_from_run(
    run_dir,
    out,
    ema: bool = True,
    half: bool = False,
    extra: dict | None = None,
    embed_vae: bool = False,
    decoder: str | None = None,
) -> Path:
    module, cfg = load_run(run_dir, ema)
    info = {"run": str(run_dir), "stage": cfg.model.stage, "ema": ema} | dict(extra or {})
    if decoder:
        info["decoder"] = {"folder": str(decoder), "sha256": swap_decoder(module, decoder)}
    return save_bundle(module, out, cfg.model, cfg.data, half=half, extra=info, embed_vae=embed_vae)


def recommended_generation(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> the sampling settings a bundle recommends (its ``generation`` metadata), checked:
    the keys of ``fgbg.models.module.SAMPLE_DEFAULTS`` (the link options, ``hint_anchor`` and ``anchor_finish``)."""
    from fgbg.models.module import SAMPLE_DEFAULTS, check_hint_anchor, check_link_options

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in SAMPLE_DEFAULTS:
            raise ValueError(f"--generation {pair!r}: expected KEY=VALUE with KEY one of {sorted(SAMPLE_DEFAULTS)}")
        out[key] = yaml.safe_load(value)
    options = SAMPLE_DEFAULTS | out
    check_link_options(options["link_mode"], options["link_noise"], options["link_init_weight"])
    check_hint_anchor(options["hint_anchor"], options["anchor_finish"])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="training run folder (holds .hydra/config.yaml and checkpoints/)")
    p.add_argument("out", help="bundle to write (.safetensors)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--half", action="store_true", help="store float16 (half the size; loaded back as float32)")
    p.add_argument("--generation", nargs="*", default=[], metavar="KEY=VALUE",
                   help="sampling settings the bundle recommends (fgbg-generate/evaluate use them where the key is "
                        "left null), e.g. hint_anchor=1.0")  # fmt: skip
    p.add_argument("--decoder", metavar="VAE_FOLDER",
                   help="decode with this VAE instead of the run's: same encoder, a decoder trained for it "
                        "(fgbg-train experiment=synthetic_tiny_vae_decoder writes one to <run>/vae)")  # fmt: skip
    p.add_argument("--embed-vae", action="store_true",
                   help="embed a small VAE even when it is the one shipped in fgbg/assets (a self-contained file)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        generation = recommended_generation(args.generation)
    except ValueError as err:
        p.error(str(err))
    extra = {"generation": generation} if generation else None
    try:
        path = bundle_from_run(args.run_dir, args.out, ema=not args.raw, half=args.half, extra=extra,
                               embed_vae=args.embed_vae, decoder=args.decoder)  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
