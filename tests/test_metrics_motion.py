"""Track-following error, seam score and colour drift on videos with known answers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from fgbg.eval.longvideo import colour_drift, rgb_to_lab, seam_score
from fgbg.eval.motion import track_following_error, track_queries

H, W, T, SHIFT = 64, 80, 6, 2  # SHIFT pixels of camera pan per frame


def _texture(h: int, w: int, seed: int = 0, blur: float = 2.0) -> np.ndarray:
    """Smooth random RGB texture (uint8), trackable by LK; ``blur`` is the Gaussian sigma in pixels."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), blur)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    return smooth.astype(np.uint8)


def _panning_video() -> np.ndarray:
    """(T, H, W, 3): a window sliding right over a texture by SHIFT px per frame, so content moves left."""
    big = _texture(H, W + SHIFT * T)
    return np.stack([big[:, SHIFT * t : SHIFT * t + W] for t in range(T)])


def _query_grid() -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(24.5, 72, 8), np.arange(12.5, 56, 8))
    return np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)  # pixel centres, corner origin


def test_tracking_a_pan_recovers_the_shift():
    queries = _query_grid()
    tracks, visible = track_queries(_panning_video(), queries)
    assert visible.all()
    expected = queries[None] - np.array([SHIFT, 0], np.float32) * np.arange(T)[:, None, None]
    np.testing.assert_allclose(tracks, expected, atol=0.1)


def test_track_error_is_shift_times_frame_against_static_tracks_and_zero_against_true_ones():
    video, queries = _panning_video(), _query_grid()
    n = len(queries)
    static = np.repeat(queries[None], T, axis=0)
    true = queries[None] - np.array([SHIFT, 0], np.float32) * np.arange(T)[:, None, None]
    visible = np.ones((T, n), bool)

    wrong = track_following_error(video, static, visible)
    np.testing.assert_allclose(wrong["track_error_per_frame"][1:], SHIFT * np.arange(1, T), atol=0.1)
    assert math.isnan(wrong["track_error_per_frame"][0])
    assert wrong["track_error_px"] == pytest.approx(SHIFT * np.arange(1, T).mean(), abs=0.1)
    assert wrong["track_error_count"] == (T - 1) * n and wrong["track_error_points"] == n

    right = track_following_error(video, true, visible)
    assert right["track_error_px"] < 0.1 and right["track_lost_fraction"] == 0.0


def test_identical_static_video_gives_zero_error():
    video = np.repeat(_texture(H, W)[None], T, axis=0)
    tracks = np.repeat(_query_grid()[None], T, axis=0)
    result = track_following_error(
        torch.from_numpy(video).permute(0, 3, 1, 2) / 255.0, tracks, np.ones(tracks.shape[:2])
    )
    assert result["track_error_px"] == pytest.approx(0.0, abs=1e-3)


def test_only_points_visible_in_both_count_and_lost_points_are_reported():
    video, queries = _panning_video(), _query_grid()
    n = len(queries)
    true = queries[None] - np.array([SHIFT, 0], np.float32) * np.arange(T)[:, None, None]
    visible = np.ones((T, n), bool)
    visible[:, 0] = False  # not a valid query
    visible[3:, 1] = False  # occluded in the conditioning from frame 3
    video = video.copy()
    video[4:] = _texture(H, W, seed=9)  # the generated background dissolves at frame 4
    result = track_following_error(video, true, visible)
    # frames 1..3 track; point 0 never counts, point 1 only in frames 1 and 2
    assert result["track_error_count"] == 3 * (n - 1) - 1
    assert result["track_error_px"] < 0.1
    assert result["track_lost_fraction"] == pytest.approx(1 - result["track_error_count"] / visible[1:].sum())
    assert np.isnan(result["track_error_per_frame"][4:]).all()


def test_track_error_input_errors():
    video, queries = _panning_video(), _query_grid()
    with pytest.raises(ValueError, match="cond_tracks"):
        track_following_error(video, np.zeros((T + 1, len(queries), 2)), np.ones((T + 1, len(queries))))
    with pytest.raises(ValueError, match="cond_visible"):
        track_following_error(video, np.zeros((T, len(queries), 2)), np.ones((T, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        track_queries(video.astype(np.float32), queries)


def _smooth_video(num_frames: int = 24, seed: int = 0) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1]: a texture as smooth as natural footage, panning by 1 px per frame."""
    big = _texture(32, 48 + num_frames, seed, blur=4.0)
    frames = np.stack([big[:, t : t + 48] for t in range(num_frames)])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


def test_seam_score_is_about_one_for_a_smooth_video_and_high_for_cuts():
    smooth = seam_score(_smooth_video(), clip_length=8)
    assert smooth["seam_score"] == pytest.approx(1.0, abs=0.15)
    assert smooth["seam_boundaries"] == 2
    cut = _smooth_video()
    cut[8:16] = _smooth_video(seed=1)[8:16]  # clip 2 is a different shot
    cut[16:] = _smooth_video(seed=2)[16:]  # and so is clip 3
    result = seam_score(cut, clip_length=8)
    assert result["seam_score"] > 5
    assert result["seam_inner_diff"] == pytest.approx(smooth["seam_inner_diff"], rel=0.1)


def test_seam_score_edge_cases():
    still = torch.full((16, 3, 8, 8), 0.5)
    assert seam_score(still, clip_length=8)["seam_score"] == 1.0
    jump = still.clone()
    jump[8:] = 0.7
    assert seam_score(jump, clip_length=8)["seam_score"] == math.inf
    with pytest.raises(ValueError, match="fewer than 2 clips"):
        seam_score(still[:8], clip_length=8)
    with pytest.raises(ValueError, match="clip_length"):
        seam_score(still, clip_length=1)


def test_rgb_to_lab_matches_skimage():
    color = pytest.importorskip("skimage.color")
    rgb = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = rgb_to_lab(rgb).permute(0, 2, 3, 1).numpy()
    theirs = color.rgb2lab(rgb.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def _person_mask(num_frames: int) -> torch.Tensor:
    mask = torch.zeros(num_frames, 1, 16, 16)
    mask[:, :, 4:12, 5:11] = 1
    return mask


def test_colour_drift_grows_with_a_progressive_shift_and_is_zero_when_constant():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 16, 16, generator=g) * 0.5 + 0.2
    num_frames, clip_length = 20, 4
    constant = base.repeat(num_frames, 1, 1, 1)
    mask = _person_mask(num_frames)
    still = colour_drift(constant, mask, clip_length)
    assert still["colour_drift_background"] == [0.0] * 5 and still["colour_drift_person_last"] == 0.0

    warming = torch.tensor([0.02, 0.0, -0.02]).view(1, 3, 1, 1) * torch.arange(num_frames).view(-1, 1, 1, 1)
    drifting = (constant + warming * (1 - mask)).clamp(0, 1)  # only the background turns warmer
    result = colour_drift(drifting, mask, clip_length)
    drift = result["colour_drift_background"]
    assert drift[0] == 0.0 and all(later > earlier for earlier, later in zip(drift, drift[1:]))
    assert result["colour_drift_background_last"] == drift[-1] > 10  # clearly visible (Delta E ~2 is just visible)
    assert result["colour_drift_person_last"] == pytest.approx(0.0, abs=1e-4)


def test_colour_drift_counts_a_short_last_clip_and_marks_missing_regions():
    video = torch.full((10, 3, 16, 16), 0.5)
    mask = _person_mask(10)
    mask[:4] = 0  # no person in clip 1
    result = colour_drift(video, mask, clip_length=4)
    assert len(result["colour_drift_background"]) == 3  # clips of 4, 4 and 2 frames
    assert all(math.isnan(v) for v in result["colour_drift_person"])
    with pytest.raises(ValueError, match="mask"):
        colour_drift(video, mask[:9], clip_length=4)


def test_colour_error_ignores_true_colour_change_and_catches_drift_from_the_truth():
    from fgbg.eval.longvideo import colour_error

    clip_length, t = 4, 16
    ramp = torch.linspace(0.2, 0.8, t)[:, None, None, None].expand(t, 3, 8, 8).clone()  # the truth brightens
    mask = torch.zeros(t, 1, 8, 8)
    mask[:, :, 2:5, 2:5] = 1
    same = colour_error(ramp, ramp, mask, clip_length)
    assert same["colour_error_background"] == pytest.approx([0.0] * 4, abs=1e-4)
    drifting = ramp.clone()
    drifting[:, 0] = (drifting[:, 0] + torch.linspace(0, 0.3, t)[:, None, None]).clamp(0, 1)  # red creeps in
    err = colour_error(drifting, ramp, mask, clip_length)["colour_error_background"]
    assert all(b > a for a, b in zip(err, err[1:], strict=False)) and err[-1] > 10
    with pytest.raises(ValueError, match="truth: expected"):
        colour_error(ramp, ramp[:8], mask, clip_length)
