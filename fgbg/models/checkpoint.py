"""Stage weights as safetensors: exactly the parameters a stage trains, written atomically.

File layout: tensors keyed by full parameter name of ``FgbgModule`` (e.g.
``denoiser.unet.conv_in.weight``); metadata ``{"stage", "step", "format": "fgbg-stage-weights-1"}``.
Loading is strict: the file's keys must equal the stage's trainable set exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "fgbg-stage-weights-1"


def save_stage_weights(tensors: Mapping[str, torch.Tensor], path: str, stage: str, step: int = 0) -> None:
    """Write ``tensors`` to ``path`` (temp file then rename, so a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    data = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    save_file(data, tmp, metadata={"stage": stage, "step": str(step), "format": FORMAT})
    os.replace(tmp, path)


def stage_state(module, stage: str | None = None) -> dict[str, torch.Tensor]:
    """The parameters ``stage`` trains, by full name."""
    names = module.trainable_names(stage)
    return {n: p for n, p in module.named_parameters() if n in names}


def copy_exact(module, f, expected: set[str], what: str, adapt=None) -> None:
    """Copy every tensor of the open safetensors file ``f`` into ``module``'s parameters.

    The file's keys must equal ``expected`` exactly and every shape must match; otherwise a
    ``ValueError`` starting with ``what`` lists a few missing / unexpected names or the shape.
    Tensors are cast to the parameter's dtype (bundles may store float16). ``adapt(name, tensor, shape)``, when
    given, may first turn a tensor of another shape into one of ``shape`` (``model.init_from`` only).
    """
    keys = set(f.keys())
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise ValueError(
            f"{what}: {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    params = dict(module.named_parameters())
    with torch.no_grad():
        for k in sorted(keys):
            t = f.get_tensor(k)
            if adapt is not None and t.shape != params[k].shape:
                t = adapt(k, t, params[k].shape)
            if t.shape != params[k].shape:
                raise ValueError(f"{what}: {k} has shape {tuple(t.shape)}, the model expects {tuple(params[k].shape)}")
            params[k].copy_(t.to(params[k].dtype))


def load_init_weights(module, path: str) -> str:
    """``model.init_from``: stage weights (returns their stage) or a model bundle (returns ``"bundle"``).

    A bundle (``python -m fgbg.models.bundle``) carries what both stages train, so a run started
    from one fine-tunes a trained model (e.g. the demo model on one's own videos) with the other
    stage's weights kept: a stage-image run keeps the bundle's motion modules. Strict either way, except that
    weights made without ``model.link_augment`` start a model with it (``FgbgModule.adapt_init_tensor``: the
    level channel's ``conv_in`` column starts at zero). A bundle's embedded VAE (the tiny latent model's) is
    copied into the model's frozen VAE, so a fine-tune encodes with exactly the bundle's latent space.
    """
    from fgbg.models.bundle import FORMAT as BUNDLE_FORMAT
    from fgbg.models.bundle import bundle_keys

    if os.path.isfile(path):
        with safe_open(path, framework="pt") as f:
            if (f.metadata() or {}).get("format") == BUNDLE_FORMAT:
                what = f"model.init_from={path}: bundle does not match this model"
                copy_exact(module, f, bundle_keys(module, f), what, getattr(module, "adapt_init_tensor", None))
                return "bundle"
    return load_stage_weights(module, path, getattr(module, "adapt_init_tensor", None))


def load_stage_weights(module, path: str, adapt=None) -> str:
    """Copy the stage weights in ``path`` into ``module``; returns the stage they belong to.

    Raises naming the file when it is missing, not stage weights, or its keys differ
    from the stage's trainable set (listing a few missing/unexpected names) or shapes differ.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"model.init_from={path!r}: no such file (expected stage weights or a model bundle, .safetensors)"
        )
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("stage") not in ("image", "video"):
            raise ValueError(f"{path}: not fgbg stage weights (metadata {meta}; expected format {FORMAT})")
        stage = meta["stage"]
        what = f"{path}: stage {stage!r} weights do not match this model"
        copy_exact(module, f, module.trainable_names(stage), what, adapt)
    return stage
