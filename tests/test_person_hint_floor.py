"""bench/person_hint_floor.py: the person hint, the VAE and their product scored against the truth (a CLI run)."""

import json
import subprocess
import sys

from tests.conftest import REPO, run_synth


def test_person_hint_floor_scores_the_hint_and_the_vae(tmp_path):
    shards = run_synth(tmp_path / "synth", num_videos=2, num_frames=8)
    out = tmp_path / "floor.json"
    cmd = [sys.executable, "bench/person_hint_floor.py", "--shards", f"{shards}/train-000000.tar", "--clips", "2",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["clips"] == 2 and res["frames_per_clip"] == 8
    assert 0.5 < res["hint_coverage"] <= 1.0
    # the synthetic person is a rigid sprite: warped by its bones it matches the truth far better than the
    # unwarped reference does, and the VAE's round trip is what costs most
    assert res["hint_pasted"] < res["reference"]
    assert res["hint_pasted"] < res["hint_through_vae"]
