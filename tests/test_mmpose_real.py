"""pose.name=mmpose against the real mmpose 1.3.2 (``make install-mmpose``): the COCO-17 -> OpenPose-18
mapping on known keypoints, the checkpoint reader, and fgbg-preprocess (a subprocess) on carphone with an
RTMPose-t model built from mmpose's own config with random weights (no weights can be downloaded, so the
keypoints are meaningless; what is checked is that the real API runs end to end and writes the schema)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fgbg.data.schema import NUM_KEYPOINTS
from fgbg.data.shards import SkipCounter, iter_clips
from fgbg.preprocess.pose import (
    COCO17_SHOULDERS,
    COCO17_TO_OPENPOSE18,
    MMPosePose,
    read_mmpose_checkpoint,
    to_openpose18,
)
from tests.test_preprocess_videos import SEGMENT, carphone_frames, write_mp4  # noqa: F401  (fixture)
from tests.test_unsafe_checkpoints import _CreateFile

REPO = Path(__file__).resolve().parents[1]
COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle")  # fmt: skip
# OpenPose-18 (COCO order of the OpenPose body model): slot -> COCO name; "neck" has no COCO keypoint.
OPENPOSE18 = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
              "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
              "right_eye", "left_eye", "right_ear", "left_ear")  # fmt: skip
RTMPOSE_T = "body_2d_keypoint/rtmpose/coco/rtmpose-t_8xb256-420e_coco-256x192.py"


def known_coco(num: int = 17) -> np.ndarray:
    """(num, 3) keypoints whose x, y and confidence all tell their COCO index."""
    i = np.arange(num, dtype=np.float32)
    return np.stack([10 + 3 * i, 20 + 2 * i, 0.5 + 0.02 * i], 1)


def test_coco17_to_openpose18_on_known_keypoints():
    kp = known_coco()
    out = to_openpose18(kp, COCO17_TO_OPENPOSE18, COCO17_SHOULDERS, height=100, width=100)
    assert out.shape == (NUM_KEYPOINTS, 3) and out.dtype == np.float32
    for slot, name in enumerate(OPENPOSE18):
        if name == "neck":  # the shoulder midpoint with the smaller of their confidences
            left, right = kp[COCO17.index("left_shoulder")], kp[COCO17.index("right_shoulder")]
            np.testing.assert_allclose(out[slot], [(left[0] + right[0]) / 2, (left[1] + right[1]) / 2, left[2]])
        else:
            np.testing.assert_array_equal(out[slot], kp[COCO17.index(name)], err_msg=f"slot {slot} ({name})")
    # a keypoint outside the frame keeps its position and loses its confidence
    kp[COCO17.index("left_ankle")] = (150.0, 20.0, 0.9)
    out = to_openpose18(kp, COCO17_TO_OPENPOSE18, COCO17_SHOULDERS, height=100, width=100)
    assert out[OPENPOSE18.index("left_ankle")].tolist() == [150.0, 20.0, 0.0]


def test_mmpose_wrapper_uses_the_whole_frame_bgr_and_the_first_17_keypoints():
    """A stand-in for inference_topdown returning an mmpose-shaped result of a 133-keypoint (DWPose) model."""
    calls = []
    wholebody = known_coco(133)

    def infer(model, img, bboxes):
        calls.append((img, bboxes))
        inst = types.SimpleNamespace(keypoints=wholebody[None, :, :2] - 0.5, keypoint_scores=wholebody[None, :, 2])
        return [types.SimpleNamespace(pred_instances=inst)]

    est = MMPosePose.__new__(MMPosePose)
    est._infer, est._model = infer, None
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[..., 0] = 255  # red in RGB
    out = est(frame)
    (img, box), = calls  # fmt: skip
    assert img[0, 0].tolist() == [0, 0, 255] and box.tolist() == [[0, 0, 160, 120]]
    expected = to_openpose18(wholebody[:17], COCO17_TO_OPENPOSE18, COCO17_SHOULDERS, 120, 160)
    np.testing.assert_allclose(out, expected, atol=1e-6)  # pixel centres +0.5 -> corner origin


def test_mmpose_checkpoint_reader_allows_numpy_meta_and_refuses_code(tmp_path):
    state = {"module.head.weight": torch.ones(2, 3), "backbone.bias": torch.zeros(2)}
    meta = {"dataset_meta": {"sigmas": np.full(17, 0.05, np.float32), "num_keypoints": 17}, "mmengine_version": "0"}
    torch.save({"state_dict": state, "meta": meta}, tmp_path / "ok.pth")
    got, got_meta = read_mmpose_checkpoint(tmp_path / "ok.pth")
    assert sorted(got) == ["backbone.bias", "head.weight"] and torch.equal(got["head.weight"], torch.ones(2, 3))
    np.testing.assert_allclose(got_meta["dataset_meta"]["sigmas"], np.full(17, 0.05, np.float32))

    marker = tmp_path / "pwned"
    torch.save({"state_dict": state, "meta": {"x": _CreateFile(marker)}}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth.*weights_only"):
        read_mmpose_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    torch.save({"meta": meta}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="no state dict of tensors"):
        read_mmpose_checkpoint(tmp_path / "empty.pth")


# ---- the real mmpose ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rtmpose_t(tmp_path_factory) -> tuple[Path, Path]:
    """(config, checkpoint): mmpose's RTMPose-t COCO config and random weights saved as mmengine does."""
    try:
        import mmengine
        import mmpose
        from mmpose.apis import init_model
    except ImportError as err:
        pytest.skip(f"mmpose is not importable ({err}); `make install-mmpose` builds mmcv and installs it")
    config = Path(mmpose.__file__).parent / ".mim" / "configs" / RTMPOSE_T
    assert config.is_file(), f"mmpose {mmpose.__version__} does not ship {RTMPOSE_T}"
    torch.manual_seed(0)
    model = init_model(str(config), None, device="cpu")
    ckpt = tmp_path_factory.mktemp("rtmpose") / "rtmpose-t_random.pth"
    meta = {"dataset_meta": model.dataset_meta, "mmengine_version": mmengine.__version__}
    torch.save({"state_dict": model.state_dict(), "meta": meta}, ckpt)
    return config, ckpt


@pytest.mark.slow
def test_mmpose_estimator_on_a_real_frame(rtmpose_t, carphone_frames, tmp_path):  # noqa: F811
    config, ckpt = rtmpose_t
    _, meta = read_mmpose_checkpoint(ckpt)
    assert any(isinstance(v, np.ndarray) for v in meta["dataset_meta"].values())  # as mmpose's own checkpoints

    est = MMPosePose(str(config), str(ckpt))
    raw = []
    infer = est._infer
    est._infer = lambda *args: raw.append(infer(*args)) or raw[-1]
    frame = carphone_frames[0]
    out = est(frame)
    (result,) = raw[0]
    kp = np.asarray(result.pred_instances.keypoints)
    score = np.asarray(result.pred_instances.keypoint_scores)
    assert kp.shape == (1, 17, 2) and score.shape == (1, 17) and out.shape == (NUM_KEYPOINTS, 3)
    h, w = frame.shape[:2]
    inside = (kp[0, :, 0] + 0.5 >= 0) & (kp[0, :, 0] + 0.5 < w) & (kp[0, :, 1] + 0.5 >= 0) & (kp[0, :, 1] + 0.5 < h)
    for slot, name in enumerate(OPENPOSE18):
        if name != "neck":
            i = COCO17.index(name)
            np.testing.assert_allclose(out[slot, :2], kp[0, i] + 0.5, atol=1e-4)
            assert out[slot, 2] == (np.clip(score[0, i], 0, 1) if inside[i] else 0.0)
    np.testing.assert_allclose(out[1, :2], (kp[0, 5] + kp[0, 6]) / 2 + 0.5, atol=1e-4)
    # the weights are the checkpoint's: a second estimator from it gives the same keypoints
    np.testing.assert_array_equal(MMPosePose(str(config), str(ckpt))(frame), out)

    # a checkpoint that does not match the config is refused, naming the file and a missing key
    state, meta = read_mmpose_checkpoint(ckpt)
    missing = sorted(state)[0]
    del state[missing]
    torch.save({"state_dict": state, "meta": meta}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=rf"partial.pth.*{missing}"):
        MMPosePose(str(config), str(tmp_path / "partial.pth"))
    # keys the model does not use (distillation leftovers) are ignored, as mmengine does
    state, meta = read_mmpose_checkpoint(ckpt)
    torch.save({"state_dict": {**state, "distiller.extra": torch.zeros(1)}, "meta": meta}, tmp_path / "extra.pth")
    np.testing.assert_array_equal(MMPosePose(str(config), str(tmp_path / "extra.pth"))(frame), out)


@pytest.mark.slow
def test_fgbg_preprocess_with_rtmpose_writes_shards(rtmpose_t, carphone_frames, tmp_path):  # noqa: F811
    """fgbg-preprocess pose.name=mmpose (a subprocess) on 40 frames of carphone: 2 clips of the schema."""
    config, ckpt = rtmpose_t
    video = write_mp4(tmp_path / "carphone.mp4", carphone_frames[:SEGMENT])
    out = tmp_path / "shards"
    # random weights: every frame counts as a person, so the clips are kept whatever the scores are; the
    # person mask is selfie segmentation alone (the default reads mediapipe's pose pass; the *_skeleton
    # masks would be cut to the meaningless keypoints), and tracks keep off that mask only, not off a body
    # region drawn from random keypoints that can cover the frame (tracks.skeleton_scale=0)
    cmd = [str(Path(sys.executable).parent / "fgbg-preprocess"), f"input={video}", f"output={out}",
           "pose.name=mmpose", f"pose.mmpose.config={config}", f"pose.mmpose.checkpoint={ckpt}",
           "pose.conf_threshold=0.0", "pose.min_keypoints=0", "clips.min_pose_rate=0.0", "masks.name=selfie",
           "tracks.skeleton_scale=0"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["videos"].values()
    assert entry["status"] == "done" and entry["frames"] == SEGMENT and entry["clips"] == 2, entry
    assert entry["pose_detection_rate"] == 1.0

    counter = SkipCounter()
    clips = list(iter_clips([str(out / s) for s in entry["shards"]], counter))
    assert counter.total == 0 and len(clips) == 2
    for clip in clips:
        t, h, w, _ = clip.frames.shape
        assert (t, h, w) == (16, 256, 256)
        assert clip.pose.shape == (16, NUM_KEYPOINTS, 3) and clip.pose.dtype == np.float32
        assert np.isfinite(clip.pose).all() and ((clip.pose[..., 2] >= 0) & (clip.pose[..., 2] <= 1)).all()
        found = clip.pose[..., 2] > 0  # in the frame: inside the output crop
        assert found.any()
        assert ((clip.pose[..., 0][found] >= 0) & (clip.pose[..., 0][found] < w)).all()
        meta = clip.meta
        assert meta["pose_estimator"] == "mmpose"
        assert meta["pose_estimator_version"] == f"mmpose-1.3.2 {config.name} {ckpt.name}"
