"""Serve the demo page: check the model, compose the generation defaults, launch Gradio."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fgbg.app.examples import EXAMPLES_DIR
from fgbg.app.request import Limits, PageSettings
from fgbg.utils.config import CONF_DIR

DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model.safetensors"


class AppConfigError(ValueError):
    """A page that cannot start; the message names the setting and what it expected."""


def resolve_model(ckpt_path: str | None) -> Path:
    """``ckpt_path`` (null = the bundled demo model) -> an existing model path, checked as a model."""
    from fgbg.generate import model_data_settings

    path = Path(ckpt_path) if ckpt_path else DEMO_MODEL
    if not path.exists():
        if ckpt_path:
            raise AppConfigError(
                f"ckpt_path={path}: no such file or folder (expected a model bundle .safetensors or a run folder)"
            )
        raise AppConfigError(
            f"no model at {path}: the bundled demo model is not there. Give ckpt_path=PATH to a model bundle "
            "(.safetensors; `python -m fgbg.models.bundle RUN_DIR OUT.safetensors` makes one) or a training run folder"
        )
    try:
        model_data_settings(str(path))  # refuses a file that is not a model, before serving anything
    except (ValueError, OSError) as err:
        raise AppConfigError(f"ckpt_path={path}: {err}") from None
    return path.resolve()


def compose_generate_config() -> DictConfig:
    """``conf/generate.yaml`` as ``fgbg-generate`` sees it, from inside ``@hydra.main`` or outside."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # under fgbg-app's @hydra.main: same config folder
        return compose("generate", overrides=["reference=unset"])
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("generate", overrides=["reference=unset"])


def page_settings(cfg: DictConfig) -> PageSettings:
    """``conf/app.yaml`` -> ``PageSettings`` (composes ``conf/generate.yaml`` with the app's settings)."""
    ckpt = resolve_model(cfg.ckpt_path)
    if cfg.max_frames < 1 or cfg.max_steps < 1:
        raise AppConfigError(f"max_frames={cfg.max_frames}, max_steps={cfg.max_steps}: both must be >= 1")
    base = compose_generate_config()
    base = OmegaConf.merge(base, cfg.generate)
    base.ckpt_path = str(ckpt)
    output_root = Path(cfg.output_root or Path(tempfile.gettempdir()) / "fgbg-app").resolve()
    output_root.mkdir(parents=True, exist_ok=True)
    limits = Limits(int(cfg.max_frames), int(cfg.max_steps), float(cfg.max_driving_seconds))
    return PageSettings(base, limits, output_root, int(cfg.default_frames), int(cfg.default_steps))


def serve(cfg: DictConfig) -> None:
    """Build the page and serve it until interrupted (one request at a time)."""
    settings = page_settings(cfg)  # the model is checked before Gradio is even imported
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine
    from fgbg.app.page import DRAW_CSS, DRAW_JS, THEME, build_page

    page = build_page(settings)
    page.queue(default_concurrency_limit=1)
    print(
        f"fgbg-app: {settings.base.ckpt_path} on http://{cfg.host}:{cfg.port}  (outputs under {settings.output_root})"
    )
    page.launch(
        server_name=cfg.host, server_port=int(cfg.port), share=False, inbrowser=False, show_error=False,
        allowed_paths=[str(settings.output_root), str(EXAMPLES_DIR)], max_file_size=f"{int(cfg.max_upload_mb)}mb",
        theme=THEME, js=DRAW_JS, css=DRAW_CSS,
    )  # fmt: skip


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="app.yaml")
def main(cfg: DictConfig) -> None:
    try:
        serve(cfg)
    except AppConfigError as err:
        sys.exit(f"fgbg-app: {err}")
    except ImportError as err:
        if err.name not in ("gradio", "playwright"):
            raise
        sys.exit(f"fgbg-app: {err}; install the page's dependencies with `pip install -e '.[app]'` (or `make app`)")


if __name__ == "__main__":
    main()
