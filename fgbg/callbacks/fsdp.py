"""Config helpers for Lightning's ``FSDPStrategy`` (``conf/trainer/fsdp.yaml``)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.utils import get_class


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
