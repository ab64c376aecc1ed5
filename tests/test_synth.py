"""The synthetic world: CLI and shards, determinism, exact geometry of tracks, pose and masks, variety."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from fgbg.data.schema import OPENPOSE18_NAMES
from fgbg.data.shards import iter_clips
from fgbg.synth import SynthConfig, render_world, sample_world, synthesize, synthesize_video, to_synth_config
from fgbg.synth.camera import (
    CAMERA_MOTIONS,
    CameraConfig,
    apply_affine,
    compose_affine,
    invert_affine,
    sample_camera,
    warp_texture,
)
from fgbg.synth.person import PERSON_MOTIONS, capsule_mask, convex_polygon_mask
from fgbg.synth.world import keypoints, sample_tracks

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")
KEY_EXTS = ("frames.png", "mask.png", "pose.npy", "tracks.npy", "visible.npy", "meta.json")
R_SHOULDER, L_SHOULDER = OPENPOSE18_NAMES.index("r_shoulder"), OPENPOSE18_NAMES.index("l_shoulder")


def run_cli(*overrides: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "fgbg.synth", *overrides]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Sample (H, W, 3) uint8 at (N, 2) corner-origin points -> (N, 3) float32."""
    m = (points - 0.5).astype(np.float32)  # cv2: integer coordinates are pixel centres
    out = cv2.remap(image.astype(np.float32), m[:, :1], m[:, 1:], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out[:, 0]


def small_cfg(**kw) -> SynthConfig:
    return SynthConfig(output="unused", **{"height": 48, "width": 48, "num_frames": 12, "num_tracks": 48, **kw})


def test_cli_writes_documented_keys_and_is_deterministic(tmp_path):
    common = ("num_videos=3", "videos_per_shard=2", "height=32", "width=40", "num_frames=6", "num_tracks=16")
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        proc = run_cli(f"output={name}", f"seed={seed}", *common, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    shards = sorted(p.name for p in runs["a"].glob("*.tar"))
    assert shards == ["train-000000.tar", "train-000001.tar"]
    with tarfile.open(runs["a"] / shards[0]) as tf:
        names = tf.getnames()
    assert sorted(names) == sorted(f"synth-s0-v{v:06d}_0000.{ext}" for v in range(2) for ext in KEY_EXTS)
    assert names[0].startswith("synth-s0-v000000_0000.")  # samples in video order
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"], "hydra wrote a run folder, log or config copy"
    for shard in shards:
        assert (runs["a"] / shard).read_bytes() == (runs["b"] / shard).read_bytes()
        assert (runs["a"] / shard).read_bytes() != (runs["c"] / shard).read_bytes()
    clip = next(iter_clips([str(runs["a"] / shards[0])]))
    assert clip.frames.shape == (6, 32, 40, 3) and clip.tracks.shape == (6, 16, 2)
    assert clip.meta["source"] == "synthetic" and clip.meta["tracker"] == "ground_truth"
    assert clip.meta["pose_estimator"] == "ground_truth" and clip.meta["camera"] in CAMERA_MOTIONS
    assert clip.meta["person_motion"] in PERSON_MOTIONS and clip.meta["video_index"] == 0


def test_cli_refuses_to_mix_with_existing_shards_and_bad_keys(tmp_path):
    (tmp_path / "train-000000.tar").write_bytes(b"old")
    proc = run_cli(f"output={tmp_path}", "num_videos=1")
    assert proc.returncode != 0 and "overwrite=true" in proc.stderr
    proc = run_cli(f"output={tmp_path / 'x'}", "+num_vidoes=1")
    assert proc.returncode != 0 and "num_vidoes" in proc.stderr


def test_workers_clips_per_video_and_sheet(tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        base = ["height=32", "width=32", "num_frames=5", "num_videos=3", "num_tracks=8", "clips_per_video=2"]
        one = compose("synth", overrides=[f"output={tmp_path / 'one'}", *base])
        two = compose(
            "synth", overrides=[f"output={tmp_path / 'two'}", "workers=2", f"sheet={tmp_path / 's.png'}", *base]
        )
    shards_one, shards_two = synthesize(one), synthesize(two)
    assert [Path(p).read_bytes() for p in shards_one] == [Path(p).read_bytes() for p in shards_two]
    clips = list(iter_clips(shards_one))
    assert [c.key for c in clips[:3]] == ["synth-s0-v000000_0000", "synth-s0-v000000_0001", "synth-s0-v000001_0000"]
    # consecutive clips of one video: the same world, continuing in time
    assert clips[1].meta["first_frame"] == 5 and clips[0].meta["camera"] == clips[1].meta["camera"]
    sheet = cv2.imread(str(tmp_path / "s.png"))
    assert sheet is not None and sheet.shape[0] > 4 * 64


def test_a_video_does_not_depend_on_the_others():
    cfg = small_cfg(num_frames=4, num_tracks=8)
    alone = synthesize_video(cfg, 5)[0]
    other_seed = synthesize_video(small_cfg(num_frames=4, num_tracks=8, seed=1), 5)[0]
    again = synthesize_video(cfg, 5)[0]
    assert np.array_equal(alone.frames, again.frames) and np.array_equal(alone.tracks, again.tracks)
    assert not np.array_equal(alone.frames, other_seed.frames)


@pytest.mark.parametrize("camera", CAMERA_MOTIONS)
def test_tracks_follow_the_rendered_pixels(camera):
    """A visible track shows the same colour in frame t as in frame 0.

    Tolerance: the frame is a bilinear sample of the canvas (blurred by 0.7
    texel) and we sample it bilinearly again at the track, so colours agree up
    to two interpolation errors (about Δ²|f''|/8 each, largest on the sharpest
    blurred edges when zoom changes the sampling grid) plus uint8 rounding. We
    ask for a mean of at most 3 levels and a 95th percentile of at most 10 (of
    255), and check that points shifted by 1.5 px break this by far.
    """
    cfg = small_cfg(height=64, width=64, num_frames=12)
    errors, shifted = [], []
    for i in range(3):
        world = sample_world(np.random.default_rng([7, i]), cfg, cfg.num_frames, camera_kind=camera)
        rendering = render_world(world)
        tracks, visible = sample_tracks(np.random.default_rng(i), world, rendering, slice(None), cfg)
        assert tracks.shape == (cfg.num_frames, cfg.num_tracks, 2) and visible.any(1).all()
        t_idx, n_idx = np.nonzero(visible)
        under = np.floor(tracks[t_idx, n_idx]).astype(int)  # the pixel under each visible point
        assert not rendering.masks[t_idx, under[:, 1], under[:, 0]].any(), "a visible track lies on the person"
        for t in range(1, cfg.num_frames):
            both = visible[0] & visible[t]
            first = bilinear(rendering.frames[0], tracks[0, both])
            errors.append(np.abs(bilinear(rendering.frames[t], tracks[t, both]) - first).max(-1))
            shifted.append(np.abs(bilinear(rendering.frames[t], tracks[t, both] + [1.5, 0.0]) - first).max(-1))
    errors, shifted = np.concatenate(errors), np.concatenate(shifted)
    assert len(errors) > 200
    assert errors.mean() <= 3.0 and np.percentile(errors, 95) <= 10.0, (errors.mean(), np.percentile(errors, 95))
    assert shifted.mean() > 3 * max(errors.mean(), 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_visible_tracks_are_off_the_person_and_keypoints_in_frame(seed):
    clip = synthesize_video(small_cfg(seed=seed, height=40, width=56), 0)[0]
    t_idx, n_idx = np.nonzero(clip.visible)
    x, y = clip.tracks[t_idx, n_idx, 0], clip.tracks[t_idx, n_idx, 1]
    assert np.all((x >= 0) & (x < 56) & (y >= 0) & (y < 40))
    assert not clip.masks[t_idx, y.astype(int), x.astype(int)].any(), "a visible track lies on the person"
    px, py, conf = clip.pose[..., 0], clip.pose[..., 1], clip.pose[..., 2]
    outside = (px < 0) | (px >= 56) | (py < 0) | (py >= 40)
    assert np.all(conf[outside] == 0.0) and set(np.unique(conf)) <= {0.0, 1.0}
    body = np.array([n for n in range(len(OPENPOSE18_NAMES)) if "eye" not in OPENPOSE18_NAMES[n] and "ear" not in OPENPOSE18_NAMES[n] and n != 0])  # fmt: skip
    assert np.all(conf[:, body][~outside[:, body]] == 1.0), "an in-frame body joint lost its confidence"
    assert clip.masks.any(axis=(1, 2)).all(), "every frame shows the person"


def test_keypoints_leaving_the_frame_get_zero_confidence():
    world = sample_world(np.random.default_rng(3), small_cfg(), 12, motion="walk")
    world.person_points[:, :, 0] += 200.0  # move the whole person out to the right
    assert np.all(keypoints(world)[..., 2] == 0.0)


def test_person_mask_is_the_union_of_the_drawn_parts():
    cfg = small_cfg()
    world = sample_world(np.random.default_rng(11), cfg, 4)
    with_person, without = render_world(world), render_world(world, draw_people=False)
    changed = np.any(with_person.frames != without.frames, axis=-1)
    assert not np.any(changed & ~with_person.masks), "pixels outside the mask were painted"
    # a few mask pixels may take a colour equal to the background's after rounding, never many
    assert (with_person.masks & ~changed).sum() <= 0.02 * with_person.masks.sum()
    assert not without.masks.any()


def test_turn_swaps_the_shoulders_and_hides_the_face():
    world = sample_world(np.random.default_rng(2), small_cfg(), 12, motion="turn")
    kp = keypoints(world)
    order = np.sign(kp[:, R_SHOULDER, 0] - kp[:, L_SHOULDER, 0])
    assert (order > 0).any() and (order < 0).any(), "left/right shoulder x order never swaps"
    away = np.cos(world.angles.theta) < -0.85  # mostly turned away: no eye or nose can be seen
    assert away.any()
    eyes = [OPENPOSE18_NAMES.index(n) for n in ("r_eye", "l_eye", "nose")]
    assert np.all(kp[away][:, eyes, 2] == 0.0)


def test_the_world_varies_across_videos():
    cfg = small_cfg(num_frames=2, num_tracks=4)
    worlds = [sample_world(np.random.default_rng([0, i]), cfg, 2) for i in range(8)]
    shirts = np.array([w.appearance.shirt for w in worlds])
    skins = np.array([w.appearance.skin for w in worlds])
    assert len(np.unique(shirts.round(), axis=0)) == 8 and len(np.unique(skins.round(), axis=0)) >= 4
    mean_colours = np.array([w.canvas.reshape(-1, 3).mean(0) for w in worlds])
    assert np.ptp(mean_colours, axis=0).max() > 40, "backgrounds all look alike"
    videos = [synthesize_video(small_cfg(num_frames=4, num_tracks=4), i)[0] for i in range(12)]
    assert len({v.meta["camera"] for v in videos}) >= 3 and len({v.meta["person_motion"] for v in videos}) >= 3


@pytest.mark.parametrize("size", [(32, 32), (96, 64)])
def test_any_frame_size(size):
    h, w = size
    clip = synthesize_video(small_cfg(height=h, width=w, num_frames=6, num_tracks=12), 1)[0]
    clip.validate()
    assert clip.frames.shape == (6, h, w, 3) and clip.masks.any() and clip.visible.sum() > 12


def test_camera_geometry_round_trip():
    """warp_texture samples at the inverse-mapped pixel centres; apply/compose/invert agree."""
    rng = np.random.default_rng(0)
    path = sample_camera(rng, CameraConfig(), 5, 32, 32, kind="combined")
    a = path.world_to_image
    pts = rng.uniform(0, 32, (5, 7, 2))
    assert np.allclose(apply_affine(invert_affine(a), apply_affine(a, pts)), pts)
    assert np.allclose(compose_affine(a, invert_affine(a))[..., :2], np.eye(2))
    # a texture whose value is its own x coordinate, shifted by 3.25 texels: pixel centres read x + 3.25
    ramp = np.tile(np.arange(64, dtype=np.float32)[None, :, None] + 0.5, (64, 1, 1))
    shift = np.array([[1.0, 0.0, 3.25], [0.0, 1.0, 0.0]])
    out = warp_texture(ramp, shift, 8, 8, "reflect")[..., 0]
    assert np.allclose(out, np.arange(8)[None, :] + 0.5 + 3.25, atol=1 / 32)


def test_rasterisers_test_pixel_centres():
    m = capsule_mask(np.array([2.0, 2.0]), np.array([2.0, 2.0]), 0.75, 5, 5)
    assert m.sum() == 4 and m[1:3, 1:3].all()  # the disc of radius 0.75 at a pixel corner holds 4 centres
    square = convex_polygon_mask(np.array([[1.0, 1.0], [4.0, 1.0], [4.0, 3.0], [1.0, 3.0]]), 5, 5)
    assert square.sum() == 6 and square[1:3, 1:4].all()


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="camera.weights"):
        to_synth_config({"output": str(tmp_path), "camera": {"weights": {"dolly": 1.0}}})
    with pytest.raises(ValueError, match="num_frames"):
        to_synth_config({"output": str(tmp_path), "num_frames": 0})
