"""Config helpers for Lightning's ``FSDPStrategy`` (``conf/trainer/fsdp.yaml``)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.utils import get_class
from torch import nn
from torch.distributed.fsdp.wrap import CustomPolicy


def module_classes(paths: Sequence[str]) -> set[type]:
    """Dotted class paths -> the set of classes FSDP takes as a wrap / checkpointing policy.

    Lightning turns a set into ``ModuleWrapPolicy``: every instance of these classes becomes
    its own FSDP unit (its parameters gathered only while it runs).
    """
    if not paths:
        raise ValueError("trainer.strategy policy: give at least one module class path")
    classes = set()
    for path in paths:
        try:
            classes.add(get_class(path))
        except Exception as err:
            raise ValueError(f"trainer.strategy policy: cannot import module class {path!r}: {err}") from err
    return classes


def reads_reference_bank(module: nn.Module) -> bool:
    """Whether an attention processor inside ``module`` reads the ReferenceNet bank (the denoiser's spatial blocks)."""
    return any(getattr(getattr(m, "processor", None), "role", None) == "read" for m in module.modules())


def checkpointable_blocks(paths: Sequence[str]) -> CustomPolicy:
    """Activation-checkpointing policy: instances of ``paths`` classes that do not read the ReferenceNet bank.

    A bank reader cannot be recomputed in backward: the bank holds its tokens only during the
    forward pass (see ``fgbg.callbacks.gradient_checkpointing``), so those blocks keep their activations.
    """
    classes = tuple(module_classes(paths))
    return CustomPolicy(lambda module: isinstance(module, classes) and not reads_reference_bank(module))
