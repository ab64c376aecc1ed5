"""fgbg-preprocess at cluster scale: parts as a SLURM job array (conf/preprocess_launcher/) sharing one manifest.

No SLURM here: a stub ``sbatch`` on PATH keeps the script submitit renders and starts its array tasks in the
background, as SLURM would (each with the SLURM_* variables of its task), and a stub ``srun`` runs the task's
command; so the real ``fgbg-preprocess -m`` command, Hydra's sweeper and submitit launcher, the sbatch text and
the submitit task runner are all exercised. The short carphone videos come from tests/test_preprocess_videos.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fgbg.data.shards import iter_clips
from fgbg.preprocess.app import Manifest, parse_part
from fgbg.utils.config import CONF_DIR
from tests.test_preprocess_videos import carphone_frames, run, segments, shard_digests, without_timing

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "fgbg-preprocess")
SWEEP_EXTRA = "the `sweep` extra is not installed (make install, or pip install -e .[sweep])"
__all__ = ["carphone_frames", "segments"]  # fixtures used below

SBATCH = """#!{python}
import os, re, shutil, subprocess, sys
from pathlib import Path

log = Path(os.environ["FAKE_SLURM_DIR"])
script = Path(sys.argv[-1])
n = len(list(log.glob("sbatch-*.sh")))
shutil.copy(script, log / f"sbatch-{{n}}.sh")
job = str(4000 + 100 * n)
array = re.search(r"^#SBATCH --array=(\\d+)-(\\d+)", script.read_text(), re.M)
for i in range(int(array[1]), int(array[2]) + 1) if array else [None]:
    env = dict(os.environ, SLURM_JOB_ID=job if i is None else str(int(job) + 1 + i), SLURM_NTASKS="1",
               SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0", SLURM_PROCID="0", SLURM_LOCALID="0",
               SLURM_JOB_NODELIST="localhost")
    if i is not None:
        env.update(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(i))
    with open(log / f"task-{{job}}_{{i}}.out", "w") as out:
        subprocess.Popen(["bash", str(script)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
print(f"Submitted batch job {{job}}")
"""
SRUN = """#!/bin/sh
# srun --unbuffered --output PATH --error PATH COMMAND...: run COMMAND here
while [ $# -gt 0 ]; do
  case "$1" in --output|--error) shift 2 ;; --*) shift ;; *) break ;; esac
done
exec "$@"
"""


def fake_slurm(tmp_path: Path) -> dict:
    """Environment with stub sbatch/srun/sacct on PATH; sbatch keeps its scripts in ``tmp_path/slurm``."""
    bindir, log = tmp_path / "bin", tmp_path / "slurm"
    bindir.mkdir()
    log.mkdir()
    for name, text in (("sbatch", SBATCH.format(python=sys.executable)), ("srun", SRUN), ("sacct", "#!/bin/sh\n")):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(log),
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def clips_of(folder: Path) -> dict:
    """Every clip of a preprocess output folder (through its manifest) by key, arrays and meta."""
    manifest = json.loads((folder / "manifest.json").read_text())
    shards = [str(folder / s) for e in manifest["videos"].values() for s in e.get("shards", [])]
    return {c.key: c for c in iter_clips(sorted(shards))}


def assert_same_output(got: Path, want: Path) -> None:
    """Same shard files (bytes), same manifest (but timings), and the same samples: keys and arrays."""
    assert shard_digests(got) == shard_digests(want)
    assert without_timing(json.loads((got / "manifest.json").read_text())) == without_timing(
        json.loads((want / "manifest.json").read_text())
    )
    a, b = clips_of(got), clips_of(want)
    assert sorted(a) == sorted(b) and a
    for key in a:
        for name in ("frames", "masks", "pose", "tracks", "visible"):
            np.testing.assert_array_equal(getattr(a[key], name), getattr(b[key], name), err_msg=f"{key} {name}")
    assert not list(got.glob("*.tmp")) and not list(got.glob("manifest.part*.json"))


def test_part_index_with_parts_and_bad_values():
    assert parse_part(3, 16) == (3, 16) and parse_part("3/16", 1) == (3, 16) and parse_part("3/16", 16) == (3, 16)
    assert parse_part(0, 1) == (0, 1) and parse_part(None, 16) is None
    for part, parts, message in ((16, 16, "0 <= part < parts"), ("1/4", 8, "says 4 parts but parts=8"),
                                 (0, 0, "parts must be"), ("4/4", 1, "part must be 'I/N'")):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_part(part, parts)


def test_sbatch_array_for_the_parts(tmp_path, monkeypatch):
    """preprocess_launcher=submitit_slurm composes; the real launcher renders one array task per part, CPU only."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=SWEEP_EXTRA)
    import submitit
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import instantiate
    from submitit.slurm.slurm import _make_sbatch_string

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "preprocess",
            overrides=["preprocess_launcher=submitit_slurm", "input=videos/", f"output={tmp_path / 'out'}",
                       "parts=16", "workers=4", "hydra.launcher.partition=cpu"],
            return_hydra_config=True,
        )  # fmt: skip
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "submitit_slurm"
    # the sweep the -m run makes: part=0..15, each with parts=16
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    assert batch == [[f"part={i}"] for i in range(16)]
    assert [parse_part(int(b[0].split("=")[1]), cfg.parts) for b in batch] == [(i, 16) for i in range(16)]

    monkeypatch.setenv("PATH", fake_slurm(tmp_path)["PATH"])  # submitit's executor wants an srun on PATH
    scripts = []

    def keep_script(self, fn, *args):  # instead of sbatch: what _internal_process_submissions renders for the array
        ex = self._executor
        assert ex.max_num_timeout == 10, "requeues on the time limit"
        scripts.append(
            _make_sbatch_string(ex._submitit_command_str, ex.folder, **ex.parameters, map_count=len(args[0]))
        )
        return [type("Submitted", (), {"results": lambda self: ["not run"]})() for _ in args[0]]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", keep_script)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    assert launcher.launch(batch, initial_job_idx=0) == ["not run"] * 16
    (script,) = scripts
    for line in ("--array=0-15%16", "--cpus-per-task=4", "--time=240", "--signal=USR2@120", "--partition=cpu",
                 "--nodes=1", "--ntasks-per-node=1", "--job-name=fgbg-preprocess", "--open-mode=append"):  # fmt: skip
        assert f"#SBATCH {line}\n" in script, f"{line} not in the sbatch script:\n{script}"
    assert "gpu" not in script and "--mem" not in script
    assert re.search(r"^srun --unbuffered .* -u -m submitit\.core\._submit ", script, re.M), script


def _record_many(path: str, settings: dict, part: int, count: int, start) -> None:
    start.wait()
    manifest = Manifest(Path(path), settings, overwrite=False, own={f"p{part}-{i}" for i in range(count)})
    for i in range(count):
        manifest.record({"video_id": f"p{part}-{i}", "status": "done", "shards": [f"p{part}-{i}-00000.tar"]})


def test_concurrent_parts_keep_every_manifest_entry(tmp_path):
    """4 processes recording 40 videos each into one manifest.json at the same time: all 160 entries stay."""
    path, settings = tmp_path / "manifest.json", {"clips": {"length": 16}}
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_record_many, args=(str(path), settings, p, 40, start)) for p in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    data = json.loads(path.read_text())
    assert sorted(data["videos"]) == sorted(f"p{p}-{i}" for p in range(4) for i in range(40))
    assert data["settings"] == settings and not list(tmp_path.glob("*.tmp"))
    # a part started later with other settings is refused, naming them
    with pytest.raises(ValueError, match=r"different settings \(changed: \['clips'\]\)"):
        Manifest(path, {"clips": {"length": 24}}, overwrite=False, own=set())
    # overwrite=true in a part forgets that part's entries only (same settings) ...
    Manifest(path, settings, overwrite=True, own={f"p0-{i}" for i in range(40)})
    assert len(json.loads(path.read_text())["videos"]) == 120
    # ... and everything when the settings changed
    Manifest(path, {"clips": {"length": 24}}, overwrite=True, own=set())
    assert json.loads(path.read_text())["videos"] == {}


def test_two_parts_at_once_equal_one_run(tmp_path, segments):
    """part=0/2 and part=1/2 as concurrent subprocesses into one folder give what one whole run gives."""
    whole = tmp_path / "whole"
    run(segments, whole)
    out = tmp_path / "parts"
    procs = [
        subprocess.Popen(
            [CLI, f"input={segments}", f"output={out}", f"part={i}/2"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert "1 videos in input part 0/2, 0 finished, 1 to do" in logs[0]  # 3 videos: parts of 1 and 2
    assert "2 videos in input part 1/2, 0 finished, 2 to do" in logs[1]
    assert_same_output(out, whole)


@pytest.mark.slow
def test_preprocess_array_through_fake_slurm_and_rerun_resumes(tmp_path, segments):
    """The documented one-liner submits a 2-task array whose tasks (run here at once) fill one folder and manifest
    equal to a single run's; the same command again submits again, and every task skips its finished videos."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=SWEEP_EXTRA)
    whole = tmp_path / "whole"
    run(segments, whole)
    env, out = fake_slurm(tmp_path), tmp_path / "array"
    cmd = [CLI, "-m", "preprocess_launcher=submitit_slurm", f"input={segments}", f"output={out}", "parts=2",
           "hydra.launcher.partition=cpu"]  # fmt: skip
    for attempt in range(2):
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        script = (tmp_path / "slurm" / f"sbatch-{attempt}.sh").read_text()
        for line in ("--array=0-1%2", "--cpus-per-task=1", "--time=240", "--signal=USR2@120", "--partition=cpu"):
            assert f"#SBATCH {line}\n" in script, script
        tasks = sorted((tmp_path / "slurm").glob(f"task-{4000 + 100 * attempt}_*.out"))
        logs = [t.read_text() for t in tasks]
        assert len(logs) == 2, logs
        assert_same_output(out, whole)
        if attempt == 0:
            assert "0 finished, 1 to do" in logs[0] and "0 finished, 2 to do" in logs[1], logs
            first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
        else:  # resumed: nothing redone
            assert "1 finished, 0 to do" in logs[0] and "2 finished, 0 to do" in logs[1], logs
            assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == first
        print(f"attempt {attempt}: {time.monotonic() - started:.1f} s")
