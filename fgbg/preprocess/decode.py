"""Streaming video decode with PyAV: one RGB frame at a time, memory flat in video length."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".ts")


class VideoReadError(ValueError):
    """A video that cannot be read; ``reason`` is a short machine-friendly tag for the manifest."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}: {detail}")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says before decoding; ``size`` is the decoded (height, width)."""

    fps: float
    source_size: tuple[int, int]
    size: tuple[int, int]
    codec: str


def scaled_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(H, W) shrunk so the longer side is at most ``max_side`` (aspect kept; even sizes not required)."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


class VideoFrames:
    """Iterate over ``(index, frame)`` of a video: frame (H, W, 3) uint8 RGB, index in source frames.

    Every ``frame_step``-th source frame is kept; frames are shrunk (area filter,
    in swscale) so the longer side is at most ``max_side``. Opening raises
    ``VideoReadError`` (reason ``unreadable`` or ``no_video_stream``); a stream
    that breaks mid-way stops the iteration with a warning and sets
    ``truncated``; ``frames_decoded`` counts source frames read.
    """

    def __init__(self, path: str | os.PathLike, frame_step: int = 1, max_side: int | None = None):
        if frame_step < 1:
            raise ValueError(f"decode.frame_step must be >= 1, got {frame_step}")
        self.path = Path(path)
        self.frame_step = frame_step
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise VideoReadError(
                path, "unreadable", f"cannot open as a video container ({type(err).__name__}: {err})"
            ) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoReadError(path, "no_video_stream", "the container holds no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        cc = self._stream.codec_context
        rate = self._stream.average_rate or self._stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if not fps > 0:
            log.warning("%s: no frame rate in the container, assuming 25 fps", path)
            fps = 25.0
        src = (int(cc.height), int(cc.width))
        self.info = VideoInfo(fps=fps, source_size=src, size=scaled_size(*src, max_side), codec=str(cc.name))
        self.frames_decoded = 0
        self.truncated = False

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        h, w = self.info.size
        try:
            for frame in self._container.decode(self._stream):
                index = self.frames_decoded
                self.frames_decoded += 1
                if index % self.frame_step:
                    continue
                if (frame.height, frame.width) != (h, w):
                    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
                else:
                    rgb = frame.to_ndarray(format="rgb24")
                yield index, rgb
        except av.FFmpegError as err:
            self.truncated = True
            log.warning("%s: decoding stopped after %d frames (%s)", self.path, self.frames_decoded, err)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *_) -> None:
        self.close()
