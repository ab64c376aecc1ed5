"""Memory levers on CPU: bf16-mixed autocast and UNet gradient checkpointing train 2 steps in-process."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from fgbg.train import CONF_DIR, train
from tests.test_model import build

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("synth")
    subprocess.run([sys.executable, "-m", "fgbg.synth", f"output={out}", "num_videos=4", "num_frames=8", "seed=0"],
                   check=True, capture_output=True, cwd=REPO)  # fmt: skip
    return str(sorted(out.glob("train-*.tar"))[0])


@pytest.mark.parametrize(
    ("precision", "checkpointing"), [("bf16-mixed", False), ("32-true", True), ("bf16-mixed", True)]
)
def test_precision_and_gradient_checkpointing_train_on_cpu(tmp_path, shard, precision, checkpointing):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=synthetic_tiny_image", "debug=default", f"data.train_shards={shard}", f"data.val_shards={shard}",
                       "data.resolution=32", f"trainer.precision={precision}",
                       f"callbacks.gradient_checkpointing.enabled={checkpointing}", "callbacks.sample_video.num_samples=1",
                       "extras.print_config=false"],
            return_hydra_config=True,
        )  # fmt: skip
        with open_dict(cfg):
            cfg.paths.output_dir = cfg.paths.log_dir = cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig().set_config(cfg)
        metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/skipped_steps"] == 0


def test_gradient_checkpointing_wraps_the_named_models_and_refuses_the_bank_reader():
    from fgbg.callbacks.gradient_checkpointing import GradientCheckpointing

    model = build()
    callback = GradientCheckpointing(enabled=True)
    callback.setup(None, model, "fit")
    assert callback.wrapped == ["referencenet.unet", "controlnet"]
    assert model.referencenet.unet.is_gradient_checkpointing and model.controlnet.is_gradient_checkpointing
    assert not model.denoiser.unet.is_gradient_checkpointing
    with pytest.raises(ValueError, match="denoiser.unet.*reads the ReferenceNet bank"):
        GradientCheckpointing(enabled=True, models=["denoiser.unet"]).setup(None, model, "fit")
