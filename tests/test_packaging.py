"""A wheel of fgbg carries its Hydra configs: installed into a fresh venv outside the repository, the
console scripts compose their configs from any folder (issue 17, point 3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "fgbg", "conf")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_composes_configs_from_another_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    # Build from a copy of the sources, so no build/ or egg-info lands in the repository.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("fgbg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fgbg/conf/train.yaml" in names and "fgbg/conf/experiment/synthetic_tiny_image.yaml" in names
    assert "fgbg/conf/generate.yaml" in names and "fgbg/conf/preprocess.yaml" in names
    # model=fgbg_tiny_latent's default VAE (${fgbg_asset:tiny_vae}) and the demo model travel in the wheel
    assert {"fgbg/assets/tiny_vae/config.json", "fgbg/assets/tiny_vae/diffusion_pytorch_model.safetensors",
            "fgbg/assets/tiny_vae_c16/config.json", "fgbg/assets/tiny_vae_c16/diffusion_pytorch_model.safetensors",
            "fgbg/assets/tiny_vae_dc/config.json", "fgbg/assets/tiny_vae_dc/diffusion_pytorch_model.safetensors",
            "fgbg/assets/demo_model.safetensors", "fgbg/assets/pixel32_model.safetensors",
            "fgbg/assets/examples/wave_zoom.png"} <= set(names)  # fmt: skip

    # A fresh venv whose only extra path is this venv's site-packages (torch & co., read from local disk); a
    # folder added by a .pth line does not run that folder's own .pth files, so the repository's editable
    # fgbg install stays invisible and `import fgbg` can only find the wheel's copy.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip())  # fmt: skip
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "fgbg_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    # --no-index: every install_requires pin must already be satisfied by what is on disk
    run([*pip, "--python", python, "install", "-q", "--no-index", wheel], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([python, "-c", "import fgbg, fgbg.utils.config as c; print(fgbg.__file__); print(c.CONF_DIR)"], elsewhere, env)  # fmt: skip
    package, conf = where.stdout.split()
    assert Path(package).is_relative_to(purelib) and Path(conf) == purelib / "fgbg" / "conf", where.stdout

    job = run([venv / "bin" / "fgbg-train", "experiment=synthetic_tiny_image", "--cfg", "job"], elsewhere, env).stdout
    assert "task_name: synthetic_tiny_image" in job and "_target_: fgbg.models.module.FgbgModule" in job
    assert "keep_last_k: 3" in job
    latent = run(
        [venv / "bin" / "fgbg-train", "model=fgbg_tiny_latent", "--cfg", "job", "--resolve"], elsewhere, env
    ).stdout
    assert f"pretrained: {purelib / 'fgbg' / 'assets' / 'tiny_vae'}" in latent, latent[-2000:]
    helptext = run([venv / "bin" / "fgbg-generate", "--help"], elsewhere, env).stdout
    assert "generate is powered by Hydra" in helptext and "ckpt_path" in helptext
    assert not list(elsewhere.iterdir()), "composing a config wrote into the current folder"
