"""Pose retargeting: move a driving pose sequence onto the reference person's body.

Each bone of the OpenPose-18 tree (rooted at the neck) is rescaled to the
reference's length while keeping its direction in every frame (joint angles
are kept; foreshortening in the driving video scales along). The scale of a
bone is ``L_ref / median_t L_drive(t)``. Bones the reference does not show
(either end below the confidence threshold) keep the driving proportions,
scaled by the median of the other bones' scales. Finally the whole sequence is
shifted so that the neck of the first frame sits on the reference's neck.
Pure functions on (T, 18, 3) arrays in pixels (corner origin).
"""

from __future__ import annotations

import numpy as np

from fgbg.data.schema import OPENPOSE18_BONES

ROOT = 1  # neck


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for a, b in OPENPOSE18_BONES:
        out.setdefault(a, []).append(b)
    return out


def bone_scales(
    driving: np.ndarray, reference: np.ndarray, conf_threshold: float = 0.3
) -> dict[tuple[int, int], float]:
    """Per-bone scale factors ``(parent, child) -> L_ref / median L_drive``."""
    scales: dict[tuple[int, int], float] = {}
    shown = reference[:, 2] >= conf_threshold
    for a, b in OPENPOSE18_BONES:
        ok = (driving[:, a, 2] >= conf_threshold) & (driving[:, b, 2] >= conf_threshold)
        if not ok.any() or not (shown[a] and shown[b]):
            continue
        drive_len = float(np.median(np.linalg.norm(driving[ok, b, :2] - driving[ok, a, :2], axis=-1)))
        ref_len = float(np.linalg.norm(reference[b, :2] - reference[a, :2]))
        if drive_len > 1e-6 and ref_len > 1e-6:
            scales[(a, b)] = ref_len / drive_len
    return scales


def retarget_sequence(driving: np.ndarray, reference: np.ndarray, conf_threshold: float = 0.3) -> np.ndarray:
    """(T, 18, 3) driving keypoints + (18, 3) reference keypoints -> (T, 18, 3) retargeted.

    Confidences are the driving ones. Raises ``ValueError`` when the reference
    shows no bone at all (nothing to retarget to).
    """
    if driving.ndim != 3 or driving.shape[1:] != (18, 3) or reference.shape != (18, 3):
        raise ValueError(
            f"expected driving (T, 18, 3) and reference (18, 3), got {driving.shape} and {reference.shape}"
        )
    scales = bone_scales(driving, reference, conf_threshold)
    if not scales:
        raise ValueError("the reference shows no complete bone (two keypoints above the threshold): cannot retarget")
    default = float(np.median(list(scales.values())))
    out = driving.copy()
    children = _children()
    stack = [ROOT]
    while stack:
        parent = stack.pop()
        for child in children.get(parent, []):
            s = scales.get((parent, child), default)
            out[:, child, :2] = out[:, parent, :2] + (driving[:, child, :2] - driving[:, parent, :2]) * s
            stack.append(child)
    if reference[ROOT, 2] >= conf_threshold and driving[0, ROOT, 2] >= conf_threshold:
        out[:, :, :2] += reference[ROOT, :2] - out[0, ROOT, :2]
    return out
