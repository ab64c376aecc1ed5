"""Dense person hint: the reference person warped bone by bone to the target pose.

The foreground counterpart of ``motion_hint`` (an option beyond the paper). Every
body bone (OpenPose-18 limbs, neck-hip lines, neck-nose) that is confident in both
the reference keypoints and the frame's keypoints defines a similarity transform
(rotation, scale, translation) taking the frame's bone onto the reference bone.
Each output cell takes the bone nearest to it (distance to the segment, at most
``radius`` bone lengths away) and samples the reference, person only, through that
bone's transform. A validity channel says where a person pixel landed.

Why: measured in ``docs/model.md`` (learn check): the tiny model placed the person
where the pose says only with an IoU of 0.26 and kept little of the reference's
person appearance, because a small conv net has no quick way to move appearance
across the image. With this hint, "where" and "what" arrive together at the input.
It depends only on keypoints and the reference, so generation has it too (reference
keypoints from a file, from mediapipe, or the driving sample's first frame);
without reference keypoints it is zero, which the model also sees in training
(classifier-free dropout of the reference or the pose, and ``drop_reference_keypoints``:
the reference keypoints alone dropped, pose and reference kept, as at generation when
mediapipe finds no person in the reference).

Coordinates: pixels with the corner origin of ``fgbg.data.schema``; cell (i, j) of
an (h, w) latent grid covering an (H, W) image has its centre at
((j + 0.5) W / w, (i + 0.5) H / h).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fgbg.utils.geometry import cell_centres

# Bones that carry flesh: arms, legs, neck-hip lines (the torso), neck-nose (the head).
BONES = ((1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0))  # fmt: skip


def bone_warp_grid(
    reference_keypoints: torch.Tensor,
    keypoints: torch.Tensor,
    h: int,
    w: int,
    image_size: tuple[int, int],
    conf_threshold: float = 0.3,
    radius: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each output cell samples the reference, and whether any bone claims it.

    reference_keypoints: (B, K, 3); keypoints: (B, T, K, 3) (x, y, confidence) in pixels.
    Returns (source positions (B, T, h, w, 2) in reference pixels, claimed (B, T, h, w) bool).
    A cell is claimed by the nearest usable bone when its distance to that bone's
    segment is at most ``radius`` times the bone's length in the frame.
    """
    b, t = keypoints.shape[:2]
    dtype = keypoints.dtype
    a_idx = torch.tensor([p[0] for p in BONES], device=keypoints.device)
    b_idx = torch.tensor([p[1] for p in BONES], device=keypoints.device)
    ref = reference_keypoints[:, None].expand(b, t, *reference_keypoints.shape[1:])
    ra, rb = ref[:, :, a_idx], ref[:, :, b_idx]  # (B, T, L, 3)
    ta, tb = keypoints[:, :, a_idx], keypoints[:, :, b_idx]
    d_t = tb[..., :2] - ta[..., :2]  # (B, T, L, 2)
    d_r = rb[..., :2] - ra[..., :2]
    len_t = d_t.norm(dim=-1)
    usable = (
        (ra[..., 2] >= conf_threshold)
        & (rb[..., 2] >= conf_threshold)
        & (ta[..., 2] >= conf_threshold)
        & (tb[..., 2] >= conf_threshold)
        & (len_t > 1e-3)
        & (d_r.norm(dim=-1) > 1e-3)
    )
    q = cell_centres(h, w, image_size, keypoints)  # (P, 2)
    rel = q[None, None, None] - ta[..., None, :2]  # (B, T, L, P, 2)
    len2 = len_t.square().clamp_min(1e-6)[..., None]  # (B, T, L, 1)
    u = (rel * d_t[..., None, :]).sum(-1) / len2  # along the bone, in bone lengths
    perp_t = torch.stack([-d_t[..., 1], d_t[..., 0]], -1)  # (B, T, L, 2), same length as d_t
    v = (rel * perp_t[..., None, :]).sum(-1) / len2  # across the bone, in bone lengths
    closest = u.clamp(0.0, 1.0)
    dist = torch.sqrt((u - closest).square() + v.square()) * len_t[..., None]  # pixels (B, T, L, P)
    dist = torch.where(usable[..., None], dist, torch.full_like(dist, float("inf")))
    best, which = dist.min(2)  # (B, T, P)
    claimed = best <= radius * len_t.gather(2, which).clamp_min(1.0)
    claimed = claimed & torch.isfinite(best)
    perp_r = torch.stack([-d_r[..., 1], d_r[..., 0]], -1)
    src = ra[..., None, :2] + u[..., None] * d_r[..., None, :] + v[..., None] * perp_r[..., None, :]  # (B,T,L,P,2)
    src = src.gather(2, which[:, :, None, :, None].expand(b, t, 1, q.shape[0], 2))[:, :, 0]  # (B, T, P, 2)
    return src.reshape(b, t, h, w, 2).to(dtype), claimed.reshape(b, t, h, w)


def person_hint(
    reference_latent: torch.Tensor,
    reference_mask: torch.Tensor | None,
    reference_keypoints: torch.Tensor | None,
    keypoints: torch.Tensor,
    image_size: tuple[int, int],
    conf_threshold: float = 0.3,
    radius: float = 0.6,
) -> torch.Tensor:
    """The reference person warped to every frame's pose, plus validity.

    reference_latent: (B, c, h, w); reference_mask: (B, 1, H, W) person mask (None: the
    whole reference counts as person); reference_keypoints: (B, K, 3) or None (hint is zero);
    keypoints: (B, T, K, 3). Returns (B, T, c + 1, h, w).
    """
    b, c, h, w = reference_latent.shape
    t = keypoints.shape[1]
    if reference_keypoints is None:
        return reference_latent.new_zeros(b, t, c + 1, h, w)
    if reference_mask is None:
        person = torch.ones(b, 1, h, w, dtype=reference_latent.dtype, device=reference_latent.device)
    else:
        person = F.adaptive_avg_pool2d(reference_mask.to(reference_latent.dtype), (h, w))
    src, claimed = bone_warp_grid(
        reference_keypoints.to(reference_latent.dtype),
        keypoints.to(reference_latent.dtype),
        h,
        w,
        image_size,
        conf_threshold,
        radius,
    )
    height, width = image_size
    grid = torch.stack([src[..., 0] * (2.0 / width) - 1.0, src[..., 1] * (2.0 / height) - 1.0], -1)
    image = torch.cat([reference_latent * person, person], 1)  # (B, c + 1, h, w)
    image = image[:, None].expand(b, t, c + 1, h, w).reshape(b * t, c + 1, h, w)
    warped = F.grid_sample(image, grid.reshape(b * t, h, w, 2), mode="bilinear", padding_mode="zeros",
                           align_corners=False)  # fmt: skip
    warped = warped.reshape(b, t, c + 1, h, w) * claimed[:, :, None].to(warped.dtype)
    # Cells mostly covered by person keep the person's colour, renormalised by the coverage
    # (so the background's colour at the silhouette does not bleed in); the rest are zero.
    valid = warped[:, :, c:].clamp(0.0, 1.0)
    colour = warped[:, :, :c] / valid.clamp_min(1e-3) * (valid > 0.5).to(warped.dtype)
    return torch.cat([colour, valid], 2)


def jitter_reference_keypoints(
    reference_keypoints: torch.Tensor, sigma_px: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Reference keypoints (B, K, 3) with Gaussian noise of std ``sigma_px`` (pixels) added to x and y of each
    present joint (confidence > 0); absent joints stay exactly zero, confidences are unchanged.

    Training with it shows the person-hint model reference keypoints as an estimator gives them at
    generation (``fgbg.generate.estimate_reference_keypoints``), off by a pixel or two, instead of the
    shard's exact ones (``model.reference_keypoints_jitter``).
    """
    gen_dev = generator.device if generator else reference_keypoints.device
    noise = torch.randn((*reference_keypoints.shape[:-1], 2), generator=generator, device=gen_dev)
    present = (reference_keypoints[..., 2:] > 0).to(reference_keypoints.dtype)
    xy = reference_keypoints[..., :2] + noise.to(reference_keypoints) * sigma_px * present
    return torch.cat([xy, reference_keypoints[..., 2:]], -1)


def drop_reference_keypoints(reference_keypoints: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Reference keypoints (B, K, 3) with those of the samples where ``drop`` (B,) is True made absent.

    Absent is what generation feeds without reference keypoints: all zeros, no confident joint
    (``fgbg.datamodules.VideoJobs`` fills zeros when ``fgbg-generate`` has none, by
    ``reference_keypoints=none`` or when mediapipe finds no person). ``person_hint`` then gives
    such a sample the same input in training and at generation: zeros
    (``tests/test_reference_keypoint_dropout.py`` compares the two).
    """
    return reference_keypoints.masked_fill(drop.to(torch.bool)[:, None, None], 0.0)
