"""Unit tests of fgbg.preprocess: keypoint mapping, masks, seeding, tracking, ranking, crops, shots, inputs."""

from __future__ import annotations

import sys
import types

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from fgbg.data.schema import NUM_KEYPOINTS, OPENPOSE18_NAMES
from fgbg.preprocess.app import CONF_DIR, list_videos, parse_part, select_part, settings_of, video_id_for
from fgbg.preprocess.masks import dilate_masks, keypoint_box
from fgbg.preprocess.pipeline import clip_crop_box, person_crop_box
from fgbg.preprocess.pose import (
    BLAZEPOSE33_SHOULDERS,
    BLAZEPOSE33_TO_OPENPOSE18,
    COCO17_SHOULDERS,
    COCO17_TO_OPENPOSE18,
    build_pose_estimator,
    has_person,
    to_openpose18,
)
from fgbg.preprocess.shots import ShotCutDetector
from fgbg.preprocess.tracks import (
    LKTracker,
    TrackSet,
    build_tracker,
    pixel_lookup,
    seed_points,
    select_tracks,
    track_order,
)


def compose_cfg(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("preprocess", overrides=["input=unused", "output=unused", *overrides])


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture with plenty of corners, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST), (3, 3), 0)


# ---- keypoints -------------------------------------------------------------------------------


def test_blazepose_to_openpose18_names_and_neck():
    """Each OpenPose-18 slot takes the BlazePose landmark of the same body part; neck = shoulder midpoint."""
    blaze_names = {0: "nose", 2: "l_eye", 5: "r_eye", 7: "l_ear", 8: "r_ear", 11: "l_shoulder", 12: "r_shoulder",
                   13: "l_elbow", 14: "r_elbow", 15: "l_wrist", 16: "r_wrist", 23: "l_hip", 24: "r_hip",
                   25: "l_knee", 26: "r_knee", 27: "l_ankle", 28: "r_ankle"}  # fmt: skip
    for slot, src in enumerate(BLAZEPOSE33_TO_OPENPOSE18):
        if src is not None:
            assert blaze_names[src] == OPENPOSE18_NAMES[slot]
    kp = np.zeros((33, 3), np.float32)
    kp[:, 2] = 0.9
    kp[:, 0] = np.arange(33)
    kp[:, 1] = 10
    kp[11] = (20, 30, 0.8)
    kp[12] = (40, 50, 0.6)
    out = to_openpose18(kp, BLAZEPOSE33_TO_OPENPOSE18, BLAZEPOSE33_SHOULDERS, 100, 100)
    assert out.shape == (NUM_KEYPOINTS, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], (30, 40, 0.6))
    np.testing.assert_allclose(out[2], (40, 50, 0.6))  # r_shoulder
    np.testing.assert_allclose(out[10, 0], 28)  # r_ankle


def test_coco17_mapping_and_out_of_frame_confidence():
    coco_names = ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
                  "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle")  # fmt: skip
    for slot, src in enumerate(COCO17_TO_OPENPOSE18):
        if src is not None:
            assert coco_names[src] == OPENPOSE18_NAMES[slot]
    kp = np.tile(np.array([[5.0, 5.0, 1.7]], np.float32), (17, 1))
    kp[15] = (5.0, 12.0, 0.9)  # l_ankle below a 10-pixel-high frame
    out = to_openpose18(kp, COCO17_TO_OPENPOSE18, COCO17_SHOULDERS, 10, 10)
    assert out[13, 2] == 0.0  # l_ankle outside the frame
    assert out[0, 2] == 1.0  # scores above 1 (SimCC) are clipped
    assert has_person(out, 0.3, 4) and not has_person(None, 0.3, 4)
    assert not has_person(np.zeros((18, 3), np.float32), 0.3, 1)


# ---- masks -----------------------------------------------------------------------------------


def test_keypoint_box_covers_pixel_centres_inside_the_padded_box():
    kp = np.zeros((18, 3), np.float32)
    kp[0] = (10.0, 4.0, 1.0)
    kp[1] = (20.0, 14.0, 1.0)
    kp[2] = (50.0, 50.0, 0.1)  # below the confidence threshold: ignored
    box = keypoint_box(kp, 32, 40, conf_threshold=0.3, pad=0.0)
    rows, cols = np.nonzero(box)
    # pixel centres j + 0.5 in [10, 20] -> columns 10..19; rows 4..13
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (10, 19, 4, 13)
    assert keypoint_box(None, 8, 8, 0.3, 0.1).sum() == 0


def test_dilate_masks_grows_by_radius():
    m = np.zeros((2, 21, 21), bool)
    m[:, 10, 10] = True
    d = dilate_masks(m, 3)
    assert d[0, 10, 13] and d[0, 13, 10] and not d[0, 10, 14] and d.sum() == 2 * d[0].sum()
    np.testing.assert_array_equal(dilate_masks(m, 0), m)


# ---- tracks ----------------------------------------------------------------------------------


def test_pixel_lookup_uses_floor_of_corner_origin_coordinates():
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    pts = np.array([[2.0, 1.0], [2.99, 1.99], [3.0, 1.5], [1.99, 1.5], [-0.5, 1.0], [2.5, 4.0]], np.float32)
    np.testing.assert_array_equal(pixel_lookup(mask, pts), [True, True, False, False, False, False])


def test_seed_points_avoid_the_mask_and_spread_over_the_grid():
    frame = textured(96, 128)
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    allowed = np.ones((96, 128), bool)
    allowed[:, 40:90] = False
    seeds = seed_points(gray, allowed, (0, 0, 128, 96), count=64, grid=(4, 4), min_distance=4)
    assert 32 <= len(seeds) <= 64
    assert pixel_lookup(allowed, seeds).all()
    cols = np.clip((seeds[:, 0] * 4 / 128).astype(int), 0, 3)
    assert set(cols) >= {0, 3}  # both sides of the excluded band are used
    existing = seeds[:5]
    more = seed_points(gray, allowed, (0, 0, 128, 96), count=20, existing=existing, min_distance=4)
    assert np.min(np.linalg.norm(more[:, None] - existing[None], axis=-1)) >= 3.0


def test_lk_follows_a_known_translation_and_keeps_off_the_person():
    """Background shifted by (+1.5, -1.0) px per frame; a static 'person' block must stay free of tracks."""
    h, w, t = 96, 128, 8
    big = textured(h + 40, w + 40, seed=1)
    frames, exclusion = [], np.zeros((t, h, w), bool)
    affine = np.float32([[1, 0, 0], [0, 1, 0]])
    for i in range(t):
        affine[:, 2] = (-20 + 1.5 * i, -20 - 1.0 * i)  # dst = src shifted: content moves +1.5 in x, -1.0 in y
        frames.append(cv2.warpAffine(big, affine, (w, h), flags=cv2.INTER_LINEAR))
        exclusion[i, 30:70, 50:80] = True
    frames = np.stack(frames)
    frames[:, 30:70, 50:80] = 128
    tracks = LKTracker(target_points=80)(frames, exclusion, (0, 0, w, h))
    assert tracks.tracks.shape[0] == t and tracks.visible.shape == tracks.tracks.shape[:2]
    full = tracks.visible.all(0)
    assert full.sum() >= 20
    motion = np.diff(tracks.tracks[:, full], axis=0)
    np.testing.assert_allclose(motion.mean((0, 1)), (1.5, -1.0), atol=0.05)
    for i in range(t):
        assert not pixel_lookup(exclusion[i], tracks.tracks[i][tracks.visible[i]]).any()
    assert np.nanmedian(tracks.fb_error) < 0.2


def test_track_order_and_selection():
    visible = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1]], bool)  # (T=3, N=4): lengths 2, 3, 3, 2
    fb = np.array([[np.nan] * 4, [0.5, 0.2, 0.1, 0.3], [np.nan, 0.2, 0.1, 0.3]], np.float32)
    np.testing.assert_array_equal(track_order(visible, fb), [2, 1, 3, 0])
    ts = TrackSet(np.zeros((3, 4, 2), np.float32), visible, fb)
    kept = select_tracks(ts, max_tracks=3, min_visible_frames=3)
    assert kept.num_tracks == 2 and kept.visible.all()


def test_cotracker_backend_errors_and_coordinate_conversion(tmp_path, monkeypatch):
    cfg = compose_cfg("tracks.name=cotracker")
    with pytest.raises(ValueError, match="tracks.cotracker.checkpoint"):
        build_tracker(cfg.tracks)
    ckpt = tmp_path / "scaled_offline.pth"
    cfg = compose_cfg("tracks.name=cotracker", f"tracks.cotracker.checkpoint={tmp_path / 'missing.pth'}")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_tracker(cfg.tracks)
    ckpt.write_bytes(b"weights")
    cfg = compose_cfg(
        "tracks.name=cotracker", f"tracks.cotracker.checkpoint={ckpt}", "tracks.cotracker.target_points=40"
    )
    monkeypatch.setitem(sys.modules, "cotracker", None)
    monkeypatch.setitem(sys.modules, "cotracker.predictor", None)
    with pytest.raises(ImportError, match="`cotracker` package"):
        build_tracker(cfg.tracks)

    import torch

    class FakePredictor(torch.nn.Module):
        """Stands in for CoTracker: moves every query by (+2, 0) per frame, in pixel-centre coordinates."""

        def __init__(self, checkpoint):
            super().__init__()
            assert checkpoint == str(ckpt)

        def forward(self, video, queries, backward_tracking=False):
            b, t = video.shape[:2]
            steps = torch.arange(t, dtype=torch.float32)[None, :, None] - queries[:, None, :, 0]
            xy = queries[:, None, :, 1:].repeat(1, t, 1, 1)
            xy[..., 0] += 2 * steps
            return xy, torch.ones(b, t, queries.shape[1], dtype=torch.bool)

    fake = types.ModuleType("cotracker.predictor")
    fake.CoTrackerPredictor = FakePredictor
    monkeypatch.setitem(sys.modules, "cotracker", types.ModuleType("cotracker"))
    monkeypatch.setitem(sys.modules, "cotracker.predictor", fake)
    tracker = build_tracker(cfg.tracks)
    frames = np.stack([textured(64, 64, seed=3)] * 4)
    exclusion = np.zeros((4, 64, 64), bool)
    exclusion[:, :, 40:] = True
    out = tracker(frames, exclusion, (0, 0, 64, 64))
    assert out.num_tracks > 10 and np.isnan(out.fb_error).all()
    # seeds come back where they were seeded (corner origin), and visibility ends on the excluded band
    first = out.visible[0]
    gray = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    seeds = seed_points(gray, ~exclusion[0], (0, 0, 64, 64), 20, **tracker.seed_kwargs)
    np.testing.assert_allclose(out.tracks[0, : len(seeds)], seeds, atol=1e-5)
    for i in range(4):
        assert not pixel_lookup(exclusion[i], out.tracks[i][out.visible[i]]).any()
    assert first.any() and (out.tracks[3, first, 0] - out.tracks[0, first, 0] == pytest.approx(6.0))


def test_mmpose_backend_names_what_is_missing(tmp_path, monkeypatch):
    cfg = compose_cfg("pose.name=mmpose")
    with pytest.raises(ValueError, match="pose.mmpose.config"):
        build_pose_estimator(cfg.pose)
    config, ckpt = tmp_path / "rtmpose.py", tmp_path / "rtmpose.pth"
    config.write_text("model = dict()")
    cfg = compose_cfg("pose.name=mmpose", f"pose.mmpose.config={config}", f"pose.mmpose.checkpoint={ckpt}")
    with pytest.raises(FileNotFoundError, match="rtmpose.pth"):
        build_pose_estimator(cfg.pose)
    ckpt.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "mmpose", None)
    with pytest.raises(ImportError, match="`mmpose` package"):
        build_pose_estimator(cfg.pose)
    with pytest.raises(ValueError, match="pose.name must be one of"):
        build_pose_estimator(compose_cfg("pose.name=openpose").pose)


# ---- clips, shots, inputs --------------------------------------------------------------------


def test_person_crop_box_centres_on_the_person_and_stays_inside():
    person = np.zeros((2, 100, 200), bool)
    person[:, 40:60, 150:170] = True
    assert person_crop_box(person, 64, 64) == (100, 0, 100, 100)  # centre 160 -> clamped to the right edge
    person[:] = False
    person[:, 40:60, 90:110] = True
    assert person_crop_box(person, 64, 64) == (50, 0, 100, 100)
    assert clip_crop_box(person, None, "person") == (0, 0, 200, 100)
    assert clip_crop_box(person, [64, 64], "center") == (50, 0, 100, 100)
    assert clip_crop_box(person, [64, 64], "stretch") == (0, 0, 200, 100)
    with pytest.raises(ValueError, match="clips.crop"):
        clip_crop_box(person, [64, 64], "zoom")


def test_shot_cut_detector_fires_on_a_scene_change_only():
    a, b = textured(72, 96, seed=5), np.full((72, 96, 3), (30, 200, 60), np.uint8)
    det = ShotCutDetector(0.35)
    shifted = [np.roll(a, 2 * i, axis=1) for i in range(5)]
    assert [det.is_cut(f) for f in shifted] == [False] * 5
    assert det.is_cut(b) and not det.is_cut(b)
    with pytest.raises(ValueError, match="shots.threshold"):
        ShotCutDetector(1.5)


def test_parts_split_the_sorted_list_evenly():
    items = list(range(10))
    parts = [select_part(items, (i, 3)) for i in range(3)]
    assert sum(parts, []) == items and sorted(len(p) for p in parts) == [3, 3, 4]
    assert parse_part("2/4") == (2, 4) and parse_part(None) is None
    for bad in ("4/4", "1-4", "a/b"):
        with pytest.raises(ValueError, match="part must be"):
            parse_part(bad)


def test_list_videos_from_folder_list_file_and_file(tmp_path):
    (tmp_path / "a").mkdir()
    for rel in ("a/x.mp4", "a/y.MOV", "b.avi", "notes.md"):
        (tmp_path / rel).write_bytes(b"")
    from_folder = list_videos(str(tmp_path))
    assert sorted(s.path.rsplit("/", 1)[1] for s in from_folder) == ["b.avi", "x.mp4", "y.MOV"]
    listing = tmp_path / "videos.txt"
    listing.write_text("# corpus\na/x.mp4\n\nb.avi\n")
    from_list = list_videos(str(listing))
    assert [s.video_id for s in from_list] == sorted([video_id_for("a/x.mp4"), video_id_for("b.avi")])
    assert {s.video_id for s in from_list} <= {s.video_id for s in from_folder}
    assert list_videos(str(tmp_path / "b.avi"))[0].video_id == video_id_for("b.avi")
    with pytest.raises(FileNotFoundError, match="nope"):
        list_videos(str(tmp_path / "nope"))
    vid = video_id_for("dir/My clip.v2.mp4")
    assert "." not in vid and vid.startswith("My_clip_v2-")


def test_settings_ignore_run_keys():
    a = settings_of(compose_cfg("workers=1"))
    assert a == settings_of(compose_cfg("workers=2", "part=0/2"))
    assert a != settings_of(compose_cfg("clips.length=8"))
