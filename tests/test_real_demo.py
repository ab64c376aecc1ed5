"""`make real-demo` at token size: every step of bench/real_demo.py on the real offline videos (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_real_demo_smoke_runs_every_step(tmp_path):
    out = tmp_path / "real_demo"
    proc = subprocess.run([sys.executable, "bench/real_demo.py", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3000)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "real_demo.json").read_text())
    assert result["val_videos"] and all(v.startswith("carphone_pristine") for v in result["val_videos"])
    assert not set(result["val_videos"]) & set(result["train_videos"])
    assert result["steps"] == {"image": 3, "video": 3}
    for name in ("synthetic-only", "fine-tuned"):
        assert result["metrics"][name]["psnr"] > 5, result["metrics"]
    assert (out / "sheet.png").stat().st_size > 10_000
    assert "| fine-tuned |" in (out / "report.md").read_text()
