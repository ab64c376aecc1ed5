"""Person segmenters behind a small registry, plus mask dilation.

A segmenter maps one frame (H, W, 3) uint8 RGB and its OpenPose-18 keypoints
((18, 3) or None) to a person probability map (H, W) float32 in [0, 1].

Backends (``masks.name``):
  selfie        mediapipe selfie segmentation (model in the wheel, offline);
                model_selection 0 = general (256x256), 1 = landscape (144x256).
  keypoint_box  weight-free: the box around the confident keypoints, padded;
                coarse but conservative, for installs without mediapipe.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
from omegaconf import DictConfig

from fgbg.preprocess.pose import import_mediapipe
from fgbg.preprocess.registry import build_backend


class PersonSegmenter(Protocol):
    name: str
    version: str

    def __call__(self, frame: np.ndarray, keypoints: np.ndarray | None) -> np.ndarray: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class SelfieSegmenter:
    name = "mediapipe-selfie"

    def __init__(self, model_selection: int = 0):
        if model_selection not in (0, 1):
            raise ValueError(f"masks.selfie.model_selection must be 0 or 1, got {model_selection}")
        self._mp = import_mediapipe()
        self._model_selection = model_selection
        self.version = f"mediapipe-{self._mp.__version__} model={model_selection}"
        self._seg = None
        self.reset()

    def reset(self) -> None:
        self.close()
        self._seg = self._mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=self._model_selection)

    def __call__(self, frame: np.ndarray, keypoints: np.ndarray | None) -> np.ndarray:
        return self._seg.process(np.ascontiguousarray(frame)).segmentation_mask.astype(np.float32, copy=False)

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None


def keypoint_box(
    keypoints: np.ndarray | None, height: int, width: int, conf_threshold: float, pad: float
) -> np.ndarray:
    """(18, 3) keypoints -> (H, W) float32 {0, 1}: their bounding box grown by ``pad`` x its size per side.

    Pixels whose centres lie in the box are set; no confident keypoint gives an empty map.
    """
    out = np.zeros((height, width), np.float32)
    if keypoints is None:
        return out
    pts = keypoints[keypoints[:, 2] >= conf_threshold, :2]
    if len(pts) == 0:
        return out
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    px, py = pad * max(x1 - x0, 1.0), pad * max(y1 - y0, 1.0)
    # pixel j has its centre at j + 0.5: it is inside when x0 - px <= j + 0.5 <= x1 + px
    c0 = max(0, int(np.ceil(x0 - px - 0.5)))
    c1 = min(width, int(np.floor(x1 + px - 0.5)) + 1)
    r0 = max(0, int(np.ceil(y0 - py - 0.5)))
    r1 = min(height, int(np.floor(y1 + py - 0.5)) + 1)
    out[r0:r1, c0:c1] = 1.0
    return out


class KeypointBoxSegmenter:
    name = "keypoint-box"

    def __init__(self, pad: float = 0.15, conf_threshold: float = 0.3):
        self.pad, self.conf_threshold = pad, conf_threshold
        self.version = f"pad={pad}"

    def __call__(self, frame: np.ndarray, keypoints: np.ndarray | None) -> np.ndarray:
        return keypoint_box(keypoints, frame.shape[0], frame.shape[1], self.conf_threshold, self.pad)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def dilate_masks(masks: np.ndarray, radius: int) -> np.ndarray:
    """(T, H, W) bool -> same, grown by a disc of ``radius`` pixels (0 returns a copy)."""
    if radius <= 0:
        return masks.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks]) if len(masks) else masks.copy()


PERSON_SEGMENTERS = {
    "selfie": lambda cfg: SelfieSegmenter(**cfg.selfie),
    "keypoint_box": lambda cfg: KeypointBoxSegmenter(**cfg.keypoint_box),
}


def build_person_segmenter(cfg: DictConfig) -> PersonSegmenter:
    """``cfg`` is the ``masks`` node: ``name`` picks the backend, ``cfg[name]`` holds its options."""
    return build_backend(PERSON_SEGMENTERS, cfg, "masks")
