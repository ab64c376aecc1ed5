"""docs/scaling.md's ``model=fgbg_sd15`` commands build the model from the folders ``bench/sd15_memory.py`` writes.

The benchmark writes random weights in the public layouts (SD-1.5 ``unet``/``vae`` folders, a CLIP vision folder
with its preprocessor config, AnimateDiff v2/v3 as diffusers folders and as original single files); ``--tiny``
writes the same layout at a few MB. Each documented command, with ``/weights/`` pointing at those folders, is
composed through ``fgbg-train``'s real entry point (``--cfg job``) and its model is instantiated: every
required path is named, exists and loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.test_docs_commands import REPO, Command, compose_cli, doc_blocks, hydra_runs
from tests.test_loading import published_animatediff_keys

SD15_COMMANDS = [c for block in doc_blocks(REPO / "docs" / "scaling.md") for c in block if "model=fgbg_sd15" in c.argv]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights")
    proc = subprocess.run([sys.executable, "bench/sd15_memory.py", "write", "--tiny", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert all(Path(p).exists() for p in paths.values()), paths
    return out


def test_the_benchmark_writes_the_published_layouts(weights):
    assert (weights / "stable-diffusion-v1-5" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (weights / "stable-diffusion-v1-5" / "vae" / "config.json").is_file()
    assert (weights / "clip-vit-large-patch14" / "preprocessor_config.json").is_file()
    for version, mid in (("v2", True), ("v3", False)):
        adapter = json.loads((weights / f"animatediff-motion-adapter-v1-5-{version[1]}" / "config.json").read_text())
        assert adapter["use_motion_mid_block"] is mid
        single = weights / ("mm_sd_v15_v2.ckpt" if version == "v2" else "v3_sd15_mm.ckpt")
        state = torch.load(single, weights_only=True)
        published = published_animatediff_keys(adapter["block_out_channels"], adapter["motion_layers_per_block"], mid,
                                               adapter["motion_max_seq_length"])  # fmt: skip
        assert {k: tuple(v.shape) for k, v in state.items()} == published, f"{single.name}: not the published layout"


def test_scaling_docs_have_sd15_commands_for_both_stages_and_both_adapter_forms():
    text = " ".join(" ".join(c.argv) for c in SD15_COMMANDS)
    assert len(SD15_COMMANDS) >= 3, [str(c) for c in SD15_COMMANDS]
    assert "model.stage=video" in text and "model.motion_adapter.single_file=" in text
    assert "model.motion_adapter.pretrained=" in text


@pytest.mark.parametrize("cmd", SD15_COMMANDS, ids=str)
def test_documented_sd15_command_builds_from_the_benchmark_folders(cmd, weights):
    argv = [a.replace("=/weights/", f"={weights}/") for a in cmd.argv]
    app, args = hydra_runs(Command(cmd.doc, cmd.line, argv))[0]
    cfg = compose_cli(app, args)
    m = cfg.model
    named = [m.unet.pretrained, m.image_encoder.pretrained, m.motion_adapter.pretrained or m.motion_adapter.single_file]
    assert all(named), f"{cmd}: a weight path is not named: {named}"
    for path in named + [m.motion_adapter.single_file_config] * bool(m.motion_adapter.single_file):
        assert Path(path).exists(), f"{cmd}: {path} does not exist"
    cfg.model.init_from = None  # a stage-image run's weights (<run>/...) are not made here
    model = instantiate(cfg.model)
    assert model.stage == cfg.model.stage
    assert model.latent.vae.config.block_out_channels == [8, 8, 16, 16]  # read from the folder, not the inline config
    assert model.denoiser.unet.config.block_out_channels == (32, 32, 64, 64) or list(
        model.denoiser.unet.config.block_out_channels
    ) == [32, 32, 64, 64]
