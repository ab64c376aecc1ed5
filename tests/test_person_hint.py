"""The person hint warps the reference person bone by bone to the frame's pose."""

import torch

from fgbg.models.person_hint import BONES, bone_warp_grid, person_hint

H = W = 32


def skeleton(shift=(0.0, 0.0)) -> torch.Tensor:
    """A standing OpenPose-18 skeleton (18, 3) in a 32x32 image, all joints confident."""
    xy = {0: (16, 5), 1: (16, 9), 2: (12, 9), 3: (10, 14), 4: (9, 19), 5: (20, 9), 6: (22, 14), 7: (23, 19),
          8: (14, 18), 9: (14, 24), 10: (14, 30), 11: (18, 18), 12: (18, 24), 13: (18, 30),
          14: (15, 4), 15: (17, 4), 16: (14, 5), 17: (18, 5)}  # fmt: skip
    kp = torch.tensor([[x + shift[0], y + shift[1], 1.0] for _, (x, y) in sorted(xy.items())])
    return kp


def body_mask() -> torch.Tensor:
    src, claimed = bone_warp_grid(skeleton()[None], skeleton()[None, None], H, W, (H, W), radius=0.25)
    return claimed[0, 0].float()[None, None]  # (1, 1, H, W)


def test_same_pose_gives_back_the_reference_person():
    torch.manual_seed(0)
    ref = torch.rand(1, 3, H, W) * 2 - 1
    mask = body_mask()
    hint = person_hint(ref, mask, skeleton()[None], skeleton()[None, None], (H, W))
    valid = hint[0, 0, 3:] > 0.5
    assert valid.sum() >= 0.9 * mask.sum()  # the person is covered
    assert torch.allclose(hint[0, 0, :3][valid.expand(3, -1, -1)], ref[0][valid.expand(3, -1, -1)], atol=1e-5)
    assert (hint[0, 0][:, mask[0, 0] == 0] == 0).all()  # nothing outside the person


def test_translated_pose_translates_the_person():
    torch.manual_seed(1)
    ref = torch.rand(1, 3, H, W) * 2 - 1
    mask = body_mask()
    dx, dy = 3, -2
    hint = person_hint(ref, mask, skeleton()[None], skeleton((dx, dy))[None, None], (H, W))
    shifted = torch.roll(ref, (dy, dx), (-2, -1))
    valid = (hint[0, 0, 3:] > 0.5).expand(3, -1, -1)
    assert valid.sum() > 0.9 * 3 * mask.sum()
    assert torch.allclose(hint[0, 0, :3][valid], shifted[0][valid], atol=1e-5)


def test_bent_arm_moves_only_the_forearm():
    """Rotating the right forearm about the elbow moves the forearm's pixels there, nothing else."""
    ref_kp, tgt = skeleton(), skeleton()
    tgt[4, :2] = torch.tensor([15.0, 14.0])  # wrist raised across the body
    src, claimed = bone_warp_grid(ref_kp[None], tgt[None, None], H, W, (H, W))
    # A cell on the new forearm samples the reference forearm: its midpoint maps to the old midpoint.
    mid_new = ((tgt[3, :2] + tgt[4, :2]) / 2).floor().long()
    mid_old = (ref_kp[3, :2] + ref_kp[4, :2]) / 2
    got = src[0, 0, mid_new[1], mid_new[0]]
    cell_centre = mid_new.float() + 0.5
    expected_offset = (cell_centre - (tgt[3, :2] + tgt[4, :2]) / 2).norm()
    scale = (ref_kp[4, :2] - ref_kp[3, :2]).norm() / (tgt[4, :2] - tgt[3, :2]).norm()  # similarity: lengths scale
    assert (got - mid_old).norm() <= expected_offset * scale + 1e-4
    assert claimed[0, 0, mid_new[1], mid_new[0]]
    # Far corners belong to nobody.
    assert not claimed[0, 0, 0, 0] and not claimed[0, 0, -1, -1]


def test_without_reference_keypoints_the_hint_is_zero():
    ref = torch.rand(2, 3, H, W)
    kp = skeleton()[None, None].expand(2, 4, 18, 3)
    assert (person_hint(ref, None, None, kp, (H, W)) == 0).all()
    unknown = torch.zeros(2, 18, 3)  # what the generation app passes without reference keypoints
    out = person_hint(ref, None, unknown, kp, (H, W))
    assert out.shape == (2, 4, 4, H, W) and (out == 0).all()


def test_latent_grid_shares_the_pixel_frame():
    """At a 4x smaller latent grid the same skeleton claims the same region, pooled."""
    ref_px = torch.rand(1, 3, H, W)
    full = person_hint(ref_px, body_mask(), skeleton()[None], skeleton((2, 0))[None, None], (H, W))[0, 0, 3]
    latent = torch.nn.functional.avg_pool2d(ref_px, 4)
    small = person_hint(latent, body_mask(), skeleton()[None], skeleton((2, 0))[None, None], (H, W))[0, 0, 3]
    pooled = torch.nn.functional.avg_pool2d(full[None, None], 4)[0, 0]
    assert small.shape == (H // 4, W // 4)
    assert ((small > 0.5) == (pooled > 0.5)).float().mean() >= 0.85
    assert len(BONES) == 13
