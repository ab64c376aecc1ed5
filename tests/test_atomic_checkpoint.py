"""AtomicCheckpointIO: an interrupted save leaves no file at the final path and the previous one intact."""

from __future__ import annotations

import io

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from fgbg.callbacks.atomic_checkpoint import AtomicCheckpointIO
from fgbg.train import CONF_DIR


def _interrupting_save(real_save):
    """``torch.save`` that writes half the real bytes to the file, then fails like a full disk."""

    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    return save


def test_interrupted_save_keeps_the_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_plugin.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    previous = path.read_bytes()

    monkeypatch.setattr(torch, "save", _interrupting_save(torch.save))
    with pytest.raises(OSError, match="No space left"):
        io_plugin.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    with pytest.raises(OSError):
        io_plugin.save_checkpoint({"step": 1}, tmp_path / "new.ckpt")
    assert not (tmp_path / "new.ckpt").exists()
    monkeypatch.undo()
    assert io_plugin.load_checkpoint(path, weights_only=True)["step"] == 1


def test_complete_save_replaces_the_file(tmp_path):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "sub" / "last.ckpt"
    io_plugin.save_checkpoint({"step": 1}, path)
    io_plugin.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_default_trainer_config_uses_the_atomic_plugin(tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["trainer.accelerator=cpu", f"paths.output_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
