"""Contact sheet of the first written clips of a video (``fgbg-preprocess ... sheet=PATH``).

One row per clip, six frames each: the frame with the stored person mask tinted,
the pose skeleton (thin, so small people stay visible), and the kept background tracks with their last positions as
trails (filled dots visible, hollow ones not), so a user sees at a glance whether
the mask is on the posed person and the tracks stay off it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fgbg.data.render import contact_sheet, draw_pose, save_png
from fgbg.data.schema import Clip

MASK_TINT = np.array([255, 0, 255], np.float32)  # magenta: apart from the skeleton's and the tracks' colours


def tint(frames: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(T, H, W, 3) uint8 frames, (T, H, W) bool masks -> frames blended towards ``MASK_TINT`` on the mask."""
    out = frames.astype(np.float32)
    out[masks] = (1 - alpha) * out[masks] + alpha * MASK_TINT
    return out.round().astype(np.uint8)


def sheet_path(path: str, video_id: str) -> Path:
    """``sheet=PATH``: a ``.png`` path is the file itself; any other path is a folder that gets
    ``<video_id>.png`` (one sheet per video)."""
    path = Path(str(path)).expanduser()
    return path if path.suffix.lower() == ".png" else path / f"{video_id}.png"


class SheetRows:
    """Collects the first ``num_clips`` clips of a video and writes them as one PNG."""

    def __init__(self, num_clips: int = 4, num_columns: int = 6, min_size: int = 192):
        self.num_clips, self.num_columns, self.min_size = num_clips, num_columns, min_size
        self.rows: list[dict] = []

    def add(self, clip: Clip) -> None:
        if len(self.rows) >= self.num_clips:
            return
        label = f"{clip.key}  {clip.tracks.shape[1]} tracks"
        frames = tint(clip.frames, clip.masks)
        for frame, keypoints in zip(frames, clip.pose):
            # 1-px bones and joints: contact_sheet's skeleton scales with the frame and hides small people
            draw_pose(frame, keypoints, line_width=1, point_radius=1)
        self.rows.append(dict(frames=frames, tracks=clip.tracks, visible=clip.visible, label=label))

    def write(self, path: Path) -> Path | None:
        """Write the sheet to ``path`` (parents created); nothing when no clip was added. Returns the path written."""
        if not self.rows:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(contact_sheet(self.rows, num_columns=self.num_columns, min_size=self.min_size), path)
        return path
