"""A .ckpt of another project holding a pickle payload is refused and its code never runs."""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch
from diffusers import MotionAdapter

from fgbg.models.unets import load_motion_adapter
from fgbg.utils.weights import load_state_dict_file
from tests.test_loading import ADAPTER

FGBG = Path(__file__).resolve().parents[1] / "fgbg"


class _CreateFile:
    """Unpickling this calls ``os.system('touch <marker>')``: the payload an attacker would ship."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_ckpt(path: Path, marker: Path) -> Path:
    torch.save({"mid_block.motion_modules.0.proj_in.weight": torch.zeros(2, 2), "payload": _CreateFile(marker)}, path)
    return path


def test_pickle_payload_in_motion_module_ckpt_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _hostile_ckpt(tmp_path / "mm_sd_v15_v2.ckpt", marker)
    MotionAdapter(**ADAPTER).save_config(tmp_path / "mm_config")
    with pytest.raises(
        ValueError, match=r"model\.motion_adapter\.single_file: cannot read .*mm_sd_v15_v2\.ckpt.*Unpickl"
    ):
        load_motion_adapter(single_file=str(ckpt), single_file_config=str(tmp_path / "mm_config"))
    assert not marker.exists()


def test_pickle_payload_in_state_dict_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _hostile_ckpt(tmp_path / "inception.pth", marker)
    with pytest.raises(ValueError, match="cannot read"):
        load_state_dict_file(ckpt, "metrics.weights", "a state dict")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the loader diffusers would use refuses it as well
        torch.load(ckpt, weights_only=True)
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    out = subprocess.run(["grep", "-rn", "torch.load(", str(FGBG)], capture_output=True, text=True).stdout
    calls = [line for line in out.splitlines() if line.strip()]
    assert calls, "expected at least the weights loader"
    assert all("weights_only=True" in line for line in calls), calls
