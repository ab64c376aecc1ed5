"""The clip jobs of one long video, as a Lightning predict datamodule.

Job k covers frames ``[k * clip_len, min((k + 1) * clip_len, num_frames))``.
Each job carries the conditions of its window (built by
``fgbg.data.conditioning.build_conditions``, the same function training uses),
the reference (the predictor uses it at job 0 only), and the raw pose and
tracks of the window for drawing. The link frame is not known here: the
predictor fills it in from the previous clip's output.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from fgbg.data.conditioning import build_conditions, collate_conditions
from fgbg.data.schema import NUM_KEYPOINTS


class VideoJobs(Dataset):
    """Map-style dataset of clip jobs. ``motion`` is a ``fgbg.generation.motion.DrivingMotion``."""

    def __init__(
        self,
        reference: np.ndarray,
        motion,
        num_frames: int,
        clip_len: int,
        max_tracks: int = 50,
        reference_mask: np.ndarray | None = None,
        reference_keypoints: np.ndarray | None = None,
        render: dict[str, Any] | None = None,
    ):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        motion.check_covers(num_frames)
        self.reference = reference
        self.height, self.width = reference.shape[:2]
        self.motion = motion
        self.num_frames = num_frames
        self.clip_len = clip_len
        self.max_tracks = max_tracks
        self.reference_mask = reference_mask
        self.reference_keypoints = (
            reference_keypoints if reference_keypoints is not None else np.zeros((NUM_KEYPOINTS, 3), np.float32)
        )
        self.render = dict(render or {})

    def __len__(self) -> int:
        return math.ceil(self.num_frames / self.clip_len)

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        start = k * self.clip_len
        length = min(self.clip_len, self.num_frames - start)
        w = self.motion.window(start, length, self.reference_mask)
        n = min(w["tracks"].shape[1], self.max_tracks)
        cond = build_conditions(
            height=self.height,
            width=self.width,
            reference_frame=self.reference,
            reference_keypoints=self.reference_keypoints,
            keypoints=w["pose"],
            tracks=w["tracks"][:, :n],
            track_visible=w["visible"][:, :n],
            track_anchor=w["anchor"][:n],
            track_anchor_visible=w["anchor_visible"][:n],
            max_tracks=self.max_tracks,
            reference_mask=self.reference_mask,
            key=f"clip{k:05d}",
            **self.render,
        )
        cond["link_tracks"] = np.pad(w["link"][:n], ((0, self.max_tracks - n), (0, 0))).astype(np.float32)
        cond["link_track_visible"] = np.pad(w["link_visible"][:n], (0, self.max_tracks - n))
        cond["clip_index"] = np.int64(k)
        cond["start"] = np.int64(start)
        return cond


class VideoJobsDataModule(L.LightningDataModule):
    """Serves ``VideoJobs`` in order, one job per batch, in the main process."""

    def __init__(self, jobs: VideoJobs):
        super().__init__()
        self.jobs = jobs

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.jobs, batch_size=1, shuffle=False, num_workers=0, collate_fn=collate_conditions)
