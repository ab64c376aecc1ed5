"""fgbg-generate end to end with a tiny random model bundle: linked clips, determinism, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from fgbg.data.shards import iter_clips
from fgbg.data.video import read_video
from fgbg.generate import generate
from fgbg.generation.inputs import InputError
from fgbg.generation.motion import MotionError
from fgbg.models.bundle import load_bundle, read_bundle_info
from fgbg.synth.app import synthesize
from fgbg.train import CONF_DIR
from tests.conftest import save_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
DATA = {"resolution": 16, "clip_len": 4, "max_tracks": 12}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model bundle, a synthetic driving shard and a reference image + mask from it."""
    d = tmp_path_factory.mktemp("gen")
    save_tiny_bundle(d / "model.safetensors", **DATA)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        scfg = compose("synth", overrides=[f"output={d / 'shards'}", "num_videos=1", "height=16", "width=16",
                                           "num_frames=12", "seed=0"])  # fmt: skip
    shards = synthesize(scfg)
    clip = next(iter_clips(shards))
    Image.fromarray(clip.frames[0]).save(d / "ref.png")
    Image.fromarray((clip.masks[0] * 255).astype(np.uint8)).save(d / "ref_mask.png")
    return {"dir": d, "model": d / "model.safetensors", "shard": shards[0], "clip": clip}


def cfg_for(world, out, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "generate",
            overrides=[
                f"ckpt_path={world['model']}", f"reference={world['dir'] / 'ref.png'}",
                f"reference_mask={world['dir'] / 'ref_mask.png'}", f"motion={world['shard']}",
                f"output_dir={out}", "num_frames=10", "steps=2", "gif=false", *overrides,
            ],
        )  # fmt: skip


def test_cli_three_linked_clips_with_a_camera_preset(world, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "fgbg.generate", f"ckpt_path={world['model']}", f"reference={world['dir'] / 'ref.png'}",
        f"reference_mask={world['dir'] / 'ref_mask.png'}", f"motion={world['shard']}", "camera=pan",
        "camera_args.speed=0.5", "num_frames=10", "steps=2", f"output_dir={out}",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames, _ = read_video(out / "video.mp4")
    gif, _ = read_video(out / "video.gif")
    assert frames.shape == (10, 16, 16, 3) and gif.shape[0] == 10
    report = json.loads((out / "generation.json").read_text())
    assert report["clips"] == 3 and report["frames"] == 10
    assert report["referencenet_calls"] == 1
    assert report["settings"]["camera"] == "pan" and report["seconds_per_frame"] > 0
    assert (out / "sheet.png").stat().st_size > 0
    # An existing output is never overwritten unless asked.
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "overwrite=true" in again.stderr


def test_same_seed_same_frames_and_the_shard_tracks_drive_the_background(world, tmp_path):
    a = generate(cfg_for(world, tmp_path / "a", "seed=5", "gif=true"))
    b = generate(cfg_for(world, tmp_path / "b", "seed=5", "gif=true"))
    # The GIF path is deterministic from the frames (per-frame median-cut palette); H.264 may not be bit-stable.
    fa, _ = read_video(tmp_path / "a" / "video.gif")
    fb, _ = read_video(tmp_path / "b" / "video.gif")
    np.testing.assert_array_equal(fa, fb)
    assert a["frames"] == b["frames"] == 10 and a["settings"]["camera"] is None


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["reference=/nonexistent/ref.png"], InputError, "ref.png does not exist"),
        (["num_frames=40"], MotionError, "has 12 frames but 40 were requested"),
        (["motion=/nonexistent.tar"], InputError, "does not exist"),
    ],
)
def test_bad_inputs_fail_before_any_output(world, tmp_path, overrides, error, message):
    out = tmp_path / "bad"
    with pytest.raises(error, match=message):
        generate(cfg_for(world, out, *overrides))
    assert not out.exists() or not any(out.iterdir())


def test_unreadable_reference_and_pose_track_mismatch(world, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="broken.png is not a readable image"):
        generate(cfg_for(world, tmp_path / "o1", f"reference={tmp_path / 'broken.png'}"))
    pose = np.zeros((12, 18, 3), np.float32)
    np.save(tmp_path / "pose.npy", pose)
    np.savez(tmp_path / "tracks.npz", tracks=np.zeros((9, 4, 2)), visible=np.ones((9, 4), bool), size=[16, 16])
    with pytest.raises(InputError, match="tracks file .* has 9 frames but the pose sequence .* has 12"):
        generate(cfg_for(world, tmp_path / "o2", f"motion={tmp_path / 'pose.npy'}", "pose_size=[16,16]",
                         f"tracks={tmp_path / 'tracks.npz'}"))  # fmt: skip


def test_loop_repeats_a_short_motion(world, tmp_path):
    report = generate(cfg_for(world, tmp_path / "loop", "num_frames=20", "loop=true", "camera=static"))
    assert report["frames"] == 20 and report["clips"] == 5


def test_checkpoint_from_another_model_config_is_refused(world, tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    info = read_bundle_info(world["model"])
    with safe_open(str(world["model"]), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["model_config"] = meta["model_config"].replace(
        "track_encoder:\n  channels:\n  - 8\n  - 8", "track_encoder:\n  channels:\n  - 8\n  - 16"
    )
    assert "- 16" in meta["model_config"] and info.data["resolution"] == 16
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="weights do not match the model its config builds"):
        load_bundle(tmp_path / "other.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not an fgbg model bundle"):
        generate(cfg_for(world, tmp_path / "o3", f"ckpt_path={tmp_path / 'plain.safetensors'}"))
