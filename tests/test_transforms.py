"""Joint crop / resize / flip of clips: pixels, keypoints and tracks stay together."""

from __future__ import annotations

import numpy as np
import pytest

from fgbg.data.schema import NUM_KEYPOINTS, OPENPOSE18_FLIP, OPENPOSE18_NAMES, Clip
from fgbg.data.transforms import (
    augment_clip,
    center_crop_box,
    crop_clip,
    fit_clip,
    hflip_clip,
    random_crop_box,
    resize_clip,
)


def coordinate_clip(h: int = 24, w: int = 24, t: int = 3, n: int = 40, seed: int = 0) -> Clip:
    """Frames whose pixel [i, j] of frame t holds (i, j, t): every pixel names its own origin.

    Keypoints and tracks sit on pixel centres, so nearest-neighbour upscaling keeps
    them over their pixel exactly.
    """
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    frames = np.stack([np.stack([ii, jj, np.full_like(ii, k)], -1) for k in range(t)]).astype(np.uint8)
    kp_px = rng.integers(0, [w, h], (t, NUM_KEYPOINTS, 2))
    pose = np.concatenate([kp_px + 0.5, rng.uniform(0.5, 1.0, (t, NUM_KEYPOINTS, 1))], -1).astype(np.float32)
    tracks = (rng.integers(0, [w, h], (t, n, 2)) + 0.5).astype(np.float32)
    return Clip(
        frames=frames,
        masks=np.broadcast_to((ii + jj) % 3 == 0, (t, h, w)).copy(),
        pose=pose,
        tracks=tracks,
        visible=rng.random((t, n)) > 0.2,
        meta={"fps": 8, "source": "test", "pose_estimator": "none", "tracker": "none"},
        key="coords",
    )


def pixel_under(frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(T, H, W, 3), (T, M, 2) -> (T, M, 3): the pixel under each point (corner-origin convention)."""
    t_idx = np.arange(frames.shape[0])[:, None]
    return frames[t_idx, np.floor(points[..., 1]).astype(int), np.floor(points[..., 0]).astype(int)]


def assert_points_follow_pixels(before: Clip, after: Clip, joint_source: np.ndarray) -> None:
    """Every kept keypoint / visible track of ``after`` lies over the pixel that was under it in ``before``.

    joint_source[k]: the joint of ``before`` that moved into slot k of ``after``.
    """
    kp_ok = after.pose[..., 2] > 0
    assert kp_ok.any()
    got = pixel_under(after.frames, np.where(kp_ok[..., None], after.pose[..., :2], 0.5))
    want = pixel_under(before.frames, before.pose[:, joint_source, :2])
    np.testing.assert_array_equal(got[kp_ok], want[kp_ok])
    # A joint keeps its confidence when it stays in view.
    np.testing.assert_array_equal(after.pose[..., 2][kp_ok], before.pose[:, joint_source, 2][kp_ok])

    tr_ok = after.visible
    assert tr_ok.any()
    got = pixel_under(after.frames, np.where(tr_ok[..., None], after.tracks, 0.5))
    want = pixel_under(before.frames, before.tracks)
    np.testing.assert_array_equal(got[tr_ok], want[tr_ok])
    assert not (after.visible & ~before.visible).any(), "a hidden track became visible"


def test_crop_resize_flip_keep_points_on_their_pixels():
    clip = coordinate_clip()
    out = hflip_clip(resize_clip(crop_clip(clip, (3, 5, 8, 8)), 32, 32, "nearest"))  # x4 upscale
    assert out.frames.shape == (3, 32, 32, 3) and out.masks.shape == (3, 32, 32)
    assert_points_follow_pixels(clip, out, np.array(OPENPOSE18_FLIP))
    # Points outside the crop box are marked, those inside are not.
    inside = (clip.pose[..., 0] >= 3) & (clip.pose[..., 0] < 11) & (clip.pose[..., 1] >= 5) & (clip.pose[..., 1] < 13)
    np.testing.assert_array_equal(out.pose[..., 2] > 0, inside[:, list(OPENPOSE18_FLIP)])


@pytest.mark.parametrize("seed", range(12))
def test_random_augmentation_keeps_points_on_their_pixels(seed):
    clip = coordinate_clip(seed=seed)
    rng = np.random.default_rng(seed)
    # Crops of a 24 px source are at most 24 px: resizing to 32 always enlarges, so nearest is exact.
    out = augment_clip(clip, rng, 32, 32, crop_scale=(0.4, 1.0), flip_prob=0.5, interpolation="nearest")
    flipped = np.random.default_rng(seed)
    random_crop_box(flipped, 24, 24, 32, 32, (0.4, 1.0))
    joint_source = np.array(OPENPOSE18_FLIP) if flipped.random() < 0.5 else np.arange(NUM_KEYPOINTS)
    assert_points_follow_pixels(clip, out, joint_source)


def test_flip_swaps_left_and_right_joints():
    clip = coordinate_clip(t=1)
    l_wrist, r_wrist = OPENPOSE18_NAMES.index("l_wrist"), OPENPOSE18_NAMES.index("r_wrist")
    clip.pose[0, l_wrist] = (2.5, 7.5, 0.9)
    clip.pose[0, r_wrist] = (20.5, 7.5, 0.8)
    out = hflip_clip(clip)
    np.testing.assert_allclose(out.pose[0, r_wrist], (24 - 2.5, 7.5, 0.9))
    np.testing.assert_allclose(out.pose[0, l_wrist], (24 - 20.5, 7.5, 0.8))
    np.testing.assert_array_equal(out.frames[0, :, 0], clip.frames[0, :, -1])
    twice = hflip_clip(out)
    np.testing.assert_array_equal(twice.frames, clip.frames)
    np.testing.assert_allclose(twice.pose, clip.pose)
    np.testing.assert_allclose(twice.tracks, clip.tracks)


def test_points_leaving_the_frame_are_marked_and_kept():
    clip = coordinate_clip(t=1, n=2)
    clip.tracks[0] = [[1.5, 1.5], [18.5, 19.5]]
    clip.visible[0] = True
    out = crop_clip(clip, (4, 4, 16, 16))
    np.testing.assert_array_equal(out.visible[0], [False, True])
    np.testing.assert_allclose(out.tracks[0], [[-2.5, -2.5], [14.5, 15.5]])  # positions kept
    assert np.all(out.pose[0, :, 2][(out.pose[0, :, 0] < 0) | (out.pose[0, :, 0] >= 16)] == 0)


def test_resize_scales_points_per_axis_and_keeps_masks_binary():
    clip = coordinate_clip(h=24, w=48, t=2)
    out = resize_clip(clip, 12, 16)  # area filter, x / 3 and y / 2
    np.testing.assert_allclose(out.tracks, clip.tracks * np.array([16 / 48, 12 / 24], np.float32), rtol=1e-6)
    np.testing.assert_allclose(out.pose[..., :2], clip.pose[..., :2] * np.array([1 / 3, 1 / 2], np.float32), rtol=1e-6)
    assert out.masks.dtype == bool and out.masks.shape == (2, 12, 16)
    flat = resize_clip(
        Clip(np.full((2, 24, 48, 3), 77, np.uint8), clip.masks, clip.pose, clip.tracks, clip.visible, clip.meta), 10, 10
    )
    assert np.all(flat.frames == 77)  # a filter that averages keeps a constant image constant
    with pytest.raises(ValueError, match="interpolation"):
        resize_clip(clip, 10, 10, "cubic-ish")


def test_crop_boxes_keep_the_output_aspect_and_fit():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, cw, ch = random_crop_box(rng, 48, 64, 32, 32, (0.5, 1.0))
        assert cw == ch and 24 <= cw <= 48
        assert 0 <= x0 <= 64 - cw and 0 <= y0 <= 48 - ch
    assert center_crop_box(48, 64, 32, 32) == (8, 0, 48, 48)
    with pytest.raises(ValueError, match="crop scale"):
        random_crop_box(rng, 48, 64, 32, 32, (0.0, 1.0))
    with pytest.raises(ValueError, match="does not fit"):
        crop_clip(coordinate_clip(), (20, 0, 8, 8))


def test_fit_clip_centre_crops_a_wide_clip_deterministically():
    clip = coordinate_clip(h=24, w=48, t=1)
    out = fit_clip(clip, 24, 24)
    np.testing.assert_array_equal(out.frames[0], clip.frames[0, :, 12:36])
    np.testing.assert_allclose(out.tracks, clip.tracks - np.array([12, 0], np.float32))
