"""Memory levers on CPU: bf16-mixed, UNet gradient checkpointing, channels-last train 2 steps in-process; 8-bit AdamW fails clearly."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from fgbg.train import train
from tests.conftest import train_config
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
    cfg = compose_debug(tmp_path, shard, [f"trainer.precision={precision}",
                                          f"callbacks.gradient_checkpointing.enabled={checkpointing}"])  # fmt: skip
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/skipped_steps"] == 0


def test_gradient_checkpointing_wraps_the_named_models_and_refuses_a_non_diffusers_path():
    from fgbg.callbacks.gradient_checkpointing import GradientCheckpointing

    model = build()
    callback = GradientCheckpointing(enabled=True)
    callback.setup(None, model, "fit")
    assert callback.wrapped == ["referencenet.unet", "controlnet", "denoiser.unet"]
    assert all(m.is_gradient_checkpointing for m in (model.referencenet.unet, model.controlnet, model.denoiser.unet))
    with pytest.raises(ValueError, match="'track_encoder' is TrackEncoder"):
        GradientCheckpointing(enabled=True, models=["track_encoder"]).setup(None, model, "fit")


@pytest.mark.parametrize("stage", ["image", "video"])
def test_gradients_with_checkpointing_equal_those_without(stage):
    """ReferenceNet, ControlNet and the bank-reading denoiser recomputed in backward: same loss and gradients (1e-5),
    with one sample's reference dropped so both halves of the bank attention run."""
    from fgbg.callbacks.gradient_checkpointing import GradientCheckpointing
    from tests.test_model import random_batch

    def grads(checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = build(stage=stage, **{"cfg_dropout.reference": 0.5})
        model.train()
        GradientCheckpointing(enabled=checkpointing).setup(None, model, "fit")
        torch.manual_seed(1)
        batch = random_batch(b=2, t=3)
        loss = model.compute_loss(batch, generator=torch.Generator().manual_seed(4))["loss"]
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (loss0, g0), (loss1, g1) = grads(False), grads(True)
    assert g0.keys() == g1.keys() and any(n.startswith("denoiser.") for n in g0)
    worst = max(float((g0[n] - g1[n]).abs().max()) for n in g0)
    print(f"stage {stage}: loss {loss0:.6f} vs {loss1:.6f}; max |grad diff| {worst:.3g}")
    assert loss0 == pytest.approx(loss1, abs=1e-6) and worst <= 1e-5


def compose_debug(tmp_path, shard: str, overrides: list[str]):
    """The debug training config (2 steps on CPU) on ``shard``, with its run folder in ``tmp_path``."""
    return train_config(tmp_path, [
        "experiment=synthetic_tiny_image", "debug=default", f"data.train_shards={shard}", f"data.val_shards={shard}",
        "data.resolution=32", "callbacks.sample_video.num_samples=1", "extras.print_config=false", *overrides,
    ])  # fmt: skip


FORMATS: dict[str, bool] = {}


class ConvFormatProbe(L.Callback):
    """Records, after training, whether each conv weight of the UNets and ControlNet is channels_last."""

    def on_train_end(self, trainer, pl_module) -> None:
        FORMATS.clear()
        for prefix in ("denoiser.unet", "referencenet.unet", "controlnet"):
            for name, p in pl_module.get_submodule(prefix).named_parameters():
                if p.dim() == 4 and p.shape[2:] != (1, 1):  # 1x1 kernels are both formats at once
                    FORMATS[f"{prefix}.{name}"] = p.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_trains_on_cpu_and_keeps_the_conv_weights_channels_last(tmp_path, shard):
    cfg = compose_debug(tmp_path, shard, ["callbacks.channels_last.enabled=true",
                                          f"+callbacks.probe._target_={__name__}.ConvFormatProbe"])  # fmt: skip
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/skipped_steps"] == 0
    assert len(FORMATS) > 20 and all(FORMATS.values()), [n for n, ok in FORMATS.items() if not ok]


def test_channels_last_names_a_wrong_model_path():
    from fgbg.callbacks.memory_format import ChannelsLast

    with pytest.raises(ValueError, match=r"callbacks.channels_last.models: 'denoiser.vae' is not a submodule"):
        ChannelsLast(enabled=True, models=["denoiser.vae"]).setup(None, build(), "fit")


def test_adamw_8bit_keeps_the_lr_and_fails_clearly_without_bitsandbytes_or_cuda(tmp_path, shard, monkeypatch):
    """+model/optimizer=adamw8bit: bitsandbytes is CUDA-oriented; on this CPU machine the run must stop with a clear error."""
    import types

    from fgbg.models.optim import adamw_8bit

    cfg = compose_debug(tmp_path, shard, ["+model/optimizer=adamw8bit", "model.optimizer.lr=3e-4"])
    assert cfg.model.optimizer._target_ == "fgbg.models.optim.adamw_8bit" and cfg.model.optimizer.lr == 3e-4
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ImportError, match=r"adamw8bit needs bitsandbytes, which is not installed"):
            train(cfg)
    else:  # installed, but the parameters are on CPU
        with pytest.raises(RuntimeError, match=r"expects parameters on a CUDA device, got \['cpu'\]"):
            train(cfg)

    # The device check, whether or not bitsandbytes is installed here: a stand-in module that must not be reached.
    stub = types.ModuleType("bitsandbytes")
    stub.optim = types.SimpleNamespace(AdamW8bit=lambda *a, **k: pytest.fail("AdamW8bit built for CPU parameters"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", stub)
    with pytest.raises(RuntimeError, match=r"adamw8bit.*CUDA device, got \['cpu'\].*trainer=gpu"):
        adamw_8bit([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
