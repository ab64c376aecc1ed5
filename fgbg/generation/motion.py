"""Driving motion for long videos, served one clip window at a time.

``DrivingMotion`` holds the foreground (a pose sequence) and the background
(tracks from a file or a preprocessed sample, or a camera preset that makes
them), already mapped to the output size. ``window(start, length)`` returns
what one clip needs, so a video of any length costs memory for one clip only.

Frame 0 of the video is the reference image's moment: background tracks are
anchored there (``anchor``), and a window also gets the points' positions in
the frame just before it (``link``), where the previous clip's last frame is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fgbg.generation.camera import CameraPreset, preset_tracks


class MotionError(ValueError):
    """Driving motion that cannot cover the request; the message says what was expected."""


@dataclass
class DrivingMotion:
    """pose: (M, 18, 3) in output pixels; tracks/visible: (M', N, 2)/(M', N) or a camera preset."""

    pose: np.ndarray
    height: int
    width: int
    tracks: np.ndarray | None = None
    visible: np.ndarray | None = None
    camera: CameraPreset | None = None
    loop: bool = False
    num_points: int = 24
    source: str = ""

    def __post_init__(self) -> None:
        if (self.tracks is None) == (self.camera is None):
            raise MotionError("give background motion either as tracks or as a camera preset, not both or neither")
        if self.tracks is not None and self.tracks.shape[0] != self.pose.shape[0]:
            raise MotionError(
                f"tracks have {self.tracks.shape[0]} frames but the pose sequence has {self.pose.shape[0]}"
                f" ({self.source}): they must describe the same frames"
            )

    @property
    def length(self) -> int:
        return int(self.pose.shape[0])

    def check_covers(self, num_frames: int) -> None:
        if num_frames > self.length and not self.loop:
            raise MotionError(
                f"the driving motion has {self.length} frames but {num_frames} were requested ({self.source});"
                " ask for fewer frames or set loop=true to repeat the motion"
            )

    def _index(self, start: int, length: int) -> np.ndarray:
        idx = np.arange(start, start + length)
        return idx % self.length if self.loop else idx

    def window(self, start: int, length: int, person_region: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Pose and tracks for frames [start, start + length).

        Returns ``pose`` (L, 18, 3), ``tracks`` (L, N, 2), ``visible`` (L, N),
        ``anchor`` (N, 2), ``anchor_visible`` (N,), ``link`` (N, 2),
        ``link_visible`` (N,). ``person_region`` (H, W) bool marks the
        reference's person: anchors there are not visible.
        """
        self.check_covers(start + length)
        idx = self._index(start, length)
        out = {"pose": self.pose[idx]}
        if self.camera is not None:
            out.update(
                preset_tracks(self.camera, start, length, self.height, self.width, self.num_points, person_region)
            )
            return out
        tracks, visible = self.tracks[idx], self.visible[idx]
        # Anchors: positions at frame 0 (the reference's moment), where visible and off the person.
        anchor, anchor_visible = self.tracks[0], self.visible[0].copy()
        if person_region is not None:
            iy = np.clip(anchor[:, 1].astype(int), 0, self.height - 1)
            ix = np.clip(anchor[:, 0].astype(int), 0, self.width - 1)
            anchor_visible &= ~person_region[iy, ix].astype(bool)
        # Link: the frame just before the window, if it is the true predecessor (not across a loop wrap).
        prev = start - 1
        contiguous = prev >= 0 and (not self.loop or (idx[0] - 1) % self.length == prev % self.length and idx[0] != 0)
        if contiguous:
            link, link_visible = self.tracks[prev % self.length], self.visible[prev % self.length]
        else:
            link, link_visible = np.zeros_like(anchor), np.zeros(len(anchor), bool)
        # Keep the points seen in this window, best covered first, at most num_points.
        seen = visible.sum(0)
        order = np.argsort(-seen, kind="stable")
        keep = order[seen[order] > 0][: self.num_points]
        out.update(
            tracks=tracks[:, keep], visible=visible[:, keep], anchor=anchor[keep], anchor_visible=anchor_visible[keep],
            link=link[keep], link_visible=link_visible[keep],
        )  # fmt: skip
        return out
