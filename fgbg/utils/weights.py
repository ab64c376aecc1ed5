"""Loading weights from local files safely: safetensors or `weights_only` torch files, never code (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def require_file(path: str | Path | None, what: str, expected: str) -> Path:
    """``path`` as a Path if it is an existing file, else a FileNotFoundError naming it.

    what:     the option or role of the file, e.g. ``"FID Inception weights"``
    expected: what the file should be, e.g. ``"torchvision inception_v3 state dict"``
    """
    if path is None or str(path) == "":
        raise FileNotFoundError(f"{what}: no path given; expected {expected}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {str(path)!r}; expected {expected}")
    return path


def load_state_dict_file(path: str | Path | None, what: str, expected: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file loadable with ``weights_only=True``.

    A torch file holding ``{"state_dict": {...}}`` is unwrapped. Never unpickles code.
    """
    path = require_file(path, what, expected)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch raise several types for bad files
        raise ValueError(
            f"{what}: cannot read {str(path)!r} ({type(err).__name__}: {err}); expected {expected}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what}: {str(path)!r} is not a dict of tensors; expected {expected}")
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: str | Path) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error naming the file and the first key mismatches."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{what}: {str(path)!r} does not match {type(module).__name__}: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{what}: {str(path)!r} does not match {type(module).__name__}: "
            f"missing {result.missing_keys[:5]} ({len(result.missing_keys)} in all), "
            f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)} in all)"
        )
