"""Fully sharded data parallel (torch FSDP2, ``fully_shard``) for ``FgbgModule``, and full-tensor gathering.

Lightning's ``ModelParallelStrategy`` (``conf/trainer/fsdp.yaml``, ``fsdp_sim.yaml``) calls
``FgbgModule.configure_model``, which calls :func:`shard_model`. FSDP2 keeps every parameter as a
``DTensor`` sharded over the ranks (dim 0) and all-gathers a unit's parameters in that unit's forward
pre-hook, so only modules *called* through ``__call__`` may be units: the ReferenceNet, ControlNet,
track encoder, image encoder and denoiser are; the latent model is not (it is used through
``encode``/``decode``), nor the LightningModule itself (Lightning calls ``training_step``, not
``forward``). The latent model is frozen and stays whole on every rank. Inside the units, every
instance of ``block_classes`` (diffusers ``BasicTransformerBlock``: the UNets' attention blocks and the
AnimateDiff motion blocks) is its own unit, so at most one block's parameters are gathered at a time,
except the ReferenceNet's bank writers (see :func:`writes_reference_bank`): the ReferenceNet is gathered
whole while it runs (once per sample, at timestep 0).

Gradients of sharded parameters are reduce-scattered by FSDP; a trainable parameter outside every unit
would get no gradient synchronisation at all, so :func:`shard_model` refuses that.

Anything that reads parameters outside a forward pass (EMA, stage-weight files, bundles) uses
:func:`full_tensor` / :func:`full_state`, which all-gather: every rank must call them together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from hydra.utils import get_class
from torch import nn

UNITS = ("referencenet", "controlnet", "track_encoder", "image_encoder", "denoiser")
BLOCK_CLASSES = ("diffusers.models.attention.BasicTransformerBlock",)


def is_sharded(t: torch.Tensor) -> bool:
    """True for a ``DTensor`` (an FSDP2-sharded parameter or a tensor derived from one)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: all-gathered when ``t`` is a ``DTensor`` (collective: every rank calls it), else ``t``."""
    return t.full_tensor() if is_sharded(t) else t


def full_state(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: full tensor}`` of ``tensors`` (collective when any is sharded), detached."""
    return {k: full_tensor(v.detach()) for k, v in tensors.items()}


def like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``param``: sharded the same way when ``param`` is a ``DTensor`` (no communication)."""
    if not is_sharded(param):
        return full.to(param.device, param.dtype)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        full.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
    )


def writes_reference_bank(module: nn.Module) -> bool:
    """Whether an attention processor inside ``module`` writes the ReferenceNet bank.

    Such a block hands its normed input to the denoiser through the bank, a side channel: gradient flows
    back into its ``norm1`` without passing through the block's outputs, so FSDP2's pre-backward hook
    (registered on a unit's outputs) would not re-gather its parameters first. These blocks therefore stay
    in their parent unit (the ReferenceNet), whose returned bank tensors do carry the hook.
    """
    return any(getattr(getattr(m, "processor", None), "role", None) == "write" for m in module.modules())


def _classes(paths: Sequence[str]) -> tuple[type, ...]:
    out = []
    for path in paths:
        try:
            out.append(get_class(path))
        except Exception as err:
            raise ValueError(f"model.fsdp.block_classes: cannot import module class {path!r}: {err}") from err
    return tuple(out)


def shard_model(
    module: nn.Module,
    mesh,
    units: Iterable[str] = UNITS,
    block_classes: Sequence[str] = BLOCK_CLASSES,
    reshard_after_forward: bool = True,
    param_dtype: str | None = None,
    reduce_dtype: str | None = None,
) -> list[str]:
    """Apply ``fully_shard`` to the blocks, then to the top-level ``units`` of ``module``; returns the unit names.

    mesh: a 1-D ``DeviceMesh`` over the data-parallel ranks. ``reshard_after_forward=False`` keeps
    parameters gathered from forward to backward (ZeRO-2-like: less communication, more memory).
    ``param_dtype`` / ``reduce_dtype`` (``bfloat16`` | ``float32`` | null): FSDP2's mixed-precision policy
    (parameters all-gathered and computed in ``param_dtype``, gradients reduced in ``reduce_dtype``).
    Raises when a trainable parameter would end up outside every unit.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {None: None, "bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
    for key, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
        if value not in dtypes:
            raise ValueError(f"model.fsdp.{key}={value!r}: expected one of {list(dtypes)}")
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype or reduce_dtype:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtypes[param_dtype], reduce_dtype=dtypes[reduce_dtype])
    classes = _classes(block_classes)
    done = []
    for unit in units:
        child = getattr(module, unit, None)
        if child is None:
            raise ValueError(f"model.fsdp.units: the model has no submodule {unit!r}")
        if not any(True for _ in child.parameters()):
            continue
        for name, sub in child.named_modules():
            if name and classes and isinstance(sub, classes) and not writes_reference_bank(sub):
                fully_shard(sub, **kwargs)
                done.append(f"{unit}.{name}")
        fully_shard(child, **kwargs)
        done.append(unit)
    loose = [n for n, p in module.named_parameters() if p.requires_grad and not is_sharded(p)]
    if loose:
        raise ValueError(
            f"FSDP: {len(loose)} trainable parameters are outside every sharded unit and would get no gradient "
            f"synchronisation (e.g. {loose[:3]}); add their top-level module to model.fsdp.units"
        )
    return done


def any_rank(flag: torch.Tensor, strategy=None) -> bool:
    """True on every rank when the 0-d ``flag`` is non-zero on at least one: one all-reduce (max) through the
    Lightning ``strategy`` when given, else ``torch.distributed`` when initialised, else the local value."""
    flag = flag.detach().float()
    if strategy is not None:
        flag = strategy.reduce(flag, reduce_op="max")
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag > 0)


def data_parallel_mesh(device: torch.device):
    """A 1-D ``DeviceMesh`` named ``fsdp`` over all ranks (collective: every rank calls it)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (torch.distributed.get_world_size(),), mesh_dim_names=("fsdp",))
