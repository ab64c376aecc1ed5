"""Person segmenters behind a small registry, plus mask dilation.

A segmenter maps one frame (H, W, 3) uint8 RGB and its OpenPose-18 keypoints
((18, 3) or None) to a person probability map (H, W) float32 in [0, 1].

Backends (``masks.name``):
  pose             the mask of the posed person from the pose pass itself (mediapipe
                   BlazePose with ``enable_segmentation``; pose runs once per frame).
  pose_skeleton    ``pose`` restricted to its connected components that touch the pose's
                   body region (drops stray blobs).
  selfie           mediapipe selfie segmentation (model in the wheel, offline);
                   model_selection 0 = general (256x256), 1 = landscape (144x256).
                   Made for close-up faces: on full-body people at a distance it finds
                   other people and background (docs/preprocess.md, "Person masks").
  selfie_skeleton  ``selfie`` restricted to its components that touch the pose's body region.
  pose_selfie      the union of ``pose`` and ``selfie_skeleton``.
  keypoint_box     weight-free: the box around the confident keypoints, padded;
                   coarse but conservative, for installs without mediapipe.

The body region is ``fgbg.data.render.render_body_region`` of the frame's keypoints
(limbs ``masks.skeleton.limb_scale`` x half the median bone length thick, the torso,
a head disc): the same region that gates the pose ControlNet.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
from omegaconf import DictConfig

from fgbg.data.render import render_body_region
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


def body_region(
    keypoints: np.ndarray | None, height: int, width: int, conf_threshold: float, limb_scale: float
) -> np.ndarray:
    """(18, 3) keypoints or None -> (H, W) bool body region of the pose (``render_body_region``); empty without one."""
    if keypoints is None or limb_scale <= 0 or not (keypoints[:, 2] >= conf_threshold).any():
        return np.zeros((height, width), bool)
    return render_body_region(keypoints[None], height, width, conf_threshold, limb_scale)[0, 0] > 0


def skeleton_components(
    prob: np.ndarray, keypoints: np.ndarray | None, threshold: float, conf_threshold: float, limb_scale: float
) -> np.ndarray:
    """(H, W) person probability -> the same, zero outside the connected components (8-connected, of
    ``prob > threshold``) that touch the pose's body region; all zero without a pose."""
    person = prob > threshold
    region = body_region(keypoints, *prob.shape, conf_threshold, limb_scale)
    if not (person & region).any():
        return np.zeros_like(prob)
    _, labels = cv2.connectedComponents(person.astype(np.uint8), connectivity=8)
    keep = np.unique(labels[person & region])
    return np.where(np.isin(labels, keep[keep > 0]), prob, 0.0).astype(np.float32, copy=False)


class PoseSegmentation:
    """The posed person's mask from the pose pass itself: ``attach`` it to a ``MediaPipePose``, which
    then also segments (``enable_segmentation``); call it after the pose estimator on the same frame."""

    name = "mediapipe-pose-segmentation"

    def __init__(self):
        self.version = "same pass as the pose"
        self._pose = None

    def attach(self, pose) -> None:
        if not hasattr(pose, "enable_segmentation"):
            raise ValueError(
                f"masks.name=pose (and pose_skeleton, pose_selfie) reads the person mask of the mediapipe pose pass: "
                f"it needs pose.name=mediapipe, got the pose estimator {getattr(pose, 'name', pose)!r}; "
                "use masks.name=selfie_skeleton with other pose estimators"
            )
        pose.enable_segmentation()
        self._pose = pose
        self.version = f"same pass as {pose.version}"

    def __call__(self, frame: np.ndarray, keypoints: np.ndarray | None) -> np.ndarray:
        if self._pose is None:
            raise RuntimeError("PoseSegmentation is not attached to a pose estimator (call attach(pose) first)")
        seg = self._pose.segmentation
        if seg is None or keypoints is None:
            return np.zeros(frame.shape[:2], np.float32)
        if seg.shape != frame.shape[:2]:
            raise ValueError(f"pose segmentation is {seg.shape}, the frame {frame.shape[:2]}: segment the same frame")
        return seg

    def reset(self) -> None:  # the pose estimator holds the state
        pass

    def close(self) -> None:
        pass


class SkeletonRestricted:
    """Segmenters whose masks are cut to the components touching the pose's body region; several
    segmenters are combined by their per-pixel maximum (the union of their masks)."""

    def __init__(self, parts: list, restrict: list[bool], threshold: float, conf_threshold: float, limb_scale: float):
        self.parts, self.restrict = parts, restrict
        self.threshold, self.conf_threshold, self.limb_scale = threshold, conf_threshold, limb_scale
        cut = [f"{p.name}{' on skeleton' if r else ''}" for p, r in zip(parts, restrict)]
        self.name = " + ".join(cut)
        self.version = f"{'; '.join(p.version for p in parts)}; limb_scale={limb_scale}"

    def attach(self, pose) -> None:
        for part in self.parts:
            if hasattr(part, "attach"):
                part.attach(pose)

    def __call__(self, frame: np.ndarray, keypoints: np.ndarray | None) -> np.ndarray:
        out = None
        for part, restrict in zip(self.parts, self.restrict):
            prob = part(frame, keypoints)
            if restrict:
                prob = skeleton_components(prob, keypoints, self.threshold, self.conf_threshold, self.limb_scale)
            out = prob if out is None else np.maximum(out, prob)
        return out

    def reset(self) -> None:
        for part in self.parts:
            part.reset()

    def close(self) -> None:
        for part in self.parts:
            part.close()


def _restricted(cfg: DictConfig, parts: list, restrict: list[bool]) -> SkeletonRestricted:
    return SkeletonRestricted(
        parts, restrict, float(cfg.threshold), float(cfg.skeleton.conf_threshold), float(cfg.skeleton.limb_scale)
    )


PERSON_SEGMENTERS = {
    "pose": lambda cfg: PoseSegmentation(),
    "pose_skeleton": lambda cfg: _restricted(cfg, [PoseSegmentation()], [True]),
    "selfie": lambda cfg: SelfieSegmenter(**cfg.selfie),
    "selfie_skeleton": lambda cfg: _restricted(cfg, [SelfieSegmenter(**cfg.selfie)], [True]),
    "pose_selfie": lambda cfg: _restricted(cfg, [PoseSegmentation(), SelfieSegmenter(**cfg.selfie)], [False, True]),
    "keypoint_box": lambda cfg: KeypointBoxSegmenter(**cfg.keypoint_box),
}


def build_person_segmenter(cfg: DictConfig, pose=None) -> PersonSegmenter:
    """``cfg`` is the ``masks`` node: ``name`` picks the backend, ``cfg[name]`` holds its options.

    Segmenters that read the pose pass (``pose``, ``pose_skeleton``, ``pose_selfie``) are attached to
    ``pose`` (the run's pose estimator); without one they fail when first called.
    """
    segmenter = build_backend(PERSON_SEGMENTERS, cfg, "masks")
    if pose is not None and hasattr(segmenter, "attach"):
        segmenter.attach(pose)
    return segmenter
