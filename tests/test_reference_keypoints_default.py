"""fgbg-generate estimates the reference person's keypoints by default (reference_keypoints=null), so a
person-hint model sees at generation what training always shows it: pose, reference and person hint."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from fgbg.app.examples import driving_example
from fgbg.generate import prepare_jobs
from fgbg.utils.config import CONF_DIR


def reference_keypoints(reference, *overrides) -> np.ndarray:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("generate", overrides=[
            "ckpt_path=unused", f"reference={reference}", "reference_mask=none",
            f"motion={driving_example('dance_pan').shard}", "camera=static", "num_frames=8", *overrides,
        ])  # fmt: skip
    return prepare_jobs(cfg, {"resolution": 64, "clip_len": 8, "stage": "video"})[0].reference_keypoints


def test_default_estimates_the_reference_pose_and_falls_back_to_none_with_a_warning(tmp_path, caplog):
    pytest.importorskip("mediapipe", reason="estimating the reference pose needs mediapipe (make install)")
    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    default = reference_keypoints(tmp_path / "astronaut.png")
    assert (default[:, 2] > 0.5).sum() >= 4, default  # a person's pose, not the zero (no-hint) pose
    np.testing.assert_array_equal(default, reference_keypoints(tmp_path / "astronaut.png", "reference_keypoints=auto"))
    assert not reference_keypoints(tmp_path / "astronaut.png", "reference_keypoints=none")[:, 2].any()

    Image.new("RGB", (96, 96), (128, 128, 128)).save(tmp_path / "wall.png")
    with caplog.at_level(logging.WARNING, logger="fgbg.generate"):
        none = reference_keypoints(tmp_path / "wall.png")
    assert not none[:, 2].any()
    assert "wall.png: mediapipe pose found no person" in caplog.text and "without the person hint" in caplog.text
