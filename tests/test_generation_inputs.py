"""Camera presets, driving-motion windows, reference/motion file loading, streaming video files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fgbg.data.video import VideoFileWriter, read_video
from fgbg.generation.camera import CameraPreset, apply_affines, camera_affines, invert_affines, preset_tracks
from fgbg.generation.inputs import InputError, load_pose, load_reference, load_tracks
from fgbg.generation.motion import DrivingMotion, MotionError


def test_pan_moves_background_against_the_camera():
    aff = camera_affines(CameraPreset("pan", direction_deg=0, speed=2.0), 5, 64, 64)
    p = apply_affines(aff, np.array([[10.0, 20.0]]))
    np.testing.assert_allclose(p[0, 0], [10, 20])
    np.testing.assert_allclose(p[4, 0], [2, 20])  # camera right -> content left, 2 px/frame


def test_zoom_in_grows_about_the_centre_and_affines_invert():
    aff = camera_affines(CameraPreset("zoom", zoom_rate=0.1), 3, 64, 64)
    p = apply_affines(aff, np.array([[32.0, 32.0], [42.0, 32.0]]))
    np.testing.assert_allclose(p[2], [[32, 32], [32 + 10 * 1.21, 32]])
    back = apply_affines(invert_affines(aff), np.array([[5.0, 7.0]]))
    np.testing.assert_allclose(apply_affines(aff[2:3], back[2])[0, 0], [5, 7], atol=1e-9)


@pytest.mark.parametrize("kind", ["static", "pan", "zoom", "shake", "combined"])
def test_preset_frame_zero_is_the_reference(kind):
    aff = camera_affines(CameraPreset(kind, speed=1.5, seed=3), 6, 48, 64)
    np.testing.assert_allclose(aff[0], [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_preset_tracks_keep_points_in_view_and_off_the_reference_person():
    person = np.zeros((64, 64), bool)
    person[:, 24:40] = True
    w = preset_tracks(
        CameraPreset("pan", speed=2.0), start=40, num_frames=8, height=64, width=64, num_points=20, person_region=person
    )
    assert w["tracks"].shape == (8, 20, 2)
    assert w["visible"][0].all()  # seeded inside the first frame of the window
    # After 40 frames of panning right at 2 px/frame, the points were 80 px to the right: none in the reference.
    assert not w["anchor_visible"].any()
    np.testing.assert_allclose(w["link"], w["tracks"][0] + [2, 0], atol=1e-4)
    w0 = preset_tracks(CameraPreset("static"), 0, 4, 64, 64, 20, person)
    ax = w0["anchor"][w0["anchor_visible"]][:, 0]
    assert len(ax) > 0 and not ((ax >= 24) & (ax < 40)).any()
    assert not w0["link_visible"].any()


def test_driving_motion_errors_and_loop():
    pose = np.zeros((10, 18, 3), np.float32)
    with pytest.raises(MotionError, match="tracks have 9 frames but the pose sequence has 10"):
        DrivingMotion(pose, 64, 64, tracks=np.zeros((9, 4, 2), np.float32), visible=np.ones((9, 4), bool))
    m = DrivingMotion(pose, 64, 64, camera=CameraPreset("static"))
    with pytest.raises(MotionError, match="has 10 frames but 12 were requested"):
        m.window(8, 4)
    m.loop = True
    assert m.window(8, 4)["pose"].shape == (4, 18, 3)


def test_tracks_window_links_to_the_previous_frame():
    t = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 3, 2), np.float32)
    vis = np.ones((6, 3), bool)
    vis[:, 2] = False
    m = DrivingMotion(np.zeros((6, 18, 3), np.float32), 64, 64, tracks=t, visible=vis, num_points=8)
    w = m.window(3, 3)
    assert w["tracks"].shape == (3, 2, 2)  # the never-visible point is dropped
    np.testing.assert_allclose(w["link"], 2.0)
    assert w["link_visible"].all()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_reference_any_mode_and_size(tmp_path, mode):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)).convert(mode)
    img.save(tmp_path / "ref.png")
    arr, fit = load_reference(tmp_path / "ref.png", 32, 48)
    assert arr.shape == (32, 48, 3) and arr.dtype == np.uint8
    assert fit.scale == pytest.approx(max(32 / 300, 48 / 500))


def test_reference_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_reference(tmp_path / "missing.png", 32, 32)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.png is not a readable image"):
        load_reference(tmp_path / "bad.png", 32, 32)


def test_pose_and_tracks_files(tmp_path):
    pose = np.random.default_rng(0).random((5, 18, 3)).tolist()
    (tmp_path / "pose.json").write_text(json.dumps({"width": 64, "height": 32, "keypoints": pose}))
    p, hw = load_pose(tmp_path / "pose.json")
    assert p.shape == (5, 18, 3) and hw == (32, 64)
    np.save(tmp_path / "bad.npy", np.zeros((5, 17, 3)))
    with pytest.raises(InputError, match=r"expected shape \(T, 18, 3\)"):
        load_pose(tmp_path / "bad.npy", size=(32, 32))
    np.savez(tmp_path / "tr.npz", tracks=np.zeros((5, 4, 2)), visible=np.ones((5, 4), bool), size=[32, 64])
    tr, vis, hw = load_tracks(tmp_path / "tr.npz")
    assert tr.shape == (5, 4, 2) and vis.all() and hw == (32, 64)
    np.savez(tmp_path / "tr2.npz", tracks=np.zeros((5, 4, 2)))
    with pytest.raises(InputError, match="missing 'visible is not a file in the archive'|missing"):
        load_tracks(tmp_path / "tr2.npz")


@pytest.mark.parametrize("ext", ["mp4", "gif"])
def test_video_writer_streams_and_is_atomic(tmp_path, ext):
    rng = np.random.default_rng(0)
    frames = [np.full((33, 47, 3), (10 * i, 100, 200 - 10 * i), np.uint8) for i in range(7)]
    with VideoFileWriter(tmp_path / f"v.{ext}", fps=8) as w:
        for f in frames:
            w.write(f)
    back, fps = read_video(tmp_path / f"v.{ext}")
    assert back.shape[0] == 7 and fps == pytest.approx(8, rel=0.05)  # GIF delays are in 1/100 s
    assert np.abs(back[3, :33, :47].astype(int) - frames[3]).mean() < 6
    with pytest.raises(RuntimeError):
        with VideoFileWriter(tmp_path / f"broken.{ext}", fps=8) as w:
            w.write(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            raise RuntimeError("killed")
    assert not list(tmp_path.glob("broken*"))
