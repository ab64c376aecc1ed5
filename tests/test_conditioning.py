"""build_conditions (the per-sample contract), track selection, collation and the body-region renderer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgbg.data.conditioning import build_conditions, collate_conditions, select_tracks
from fgbg.data.render import render_body_region
from fgbg.data.schema import NUM_KEYPOINTS, OPENPOSE18_NAMES

H = W = 32
T = 4


def t_pose(cx: float = 16.0, top: float = 4.0, s: float = 3.0) -> np.ndarray:
    """An upright OpenPose-18 figure, (K, 3), all confident; ``s`` px per body unit."""
    j = {
        "nose": (0, 0), "neck": (0, 2), "r_shoulder": (-1.5, 2), "r_elbow": (-3, 2), "r_wrist": (-4.5, 2),
        "l_shoulder": (1.5, 2), "l_elbow": (3, 2), "l_wrist": (4.5, 2), "r_hip": (-1, 5), "r_knee": (-1, 7),
        "r_ankle": (-1, 9), "l_hip": (1, 5), "l_knee": (1, 7), "l_ankle": (1, 9), "r_eye": (-0.3, -0.3),
        "l_eye": (0.3, -0.3), "r_ear": (-0.6, 0), "l_ear": (0.6, 0),
    }  # fmt: skip
    kp = np.array([[cx + s * j[n][0], top + s * j[n][1], 1.0] for n in OPENPOSE18_NAMES], np.float32)
    return kp


def inputs(n: int = 7, max_tracks: int = 10, with_frames: bool = True, link: bool = True) -> dict:
    rng = np.random.default_rng(0)
    kp = np.repeat(t_pose()[None], T, 0)
    tracks = rng.uniform(0, W, (T, n, 2)).astype(np.float32)
    out = dict(
        height=H,
        width=W,
        reference_frame=rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        reference_keypoints=kp[0],
        keypoints=kp,
        tracks=tracks,
        track_visible=np.ones((T, n), bool),
        track_anchor=tracks[0],
        track_anchor_visible=np.ones(n, bool),
        max_tracks=max_tracks,
        link_frame=rng.integers(0, 256, (H, W, 3), dtype=np.uint8) if link else None,
        key="sample0",
    )
    if with_frames:
        out.update(
            frames=rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
            masks=rng.random((T, H, W)) > 0.5,
            reference_mask=rng.random((H, W)) > 0.5,
        )
    return out


def test_training_sample_matches_the_contract():
    args = inputs()
    out = build_conditions(**args)
    shapes = {
        "frames": (T, 3, H, W), "reference": (3, H, W), "reference_mask": (1, H, W),
        "reference_keypoints": (NUM_KEYPOINTS, 3), "pose_maps": (T, 3, H, W), "keypoints": (T, NUM_KEYPOINTS, 3),
        "masks": (T, 1, H, W), "body_region": (T, 1, H, W), "tracks": (T, 10, 2), "track_visible": (T, 10),
        "track_valid": (10,), "track_anchor": (10, 2), "track_anchor_visible": (10,), "track_maps": (T, 3, H, W),
        "link_frame": (3, H, W), "link_available": (),
    }  # fmt: skip
    assert set(out) == set(shapes) | {"key"}
    for name, shape in shapes.items():
        assert out[name].shape == shape, name
    for name in ("frames", "reference", "link_frame"):
        assert out[name].dtype == np.float32 and -1 <= out[name].min() and out[name].max() <= 1
    np.testing.assert_allclose(out["frames"][0, :, 3, 5], args["frames"][0, 3, 5] / 127.5 - 1, atol=1e-6)
    assert set(np.unique(out["masks"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(out["track_valid"], np.arange(10) < 7)
    assert not out["track_visible"][:, 7:].any() and not out["track_anchor_visible"][7:].any()
    assert out["link_available"] and out["pose_maps"].max() > 0.5
    # Frame 0's track map shows presence at the tracks and zero displacement (anchor = frame 0).
    assert out["track_maps"][0, 2].max() > 0.5
    np.testing.assert_allclose(out["track_maps"][0, :2], 0, atol=1e-6)


def test_generation_sample_needs_no_frames_or_link():
    out = build_conditions(**inputs(with_frames=False, link=False))
    assert "frames" not in out and "masks" not in out and "reference_mask" not in out
    assert not out["link_available"]
    np.testing.assert_array_equal(out["link_frame"], 0)
    assert out["body_region"].shape == (T, 1, H, W)


def test_bad_inputs_name_the_sample_and_the_problem():
    with pytest.raises(ValueError, match=r"12 tracks given but max_tracks=10 \(sample 'sample0'\)"):
        build_conditions(**inputs(n=12))
    bad = inputs()
    bad["keypoints"] = bad["keypoints"][:2]
    with pytest.raises(ValueError, match="must share T frames"):
        build_conditions(**bad)
    bad = inputs()
    bad["reference_frame"] = bad["reference_frame"][:16]
    with pytest.raises(ValueError, match="reference_frame must be"):
        build_conditions(**bad)


def test_select_tracks_prefers_points_seen_in_the_reference():
    rng = np.random.default_rng(0)
    seen = np.zeros(100, bool)
    seen[:30] = True
    for _ in range(50):
        idx = select_tracks(rng, seen, 5, 50)
        assert 5 <= len(idx) <= 50 and len(set(idx.tolist())) == len(idx)
        n_seen = min(len(idx), 30)
        assert seen[idx[:n_seen]].all() and not seen[idx[n_seen:]].any()
    assert len(select_tracks(rng, np.ones(3, bool), 5, 50)) == 3  # all a clip has
    with pytest.raises(ValueError, match="min_tracks"):
        select_tracks(rng, seen, 10, 5)


def test_collate_stacks_and_keeps_bools_and_keys():
    a, b = build_conditions(**inputs()), build_conditions(**{**inputs(), "key": "sample1"})
    batch = collate_conditions([a, b])
    assert batch["key"] == ["sample0", "sample1"]
    assert batch["frames"].shape == (2, T, 3, H, W) and batch["frames"].dtype == torch.float32
    assert batch["track_visible"].dtype == torch.bool and batch["link_available"].shape == (2,)
    del b["frames"]
    with pytest.raises(ValueError, match="different keys"):
        collate_conditions([a, b])


def test_body_region_covers_the_figure_and_only_near_it():
    kp = t_pose()
    region = render_body_region(kp[None], H, W)
    assert region.shape == (1, 1, H, W) and set(np.unique(region)) <= {0.0, 1.0}
    r = region[0, 0]
    # Every joint and the middle of every drawn limb lies inside the region.
    for x, y, _ in kp:
        assert r[int(y), int(x)] == 1
    for a, b in ((2, 3), (9, 10), (1, 8)):
        mx, my = (kp[a, :2] + kp[b, :2]) / 2
        assert r[int(my), int(mx)] == 1
    # The torso between shoulders and hips is filled, far corners are not.
    assert r[int(kp[1, 1]) + 4, int(kp[1, 0])] == 1
    assert r[0, 0] == 0 and r[H - 1, 0] == 0 and r[0, W - 1] == 0
    assert 0.1 < r.mean() < 0.6
    # Limbs thicken with the person's size: twice the size, well over twice the area.
    small = render_body_region(t_pose(cx=32, top=8, s=2)[None], 64, 64).sum()
    large = render_body_region(t_pose(cx=32, top=8, s=4)[None], 64, 64).sum()
    assert large > 3 * small


def test_body_region_ignores_unconfident_keypoints():
    kp = t_pose()
    kp[:, 2] = 0.1
    assert render_body_region(kp[None], H, W).max() == 0
    kp[OPENPOSE18_NAMES.index("nose"), 2] = 1.0
    only_head = render_body_region(kp[None], H, W)[0, 0]
    assert only_head[int(kp[0, 1]), int(kp[0, 0])] == 1 and only_head.mean() < 0.1
    with pytest.raises(ValueError, match=r"\(T, K >= 18, 3\)"):
        render_body_region(kp, H, W)
