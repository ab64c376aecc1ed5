"""Config helpers shared by the models, the config checks and the apps, and where the Hydra configs live."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def _conf_dir() -> str:
    """The folder holding ``train.yaml`` and the config groups.

    A wheel or a non-editable install carries them as package data in ``fgbg/conf/`` (copied there from the
    repository's top-level ``conf/`` by ``setup.py``'s ``build_py``); a source checkout or an editable install
    reads the repository's ``conf/`` itself, so edits there take effect without reinstalling.
    """
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "conf", package.parent / "conf"):
        if (folder / "train.yaml").is_file():
            return str(folder)
    raise FileNotFoundError(
        f"fgbg's configs are missing: neither {package / 'conf'} (installed package) nor {package.parent / 'conf'}"
        " (source checkout) holds train.yaml; reinstall fgbg (`pip install .` or `make install`)"
    )


CONF_DIR = _conf_dir()  # absolute path, for @hydra.main(config_path=...) and initialize_config_dir
ASSETS_DIR = str(Path(__file__).resolve().parents[1] / "assets")


def asset_path(name: str) -> str:
    """``${fgbg_asset:tiny_vae}`` in a config: the absolute path of ``fgbg/assets/<name>`` (installed or not)."""
    return str(Path(ASSETS_DIR) / str(name))


if not OmegaConf.has_resolver("fgbg_asset"):
    OmegaConf.register_new_resolver("fgbg_asset", asset_path)


def plain(value: Any) -> Any:
    """OmegaConf containers -> plain (resolved) dicts and lists; anything else unchanged."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def plain_dict(cfg: Mapping | None) -> dict[str, Any]:
    """A config mapping -> a plain dict (diffusers configs dislike ``DictConfig`` / ``ListConfig``); None -> {}."""
    return {} if cfg is None else dict(plain(cfg))


def missing_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys whose value is ``???`` (required, no default), found without resolving interpolations.

    (``OmegaConf.missing_keys`` resolves them, and one that points at a ``???`` raises instead of listing it.)
    """
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if value == "???":
                found.append(f"{prefix}{key}")
            walk(value, f"{prefix}{key}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return sorted(found)
