"""Streaming video files out (MP4/H.264 and GIF through PyAV) and in.

Writers take one frame at a time and hold no frame history, so memory stays
flat however long the video; each file is written under a temporary name and
renamed when closed, so an interrupted run leaves no file that looks complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

# Encoder settings for streaming: a short look-ahead and no frame threads, so the encoder holds a
# few frames instead of ~40 (x264's default look-ahead) and the writer's memory stops growing
# after the first clip (bench/long_video.py). Quality is set by crf; files are slightly larger.
X264_STREAMING = {"x264-params": "rc-lookahead=4:sync-lookahead=0:threads=1:bframes=2"}


class VideoFileWriter:
    """Write RGB uint8 frames (H, W, 3) to ``path`` (.mp4: H.264 yuv420p; .gif: per-frame palette).

    H.264 with yuv420p needs even sizes: odd sizes are padded by one pixel
    (edge replicated). Use as a context manager; on an exception the temporary
    file is removed and nothing appears at ``path``.
    """

    def __init__(self, path: str | os.PathLike, fps: float, crf: int = 18):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".mp4", ".gif"):
            raise ValueError(f"video path {self.path} must end in .mp4 or .gif")
        self.kind = suffix[1:]
        self.fps = fps
        self.crf = crf
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._container = None
        self._stream = None
        self.frames_written = 0

    def _open(self, h: int, w: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "mp4" if self.kind == "mp4" else "gif"
        self._container = av.open(str(self.tmp), "w", format=fmt)
        rate = max(1, round(self.fps))
        if self.kind == "mp4":
            self._stream = self._container.add_stream(
                "libx264", rate=rate, options={"crf": str(self.crf), **X264_STREAMING}
            )
            self._stream.pix_fmt = "yuv420p"
            self._stream.width, self._stream.height = w + (w % 2), h + (h % 2)
        else:
            self._stream = self._container.add_stream("gif", rate=rate)
            self._stream.pix_fmt = "pal8"
            self._stream.width, self._stream.height = w, h

    def write(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        if self._container is None:
            self._open(h, w)
        if self.kind == "mp4":
            if h % 2 or w % 2:
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        else:
            q = Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT)
            pal = np.array(q.getpalette()[:768], np.uint8).reshape(-1, 3)
            pal = np.concatenate([pal, np.zeros((256 - len(pal), 3), np.uint8)])
            argb = np.ascontiguousarray(np.concatenate([np.full((256, 1), 255, np.uint8), pal], 1))
            vf = av.VideoFrame.from_ndarray((np.ascontiguousarray(np.asarray(q)), argb), format="pal8")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> Path:
        if self._container is None:
            raise ValueError(f"no frames were written to {self.path}")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the container may be half-written; we delete it anyway
                pass
            self._container = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoFileWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file to (T, H, W, 3) uint8 RGB and its frame rate.

    Raises ``ValueError`` naming the file when it cannot be opened or holds no
    video frames.
    """
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise ValueError(f"cannot open video {path}: {err}") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} holds no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        frames = []
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.FFmpegError as err:
            if not frames:
                raise ValueError(f"cannot decode video {path}: {err}") from None
    if not frames:
        raise ValueError(f"{path} holds no decodable video frames")
    return np.stack(frames), fps
