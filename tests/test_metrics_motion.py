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


def _zooming_pan(num_frames: int, size: int = 48, seed: int = 0):
    """A camera panning 1.5 px/frame right and zooming out slightly over a smooth texture, with its exact tracks.

    Returns frames (T, 3, size, size) in [0, 1], person masks (T, 1, size, size), tracks (T, N, 2), visible (T, N).
    """
    world = _texture(4 * size, 4 * size, seed, blur=3.0).astype(np.float32) / 255
    cameras = []
    for t in range(num_frames):
        s, tx = 1.0 + 0.004 * t, size * 1.5 + 1.5 * t  # frame pixel q shows world point s * q + (tx, size * 1.5)
        cameras.append(np.array([[s, 0, tx], [0, s, size * 1.5]], np.float32))
    frames = np.stack([cv2.warpAffine(world, c, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
                       for c in cameras])  # fmt: skip
    # background points on a 5 px world grid over everything the camera shows, visible while inside the frame
    xs = np.arange(size * 1.5 + 2.5, size * 1.5 + 1.5 * num_frames + 1.2 * size, 5)
    ys = np.arange(size * 1.5 + 2.5, size * 1.5 + 1.2 * size, 5)
    world_pts = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    tracks = np.stack([(world_pts - c[:, 2]) / c[0, 0] for c in cameras]).astype(np.float32)
    visible = ((tracks >= 1) & (tracks <= size - 1)).all(-1)
    masks = torch.zeros(num_frames, 1, size, size)
    masks[:, :, 20:40, 6:14] = 1  # a person standing on the left of the frame
    return torch.from_numpy(frames).permute(0, 3, 1, 2), masks, tracks, visible


def test_camera_from_tracks_recovers_a_pan_and_zoom_and_seen_background_shrinks_with_it():
    from fgbg.eval.longvideo import camera_from_tracks, seen_background
    from fgbg.utils.geometry import warp_affine

    frames, masks, tracks, visible = _zooming_pan(40)
    camera = camera_from_tracks(tracks, visible)
    assert camera.shape == (40, 2, 3)
    # frame 0 -> t: q_t = (q_0 * s_0 + t_0 - t_t) / s_t
    for t in (5, 20, 39):
        s = 1 + 0.004 * t
        expected = np.array([[1 / s, 0, -1.5 * t / s], [0, 1 / s, 0]])
        np.testing.assert_allclose(camera[t].numpy(), expected, atol=0.02)
    assert not visible[39][visible[0]].any()  # frame 39 shows none of frame 0's points: chained through the pan
    # nothing links two frames: the camera is unknown (NaN) until frame 0's points come back
    gap = visible.copy()
    gap[10] = False
    unknown = camera_from_tracks(tracks, gap)
    assert torch.isnan(unknown[10]).all() and torch.isfinite(unknown[9]).all()
    np.testing.assert_allclose(unknown[11:].numpy(), camera[11:].numpy(), atol=1e-6)  # frame 11 sees frame 0's points

    seen = seen_background(masks[0, 0], masks, camera)
    share = seen.mean(dim=(1, 2, 3))
    assert share[0] > 0.7 and all(b <= a + 1e-6 for a, b in zip(share, share[1:], strict=False))
    assert float(seen[:, :, 20:40, 6:14].sum()) == 0  # never on the person
    # the warped first frame is the truth where it counts (bilinear resampling aside)
    warped = warp_affine(frames[:1].expand(40, -1, -1, -1), camera.float(), (48, 48))
    err = ((warped - frames).abs() * seen).sum() / (seen.sum() * 3)
    assert float(err) < 0.01


def test_seen_colour_error_is_zero_for_the_truth_and_catches_drift_but_not_new_content():
    from fgbg.eval.longvideo import colour_error, seen_colour_error

    frames, masks, tracks, visible = _zooming_pan(32)
    same = seen_colour_error(frames, frames, masks, tracks, visible, clip_length=8)
    assert same["colour_error_seen_background"] == pytest.approx([0.0] * 4, abs=1e-4)
    assert same["seen_background_fraction"][0] > 0.5 > same["seen_background_fraction_last"] > 0.02
    # a model that paints the background never seen in frame 0 wrong, and the rest right
    from fgbg.eval.longvideo import camera_from_tracks, seen_background

    seen = seen_background(masks[0, 0], masks, camera_from_tracks(tracks, visible))
    unseen_wrong = torch.where((seen == 0) & (masks == 0), torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1), frames)
    assert seen_colour_error(unseen_wrong, frames, masks, tracks, visible, 8)["colour_error_seen_background_last"] < 1
    assert colour_error(unseen_wrong, frames, masks, 8)["colour_error_background_last"] > 5
    # a model whose colours wander: red creeps in clip by clip
    drifting = frames.clone()
    drifting[:, 0] = (drifting[:, 0] + torch.linspace(0, 0.25, 32)[:, None, None]).clamp(0, 1)
    err = seen_colour_error(drifting, frames, masks, tracks, visible, 8)["colour_error_seen_background"]
    assert all(b > a for a, b in zip(err, err[1:], strict=False)) and err[-1] > 8
    # frame 0's points hidden from frame 16 on and nothing linking frame 16 to 15: the camera is unknown, NaN
    lost = visible & ~visible[0][None]
    lost[:16] = visible[:16]
    lost[16] = False
    far = seen_colour_error(frames, frames, masks, tracks, lost, 8)
    assert far["colour_error_seen_background"][1] == pytest.approx(0.0, abs=1e-4)
    assert math.isnan(far["colour_error_seen_background_last"]) and far["seen_background_fraction_last"] == 0
    # a sample without background tracks: only frame 0 is known, nothing fails
    none = seen_colour_error(frames, frames, masks, np.zeros((32, 0, 2), np.float32), np.zeros((32, 0), bool), 8)
    assert none["colour_error_seen_background"][0] == pytest.approx(0.0, abs=1e-4)
    assert math.isnan(none["colour_error_seen_background_last"])
    with pytest.raises(ValueError, match="tracks: expected 32 frames"):
        seen_colour_error(frames, frames, masks, tracks[:10], visible[:10], 8)


def test_track_error_per_clip_reseeds_each_clip_and_the_truth_gate_drops_what_lk_cannot_follow():
    from fgbg.eval.motion import track_following_error_per_clip

    t_len, n = 13, None
    big = _texture(H, W + SHIFT * t_len)
    video = np.stack([big[:, SHIFT * t : SHIFT * t + W] for t in range(t_len)])
    queries = _query_grid()
    n = len(queries)
    true = queries[None] - np.array([SHIFT, 0], np.float32) * np.arange(t_len)[:, None, None]
    visible = np.ones((t_len, n), bool)
    right = track_following_error_per_clip(video, true, visible, clip_length=4, truth=video)
    assert right["track_error_clip_px"] < 0.1 and right["track_lost_fraction_clip"] == 0
    assert right["track_error_clip_px_truth"] < 0.1
    assert right["track_trusted_fraction"] > 0.95 and len(right["track_error_clip_per_clip"]) == 3
    # a video that stands still: each window errs by SHIFT * (1..4) px from its own start, not by the whole pan
    still = np.repeat(video[:1], t_len, axis=0)
    wrong = track_following_error_per_clip(still, true, visible, clip_length=4, truth=video)
    assert wrong["track_error_clip_px"] == pytest.approx(SHIFT * 2.5, abs=0.2)
    # a background that LK cannot follow in the truth either (flat grey) is gated out, not scored
    flat = video.copy()
    flat[:, :, : W // 2] = 128
    gated = track_following_error_per_clip(flat, true, visible, clip_length=4, truth=flat)
    assert 0.2 < gated["track_trusted_fraction"] < 0.8 and gated["track_error_clip_px"] < 0.5  # under trust_px
    ungated = track_following_error_per_clip(flat, true, visible, clip_length=4)
    assert math.isnan(ungated["track_trusted_fraction"]) and ungated["track_lost_fraction_clip"] > 0.2
    with pytest.raises(ValueError, match="truth: expected"):
        track_following_error_per_clip(video, true, visible, 4, truth=video[:5])
