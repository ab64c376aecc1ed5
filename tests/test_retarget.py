"""Pose retargeting keeps joint angles, takes the reference's bone lengths, keeps hidden parts' proportions."""

from __future__ import annotations

import numpy as np
import pytest

from fgbg.generation.retarget import retarget_sequence

ARMS = ((2, 3), (3, 4), (5, 6), (6, 7))
LEGS = ((8, 9), (9, 10), (11, 12), (12, 13))


def skeleton(arm=10.0, leg=14.0, angle=0.0, origin=(50.0, 30.0)) -> np.ndarray:
    """A standing OpenPose-18 figure; arms rotated by ``angle`` radians from hanging down."""
    kp = np.zeros((18, 3), np.float32)
    kp[:, 2] = 1
    neck = np.array(origin)
    kp[1, :2] = neck
    kp[0, :2] = neck + [0, -8]
    kp[14, :2], kp[15, :2] = kp[0, :2] + [-2, -2], kp[0, :2] + [2, -2]
    kp[16, :2], kp[17, :2] = kp[0, :2] + [-4, -1], kp[0, :2] + [4, -1]
    d = np.array([np.sin(angle), np.cos(angle)])
    for side, sh in ((2, -6), (5, 6)):
        kp[side, :2] = neck + [sh, 0]
        kp[side + 1, :2] = kp[side, :2] + arm * d
        kp[side + 2, :2] = kp[side + 1, :2] + arm * d
    for hip, hx in ((8, -4), (11, 4)):
        kp[hip, :2] = neck + [hx, 20]
        kp[hip + 1, :2] = kp[hip, :2] + [0, leg]
        kp[hip + 2, :2] = kp[hip + 1, :2] + [0, leg]
    return kp


def length(kp, a, b):
    return np.linalg.norm(kp[..., b, :2] - kp[..., a, :2], axis=-1)


def direction(kp, a, b):
    v = kp[..., b, :2] - kp[..., a, :2]
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_arms_twice_as_long_come_out_with_reference_lengths_and_same_angles():
    ref = skeleton(arm=10.0)
    driving = np.stack([skeleton(arm=20.0, angle=a, origin=(70, 40 + i)) for i, a in enumerate(np.linspace(0, 1.2, 6))])
    out = retarget_sequence(driving, ref)
    for a, b in ARMS:
        np.testing.assert_allclose(length(out, a, b), 10.0, rtol=1e-5)
        np.testing.assert_allclose(direction(out, a, b), direction(driving, a, b), atol=1e-5)
    np.testing.assert_allclose(out[0, 1, :2], ref[1, :2], atol=1e-5)  # aligned at the neck in frame 0
    np.testing.assert_allclose(out[5, 1, :2] - out[0, 1, :2], driving[5, 1, :2] - driving[0, 1, :2], atol=1e-5)


def test_reference_with_hidden_legs_keeps_the_driving_legs():
    ref = skeleton(arm=10.0, leg=30.0)
    ref[[9, 10, 12, 13], 2] = 0.0  # knees and ankles not visible
    driving = skeleton(arm=10.0, leg=14.0)[None]
    out = retarget_sequence(driving, ref)
    for a, b in LEGS:
        np.testing.assert_allclose(length(out, a, b), 14.0, rtol=1e-5)


def test_reference_without_any_bone_is_an_error():
    ref = skeleton()
    ref[:, 2] = 0
    with pytest.raises(ValueError, match="no complete bone"):
        retarget_sequence(skeleton()[None], ref)
