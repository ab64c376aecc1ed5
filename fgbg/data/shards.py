"""Writing and safely reading WebDataset shards of clips.

Writing goes through webdataset's ``TarWriter`` into a temporary file that is
renamed to its final name only once the shard is complete, so a crash or a
full disk never leaves a half shard that looks finished.

Reading never unpickles: tar members are grouped by key and each known file is
decoded by an explicit decoder (``schema.decode_clip``).  A truncated or
corrupt shard, a sample with a missing key, or one whose arrays disagree with
its frames is skipped with a warning that names the shard and the key, and is
counted in a ``SkipCounter`` that worker processes share.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds

from fgbg.data.schema import Clip, SampleError, decode_clip, encode_clip

log = logging.getLogger(__name__)

SKIP_REASONS = ("corrupt_shard", "bad_sample")


class SkipCounter:
    """Counts skipped shards and samples across DataLoader worker processes.

    Backed by a shared ``multiprocessing.Array`` so that counts made in worker
    processes are visible in the main process.
    """

    def __init__(self) -> None:
        self._counts = mp.get_context("spawn").Array("l", len(SKIP_REASONS))

    def add(self, reason: str, n: int = 1) -> None:
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += n

    def as_dict(self) -> dict[str, int]:
        return {r: int(self._counts[i]) for i, r in enumerate(SKIP_REASONS)}

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def reset(self) -> None:
        with self._counts.get_lock():
            for i in range(len(SKIP_REASONS)):
                self._counts[i] = 0


def atomic_replace(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Flush ``tmp`` to disk and rename it to ``final`` in one step."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)


class ClipShardWriter:
    """Writes clips into numbered shards ``<pattern % i>``, each completed atomically.

    ``pattern`` is a printf pattern such as ``out/train-%06d.tar``.  Tar members
    get a fixed mtime, owner and mode so equal clips give byte-identical shards.
    """

    def __init__(self, pattern: str, max_count: int = 64, frame_format: str = "png", start_index: int = 0):
        if "%" not in pattern:
            raise ValueError(f"shard pattern must contain a printf field like %06d, got {pattern!r}")
        self.pattern = pattern
        self.max_count = max_count
        self.frame_format = frame_format
        self.index = start_index
        self.written: list[str] = []
        self._tar: wds.TarWriter | None = None
        self._stream = None
        self._tmp = ""
        self._final = ""
        self._count = 0

    def _open(self) -> None:
        self._final = self.pattern % self.index
        Path(self._final).parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self._final + ".tmp"
        self._stream = open(self._tmp, "wb")
        self._tar = wds.TarWriter(self._stream, user="fgbg", group="fgbg", mtime=0.0)
        self._count = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()  # closes the stream as well
        atomic_replace(self._tmp, self._final)
        self.written.append(self._final)
        self._tar = None
        self.index += 1

    def write(self, clip: Clip) -> None:
        if self._tar is None:
            self._open()
        self._tar.write(encode_clip(clip, frame_format=self.frame_format))
        self._count += 1
        if self._count >= self.max_count:
            self._close()

    def close(self) -> list[str]:
        self._close()
        return self.written

    def abort(self) -> None:
        """Drop the shard being written (its temporary file), keep finished ones."""
        if self._tar is not None:
            try:
                self._tar.close()
            finally:
                self._tar = None
                Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> ClipShardWriter:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_tar_groups(url: str, stream=None) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__", "__url__", ext: bytes, ...}`` groups from one tar shard.

    Raises ``tarfile.TarError`` / ``OSError`` / ``EOFError`` on a corrupt shard;
    the partial group being read when the error happened is never yielded.
    """
    close = stream is None
    if stream is None:
        stream = open(url, "rb")
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tf:
            current: dict[str, Any] | None = None
            for member in tf:
                if not member.isfile():
                    continue
                name = member.name
                base = os.path.basename(name)
                if "." not in base:
                    continue
                prefix, ext = base.split(".", 1)
                key = os.path.join(os.path.dirname(name), prefix)
                # A new key completes the previous group: yield it before reading on, so a
                # cut inside this member does not lose the complete sample before it.
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                data = tf.extractfile(member).read()
                if len(data) != member.size:
                    raise EOFError(f"member {name} truncated")
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
            if current is not None:
                yield current
    finally:
        if close:
            stream.close()


def count_tar_groups(url: str) -> int:
    """Number of samples (groups of members sharing a key, as :func:`iter_tar_groups` forms them) in a local
    shard, from the tar headers alone (no member is read). A corrupt shard counts what precedes the damage."""
    count, last = 0, None
    try:
        with tarfile.open(url, mode="r:*") as tf:
            for member in tf:
                base = os.path.basename(member.name)
                if not member.isfile() or "." not in base:
                    continue
                key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                if key != last:
                    count, last = count + 1, key
    except (tarfile.TarError, OSError, EOFError):
        pass
    return count


def iter_clips(urls: Iterable[str | dict], counter: SkipCounter | None = None) -> Iterator[Clip]:
    """Decode clips from shards, skipping (with a warning, counted) anything bad."""
    for item in urls:
        url = item["url"] if isinstance(item, dict) else str(item)
        try:
            for group in iter_tar_groups(url):
                try:
                    clip = decode_clip(group)
                except SampleError as err:
                    log.warning("skipping sample in shard %s: %s", url, err)
                    if counter is not None:
                        counter.add("bad_sample")
                    continue
                clip.meta["__url__"] = url
                yield clip
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            log.warning("skipping the rest of shard %s: corrupt or truncated (%s: %s)", url, type(err).__name__, err)
            if counter is not None:
                counter.add("corrupt_shard")
