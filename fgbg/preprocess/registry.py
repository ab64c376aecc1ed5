"""The one lookup shared by the backend registries (pose, masks, tracks)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig


def build_backend(registry: Mapping[str, Callable[[DictConfig], Any]], cfg: DictConfig, group: str) -> Any:
    """``cfg`` is the group's node: ``cfg.name`` picks the backend, ``cfg[name]`` holds its options."""
    if cfg.name not in registry:
        raise ValueError(f"{group}.name must be one of {sorted(registry)}, got {cfg.name!r}")
    return registry[cfg.name](cfg)
