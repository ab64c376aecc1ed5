"""Writing and safely reading WebDataset shards of clips.

Writing goes through webdataset's ``TarWriter`` into a temporary file that is
renamed to its final name only once the shard is complete, so a crash or a
full disk never leaves a half shard that looks finished.

Shard sources (:func:`expand_shards`): a brace pattern, a glob, a folder, a preprocessing
``manifest.json``, a text file of URLs, or remote URLs (``pipe:``, ``http(s)://``, ...) that are
read through webdataset's own opener (``wds.gopen``) with the same safe decoding as local files.

Reading never unpickles: tar members are grouped by key and each known file is
decoded by an explicit decoder (``schema.decode_clip``).  A truncated or
corrupt shard, a sample with a missing key, or one whose arrays disagree with
its frames is skipped with a warning that names the shard and the key, and is
counted in a ``SkipCounter`` that worker processes share.
"""

from __future__ import annotations

import glob
import logging
import multiprocessing as mp
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import webdataset as wds

from fgbg.data.manifest import manifest_shards
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


# -- shard sources -------------------------------------------------------------------------
LIST_SUFFIXES = (".txt", ".lst", ".list")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_CHARS = re.compile(r"[*?[]")
SOURCE_KINDS = (
    "a brace pattern (data/train-{000000..000009}.tar), a glob (data/*.tar), a folder, a preprocessing "
    "manifest.json, a text file of URLs (.txt/.lst/.list, one a line), a remote URL (pipe:CMD, http(s)://...), "
    "or a list of those"
)


def is_remote(url: str) -> bool:
    """``pipe:`` commands and ``scheme://`` URLs other than ``file://``: opened with ``wds.gopen``."""
    match = _SCHEME.match(url)
    return url.startswith("pipe:") or (match is not None and match[1].lower() != "file")


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.lower().startswith("file://") else url


def _check_remote_scheme(url: str, source: str) -> None:
    from webdataset.gopen import gopen_schemes

    if url.startswith("pipe:"):
        if not url[5:].strip():
            raise ValueError(f"shard source {source!r}: empty pipe: command")
        return
    scheme = _SCHEME.match(url)[1].lower()
    if scheme not in gopen_schemes:
        raise ValueError(
            f"shard source {source!r}: webdataset cannot open {scheme}:// URLs "
            f"(it opens {', '.join(sorted(k + '://' for k in gopen_schemes if k not in ('__default__', 'pipe')))} "
            f"and pipe:); read them through a pipe, e.g. 'pipe:aws s3 cp {url} -' for s3://"
        )


def open_shard(url: str):
    """A binary stream of the shard: a local file, or ``wds.gopen``'s stream for a remote URL."""
    if is_remote(url):
        return wds.gopen(url, "rb")
    return open(_local_path(url), "rb")


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except Exception:  # a pipe closed early exits with SIGPIPE; that is not an error of the data
        pass


def probe_shard(url: str) -> None:
    """Read the first tar header of ``url``; raises ``FileNotFoundError`` naming it when that fails
    (an unreachable URL, a failing pipe command, an empty stream, not a tar file)."""
    stream = None
    try:
        stream = open_shard(url)
        head = stream.read(tarfile.BLOCKSIZE)
        if len(head) < tarfile.BLOCKSIZE:
            raise OSError(f"read {len(head)} bytes, fewer than one tar header")
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except (OSError, ValueError, tarfile.TarError) as err:
        raise FileNotFoundError(f"cannot read shard {url!r}: {type(err).__name__}: {err}") from None
    finally:
        if stream is not None:
            _close_quietly(stream)


def _expand_one(item: str, split: str | None, base: Path | None, depth: int) -> list[str]:
    """One source string -> shard URLs/paths (existence of plain paths is checked by the caller)."""
    if depth > 4:
        raise ValueError(f"shard source {item!r}: lists of lists nested more than 4 deep")
    item = item.strip()
    if not item:
        return []
    if is_remote(item):
        urls = wds.shardlists.expand_urls(item)  # pipe:curl -s http://h/train-{000..009}.tar: 10 commands
        for url in urls:
            _check_remote_scheme(url, item)
        return urls
    out: list[str] = []
    for pattern in wds.shardlists.expand_urls(_local_path(item)):
        path = Path(pattern).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        if _GLOB_CHARS.search(pattern):
            found = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"no shards match the glob {pattern!r} (source {item!r})")
            for p in found:
                out += _expand_one(p, split, None, depth + 1) if p.endswith(".json") else [p]
        elif path.is_dir():
            manifests = sorted(path.glob("manifest*.json"))
            if manifests:
                for m in manifests:
                    out += manifest_shards(m, split)
            else:
                found = sorted(str(p) for p in path.rglob("*.tar") if p.is_file())
                if not found:
                    raise FileNotFoundError(f"folder {str(path)!r} holds no manifest*.json and no .tar shards")
                out += found
        elif path.suffix == ".json":
            if not path.is_file():
                raise FileNotFoundError(f"no such manifest {str(path)!r}")
            out += manifest_shards(path, split)
        elif path.suffix.lower() in LIST_SUFFIXES:
            if not path.is_file():
                raise FileNotFoundError(f"no such list of shards {str(path)!r}")
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith("#")]
            if not lines:
                raise ValueError(f"list of shards {str(path)!r} names no shard (blank lines and # comments only)")
            for line in lines:
                out += _expand_one(line, split, path.parent, depth + 1)
        else:
            out.append(str(path))
    return out


def expand_shards(
    shards: str | Sequence[str], check_exist: bool = True, split: str | None = None, allow_empty: bool = False
) -> list[str]:
    """A shard source (:data:`SOURCE_KINDS`) -> the list of shard paths and URLs it names, in order.

    ``split`` (``train`` / ``val``) picks that side of a manifest's held-out-by-video split (a manifest
    without one: all for ``train``, none for ``val``); other sources are taken whole. With
    ``check_exist``, every local shard must exist and the first remote one must answer with a tar header
    (``FileNotFoundError`` naming it). Nothing found raises ``ValueError`` naming the source, unless
    ``allow_empty`` (a manifest's empty ``val`` side).
    """
    items = [shards] if isinstance(shards, str) else [str(s) for s in shards]
    urls = [u for item in items for u in _expand_one(item, split, None, 0)]
    if not urls:
        if allow_empty:
            return []
        if split == "val":
            raise ValueError(
                f"no held-out shards in {shards!r}: a manifest without a split holds out no video (write one "
                "with fgbg-preprocess ... split_val=0.05 or python -m fgbg.data.manifest MANIFEST --val 0.05)"
            )
        raise ValueError(f"no shards in {shards!r}: expected {SOURCE_KINDS}")
    if check_exist:
        missing = [u for u in urls if not is_remote(u) and not Path(_local_path(u)).is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise FileNotFoundError(
                f"{len(missing)} of {len(urls)} shards of {shards!r} do not exist: {missing[:3]}{more}"
            )
        remote = [u for u in urls if is_remote(u)]
        if remote:
            probe_shard(remote[0])
    return [_local_path(u) for u in urls]


def iter_tar_groups(url: str, stream=None) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__", "__url__", ext: bytes, ...}`` groups from one tar shard (a local path or a
    remote URL, see :func:`open_shard`).

    Raises ``tarfile.TarError`` / ``OSError`` / ``EOFError`` on a corrupt shard (for a remote URL also
    when its command or download fails); the partial group being read when the error happened is never
    yielded.
    """
    close = stream is None
    if stream is None:
        stream = open_shard(url)
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
        if close and is_remote(url):
            stream.close()  # a failed download or pipe command raises here (OSError): the shard is incomplete
    finally:
        if close:
            _close_quietly(stream)


def count_tar_groups(url: str) -> int:
    """Number of samples (groups of members sharing a key, as :func:`iter_tar_groups` forms them) in a
    shard, from the tar headers alone (a local shard's members are not read; a remote one is streamed
    through once). A corrupt shard counts what precedes the damage."""
    count, last = 0, None
    stream = None
    try:
        stream = open_shard(url)
        with tarfile.open(fileobj=stream, mode="r|*" if is_remote(url) else "r:*") as tf:
            for member in tf:
                base = os.path.basename(member.name)
                if not member.isfile() or "." not in base:
                    continue
                key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                if key != last:
                    count, last = count + 1, key
    except (tarfile.TarError, OSError, EOFError, ValueError):
        pass
    finally:
        if stream is not None:
            _close_quietly(stream)
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
