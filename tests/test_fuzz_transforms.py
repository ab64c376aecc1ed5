"""Property-based tests of the joint clip transforms (crop, resize, flip) on arbitrary clips."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fgbg.data.schema import decode_clip, encode_clip
from fgbg.data.transforms import augment_clip, crop_clip, hflip_clip, random_crop_box

from .conftest import random_clip

sizes = st.integers(4, 40)


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 3), h=sizes, w=sizes, n=st.integers(0, 8), seed=st.integers(0, 2**31 - 1))
def test_flip_twice_is_the_identity(t, h, w, n, seed):
    clip = random_clip(t=t, h=h, w=w, n=n, seed=seed % 1000)
    back = hflip_clip(hflip_clip(clip))
    np.testing.assert_array_equal(back.frames, clip.frames)
    np.testing.assert_array_equal(back.masks, clip.masks)
    np.testing.assert_allclose(back.pose[..., :2], clip.pose[..., :2], atol=1e-4)
    np.testing.assert_allclose(back.tracks, clip.tracks, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(1, 3), h=st.integers(8, 48), w=st.integers(8, 48), n=st.integers(0, 8),
    out=st.sampled_from([(8, 8), (16, 16), (16, 24), (32, 16)]), seed=st.integers(0, 2**31 - 1),
    lo=st.floats(0.3, 1.0),
)  # fmt: skip
def test_augment_gives_valid_clips_with_every_kept_point_in_frame(t, h, w, n, out, seed, lo):
    clip = random_clip(t=t, h=h, w=w, n=n, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    aug = augment_clip(clip, rng, out[0], out[1], crop_scale=(lo, 1.0), flip_prob=0.5)
    decode_clip(encode_clip(aug))  # a valid sample of the schema
    assert aug.frames.shape == (t, out[0], out[1], 3) and aug.masks.shape == (t, out[0], out[1])
    pts = aug.tracks[aug.visible]
    assert np.all((pts >= 0) & (pts < [out[1], out[0]]))
    kp = aug.pose[aug.pose[..., 2] > 0][:, :2]
    assert np.all((kp >= 0) & (kp < [out[1], out[0]]))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(4, 40), w=st.integers(4, 40), seed=st.integers(0, 2**31 - 1))
def test_crop_shifts_points_exactly_and_keeps_the_pixels(h, w, seed):
    clip = random_clip(t=1, h=h, w=w, n=6, seed=seed % 1000)
    x0, y0, cw, ch = random_crop_box(np.random.default_rng(seed), h, w, 8, 8, (0.3, 1.0))
    c = crop_clip(clip, (x0, y0, cw, ch))
    np.testing.assert_allclose(c.tracks, clip.tracks - [x0, y0], atol=1e-5)
    np.testing.assert_array_equal(c.frames[0], clip.frames[0, y0 : y0 + ch, x0 : x0 + cw])
