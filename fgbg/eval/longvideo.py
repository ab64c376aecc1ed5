"""Long-video measures: seam score at clip boundaries and colour drift over clips.

A long video is generated clip by clip and stored as the plain concatenation of its clips:
frames ``[k * clip_length, (k + 1) * clip_length)`` are clip k (the last clip may be shorter).
Videos are torch float RGB in [0, 1], (T, 3, H, W); person masks (T, 1, H, W) in {0, 1}.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fgbg.eval.metrics import as_frames

# sRGB (D65) -> CIE XYZ, and the D65 reference white; the CIE Lab formulas as in skimage.color.rgb2lab.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)


def _check_video(video: Tensor, name: str = "video") -> Tensor:
    if video.ndim != 4:
        raise ValueError(f"{name}: expected one video (T, 3, H, W), got {tuple(video.shape)}")
    video = as_frames(video, name)
    if not video.is_floating_point() or (video.numel() and (video.min() < 0 or video.max() > 1)):
        raise ValueError(f"{name}: expected float values in [0, 1]")
    return video.float()


def _check_clip_length(clip_length: int, num_frames: int, min_clips: int) -> None:
    if clip_length < 2:
        raise ValueError(f"clip_length must be at least 2 (frames inside a clip are compared), got {clip_length}")
    if num_frames < (min_clips - 1) * clip_length + 1:
        raise ValueError(f"a video of {num_frames} frames holds fewer than {min_clips} clips of {clip_length} frames")


def seam_score(video: Tensor, clip_length: int) -> dict[str, float | int]:
    """Mean absolute frame difference across clip boundaries over that inside clips.

    video (T, 3, H, W) in [0, 1], at least two clips. The difference of frames t and t+1 is the mean
    |f[t+1] - f[t]| over pixels and channels; the pair crosses a boundary when t+1 is a multiple of
    ``clip_length``. A seamless video scores about 1, a hard cut at each boundary far above 1.
    A video with no change inside clips scores 1 if it also has none across them, else inf.

    Returns ``seam_score``, ``seam_boundary_diff``, ``seam_inner_diff``, ``seam_boundaries``.
    """
    video = _check_video(video)
    _check_clip_length(clip_length, video.shape[0], min_clips=2)
    diffs = (video[1:] - video[:-1]).abs().mean(dim=(1, 2, 3))  # (T-1,), pair t -> t+1
    crosses = (torch.arange(1, video.shape[0], device=video.device) % clip_length) == 0
    boundary, inner = float(diffs[crosses].mean()), float(diffs[~crosses].mean())
    if inner > 0:
        score = boundary / inner
    else:
        score = 1.0 if boundary == 0 else math.inf
    return {
        "seam_score": score,
        "seam_boundary_diff": boundary,
        "seam_inner_diff": inner,
        "seam_boundaries": int(crosses.sum()),
    }


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB (..., 3, H, W) in [0, 1] -> CIE Lab (..., 3, H, W) under D65 (L in [0, 100]).

    Written here (a few lines of the standard formulas) to avoid a kornia/skimage dependency;
    tested against ``skimage.color.rgb2lab``.
    """
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(_D65_WHITE, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,...jhw->...ihw", matrix, linear) / white[:, None, None]
    delta = 6 / 29
    f = torch.where(xyz > delta**3, xyz.clamp_min(delta**3) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29)
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=-3)


def _region_weights(video: Tensor, mask: Tensor) -> Tensor:
    mask = as_frames(mask, "mask", channels=1)
    if mask.shape[0] != video.shape[0] or mask.shape[-2:] != video.shape[-2:]:
        raise ValueError(
            f"mask: expected {(video.shape[0], 1, *video.shape[-2:])} to match the video, got {tuple(mask.shape)}"
        )
    person = mask.float()
    if not torch.all((person == 0) | (person == 1)):
        raise ValueError("mask: expected values in {0, 1}")
    return person


def _clip_means(lab: Tensor, weight: Tensor, clip_length: int) -> list[Tensor | None]:
    """Mean Lab colour (3,) over the weighted pixels of each clip; None where the region is absent."""
    means = []
    for start in range(0, lab.shape[0], clip_length):
        w = weight[start : start + clip_length]
        count = w.sum()
        means.append((lab[start : start + clip_length] * w).sum(dim=(0, 2, 3)) / count if count > 0 else None)
    return means


def _delta_e(a: Tensor | None, b: Tensor | None) -> float:
    return float(torch.linalg.vector_norm(a - b)) if a is not None and b is not None else math.nan


def _clip_errors(lab: Tensor, lab_true: Tensor, weight: Tensor, clip_length: int) -> list[float]:
    """Per clip, the Delta E between the two videos' mean Lab colour over the weighted pixels (NaN if none)."""
    means, true_means = _clip_means(lab, weight, clip_length), _clip_means(lab_true, weight, clip_length)
    return [_delta_e(a, b) for a, b in zip(means, true_means, strict=True)]


def colour_drift(video: Tensor, mask: Tensor, clip_length: int) -> dict[str, float | list[float]]:
    """Colour drift of background and person, clip k against clip 1, as CIE76 Delta E.

    video (T, 3, H, W) in [0, 1]; mask (T, 1, H, W) in {0, 1}, 1 on the person. For each clip and
    region, the mean CIE Lab colour over all the region's pixels in the clip's frames; the drift of
    clip k is the Euclidean distance (Delta E 1976) between its mean and clip 1's. A region absent
    from clip 1 or clip k gives NaN for clip k. A Delta E near 2 is about the smallest visible change.
    With a moving camera the true video drifts too (new background enters the view); ``colour_error``
    measures the generated colour against the true one instead.

    Returns ``colour_drift_background`` / ``colour_drift_person``: lists with one value per clip
    (the first is 0), and ``colour_drift_background_last`` / ``colour_drift_person_last``: the last clip's.
    """
    video = _check_video(video)
    person = _region_weights(video, mask)
    _check_clip_length(clip_length, video.shape[0], min_clips=1)
    lab = rgb_to_lab(video)
    result: dict[str, float | list[float]] = {}
    for region, weight in (("background", 1 - person), ("person", person)):
        means = _clip_means(lab, weight, clip_length)
        drift = [_delta_e(m, means[0]) for m in means]
        result[f"colour_drift_{region}"] = drift
        result[f"colour_drift_{region}_last"] = drift[-1]
    return result


def colour_error(video: Tensor, truth: Tensor, mask: Tensor, clip_length: int) -> dict[str, float | list[float]]:
    """Per clip, the Delta E between the generated and the true mean Lab colour of each region.

    video, truth (T, 3, H, W) in [0, 1]; mask (T, 1, H, W) in {0, 1} (the true person mask, used for
    both). Colour that drifts away from the truth over a long video shows as a growing error, while
    colour change the true video has itself (a panning camera) does not count.
    Returns ``colour_error_{background,person}`` (one value per clip) and ``..._last``.
    """
    video, truth = _check_video(video), _check_video(truth, "truth")
    if truth.shape != video.shape:
        raise ValueError(f"truth: expected {tuple(video.shape)} like the video, got {tuple(truth.shape)}")
    person = _region_weights(video, mask)
    _check_clip_length(clip_length, video.shape[0], min_clips=1)
    lab, lab_true = rgb_to_lab(video), rgb_to_lab(truth)
    result: dict[str, float | list[float]] = {}
    for region, weight in (("background", 1 - person), ("person", person)):
        err = _clip_errors(lab, lab_true, weight, clip_length)
        result[f"colour_error_{region}"] = err
        result[f"colour_error_{region}_last"] = err[-1]
    return result


def camera_from_tracks(tracks, visible, min_direct: int = 8) -> Tensor:
    """The camera's affine from frame 0 to every frame, recovered from background tracks.

    tracks (T, N, 2) pixel x/y (``fgbg.data.schema``), visible (T, N) bool. Frame t's affine is fitted
    robustly (``fgbg.utils.geometry.fit_affine_robust``, tracks that move on their own get no weight)
    to the points visible in frame 0 and frame t when there are at least ``min_direct`` of them and they
    spread at least half as wide, in x and in y, as all of frame t's visible points (a thin band of them
    at the frame's edge would leave the scale unknown); otherwise it is chained from frame t-1's through
    the frame-to-frame fit on the points visible in both (a pan that leaves frame 0's points behind).
    Returns (T, 2, 3) float64; frame 0 is the identity; NaN where neither way has 3 points.
    """
    from fgbg.utils.geometry import fit_motion

    tracks = torch.as_tensor(tracks, dtype=torch.float32)
    visible = torch.as_tensor(visible, dtype=torch.bool)
    if tracks.ndim != 3 or tracks.shape[-1] != 2 or visible.shape != tracks.shape[:2]:
        raise ValueError(f"tracks (T, N, 2) and visible (T, N) expected, got {tuple(tracks.shape)}, "
                         f"{tuple(visible.shape)}")  # fmt: skip
    t_len = tracks.shape[0]
    camera = torch.zeros(t_len, 2, 3, dtype=torch.float64)
    camera[0, 0, 0] = camera[0, 1, 1] = 1.0
    if tracks.shape[1] == 0:  # a sample without background tracks: the camera is unknown after frame 0
        camera[1:] = math.nan
        return camera
    shared0 = visible & visible[:1]
    direct = fit_motion(tracks[:1], tracks[None], shared0[None].float())[0].double()  # (T, 2, 3)
    step = fit_motion(tracks[:-1], tracks[1:, None], (visible[:-1] & visible[1:])[:, None].float())[:, 0].double()
    bottom = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    for t in range(1, t_len):
        spread = _spread(tracks[t], shared0[t], min_direct)
        if spread > 0 and spread >= 0.5 * _spread(tracks[t], visible[t], min_direct):
            camera[t] = direct[t]
        elif int((visible[t - 1] & visible[t]).sum()) >= 3:
            camera[t] = step[t - 1] @ torch.cat([camera[t - 1], bottom])
        else:  # nothing links frame t to frame t-1: the camera is unknown from here until frame 0's points return
            camera[t] = math.nan
    return camera


def _spread(points: Tensor, keep: Tensor, min_count: int) -> float:
    """The smaller of the x and y standard deviations of the kept points; 0 with fewer than ``min_count``."""
    if int(keep.sum()) < min_count:
        return 0.0
    return float(points[keep].std(0).min())


def seen_background(reference_mask: Tensor, masks: Tensor, camera: Tensor, dilation: int = 1) -> Tensor:
    """Where frame t shows background that the reference (frame 0) also shows.

    reference_mask (1, H, W) or (H, W) and masks (T, 1, H, W): person masks in {0, 1}; camera (T, 2, 3)
    from ``camera_from_tracks`` (a frame whose camera is unknown shows none). A pixel of frame t counts when the camera maps it back inside frame 0
    and off the reference's person (dilated by ``dilation`` px), and it is off frame t's person (dilated
    likewise). Returns (T, 1, H, W) float in {0, 1}.
    """
    from fgbg.utils.geometry import dilate, warp_affine

    masks = as_frames(masks, "masks", channels=1).float()
    t_len, _, height, width = masks.shape
    ref = reference_mask.float().reshape(1, 1, height, width)
    source = (1.0 - dilate(ref, dilation)).expand(t_len, 1, height, width)
    known = torch.isfinite(camera).all(dim=(1, 2))
    warped = warp_affine(source, torch.where(known[:, None, None], camera, 0.0).float(), (height, width))
    return ((warped > 0.999) & (dilate(masks, dilation) < 0.5) & known[:, None, None, None]).float()


def seen_colour_error(
    video: Tensor, truth: Tensor, mask: Tensor, tracks, visible, clip_length: int
) -> dict[str, float | list[float]]:
    """``colour_error`` of the background the reference shows: colour drift, not new content.

    With a moving camera most of a long video's background was never in the reference frame, so no
    model can know its colour and ``colour_error_background`` measures new content as much as drift
    (a video that repeats the reference frame scores about as high as the true video's own drift,
    ``docs/evaluation.md``). Here the region is ``seen_background`` (the true camera recovered from the
    true tracks; the true person masks), so the truth scores 0 and a video whose colours wander scores
    its wandering. video, truth (T, 3, H, W) in [0, 1]; mask (T, 1, H, W) the true person masks;
    tracks (T, N, 2), visible (T, N) the true background tracks at the video's size.

    Returns ``colour_error_seen_background`` (one value per clip, NaN where a clip shows none of it),
    ``colour_error_seen_background_last``, ``seen_background_fraction`` (share of pixels per clip) and
    ``seen_background_fraction_last``.
    """
    video, truth = _check_video(video), _check_video(truth, "truth")
    if truth.shape != video.shape:
        raise ValueError(f"truth: expected {tuple(video.shape)} like the video, got {tuple(truth.shape)}")
    person = _region_weights(video, mask)
    _check_clip_length(clip_length, video.shape[0], min_clips=1)
    if len(tracks) != video.shape[0]:
        raise ValueError(f"tracks: expected {video.shape[0]} frames like the video, got {len(tracks)}")
    weight = seen_background(person[0], person, camera_from_tracks(tracks, visible))
    lab, lab_true = rgb_to_lab(video), rgb_to_lab(truth)
    err = _clip_errors(lab, lab_true, weight, clip_length)
    share = [float(weight[s : s + clip_length].mean()) for s in range(0, video.shape[0], clip_length)]
    return {
        "colour_error_seen_background": err,
        "colour_error_seen_background_last": err[-1],
        "seen_background_fraction": share,
        "seen_background_fraction_last": share[-1],
    }
