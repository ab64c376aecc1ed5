"""Streams generated clips to disk as the predict loop produces them.

Writes ``video.mp4`` (H.264) and ``video.gif`` frame by frame, keeps only the
few frames the contact sheet shows, and on the end of the loop writes
``sheet.png`` (frames with the driving skeleton and track points drawn over
them, above the pose maps) and ``generation.json`` (settings, seed, timings,
peak memory). Every file appears under its final name only when complete; if
the loop fails, the partial videos are removed.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from fgbg.data.render import contact_sheet, save_png
from fgbg.data.video import VideoFileWriter

OUTPUT_NAMES = ("video.mp4", "video.gif", "sheet.png", "generation.json")


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class VideoPredictionWriter(BasePredictionWriter):
    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_frames: int,
        fps: float = 8.0,
        sheet_columns: int = 8,
        settings: dict[str, Any] | None = None,
        gif: bool = True,
    ):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.num_frames = num_frames
        self.fps = fps
        self.settings = dict(settings or {})
        self.gif = gif
        self.sheet_index = set(
            np.unique(np.linspace(0, num_frames - 1, min(sheet_columns, num_frames)).round().astype(int)).tolist()
        )
        self._writers: list[VideoFileWriter] = []
        self._sheet: dict[int, dict[str, np.ndarray]] = {}
        self.frames_written = 0
        self.paths: dict[str, str] = {}

    def on_predict_start(self, trainer, pl_module) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._writers = [VideoFileWriter(self.output_dir / "video.mp4", self.fps)]
        if self.gif:
            self._writers.append(VideoFileWriter(self.output_dir / "video.gif", self.fps))
        self._sheet = {}
        self.frames_written = 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        frames = to_uint8(prediction["frames"][0])
        start = prediction["start"]
        pose = batch["keypoints"][0].cpu().numpy()
        tracks = batch["tracks"][0].cpu().numpy()
        visible = batch["track_visible"][0].cpu().numpy()
        valid = batch["track_valid"][0].cpu().numpy()
        pose_maps = (batch["pose_maps"][0].permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)
        for i, frame in enumerate(frames):
            for w in self._writers:
                w.write(frame)
            if start + i in self.sheet_index:
                self._sheet[start + i] = {
                    "frame": frame, "pose": pose[i], "tracks": tracks[i][valid], "visible": visible[i][valid],
                    "pose_map": pose_maps[i],
                }  # fmt: skip
        self.frames_written += len(frames)

    def on_predict_end(self, trainer, pl_module) -> None:
        for w in self._writers:
            self.paths[w.path.name] = str(w.close())
        self._writers = []
        idx = sorted(self._sheet)
        rows = [
            {"frames": np.stack([self._sheet[i]["frame"] for i in idx]), "label": "generated"},
            {
                "frames": np.stack([self._sheet[i]["frame"] for i in idx]),
                "pose": np.stack([self._sheet[i]["pose"] for i in idx]),
                "tracks": _pad_stack([self._sheet[i]["tracks"] for i in idx]),
                "visible": _pad_stack([self._sheet[i]["visible"] for i in idx]),
                "label": "generated + pose + tracks",
                "trails": False,  # sampled frames come from different clips, whose points differ
            },
            {"frames": np.stack([self._sheet[i]["pose_map"] for i in idx]), "label": "pose maps"},
        ]
        save_png(contact_sheet(rows, num_columns=len(idx)), self.output_dir / "sheet.png")
        self.paths["sheet.png"] = str(self.output_dir / "sheet.png")
        seconds = list(getattr(pl_module, "clip_seconds", []))
        report = {
            "settings": self.settings,
            "frames": self.frames_written,
            "clips": len(seconds),
            "seconds_per_clip": seconds,
            "seconds_per_frame": sum(seconds) / max(1, self.frames_written),
            "peak_memory_mb": peak_memory_mb(pl_module.device),
            "peak_memory_kind": "cuda_max_allocated" if pl_module.device.type == "cuda" else "process_max_rss",
            "referencenet_calls": int(getattr(getattr(pl_module, "model", None), "referencenet_calls", -1)),
            "files": sorted(self.paths),
        }
        tmp = self.output_dir / "generation.json.tmp"
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, self.output_dir / "generation.json")

    def on_exception(self, trainer, pl_module, exception) -> None:
        for w in self._writers:
            w.abort()
        self._writers = []


def _pad_stack(arrays: list[np.ndarray]) -> np.ndarray:
    n = max(a.shape[0] for a in arrays)
    return np.stack([np.pad(a, [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1)) for a in arrays])
