"""``fgbg-preprocess``: folders of real videos -> shards of the sample schema plus a manifest.

``preprocess(cfg)`` is the plain function (tests call it through Hydra's compose
API); ``main`` is the Hydra wrapper behind the console script and
``python -m fgbg.preprocess``.

Resumability: the parent process alone writes the manifest, atomically (temp
file + rename) after every finished video. A rerun skips every video the
manifest lists as ``done`` or ``skipped`` (failed ones are retried); a video
that was interrupted has its partial shards removed and is redone. Each video
has its own shard files, named from its id, so the output of an interrupted and
resumed run equals that of an uninterrupted one.

Parts (``part=I/N``, or ``part=I parts=N``; a SLURM array through
``preprocess_launcher=submitit_slurm``, docs/preprocess.md) share one output folder
and one ``manifest.json``: every change is a read-merge-write of the file on disk
under an exclusive ``flock`` on ``manifest.json.lock``, so parts finishing videos
at the same moment never drop each other's entries.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from fgbg.data.manifest import MANIFEST_VERSION, finished_videos, with_split, write_json_atomic
from fgbg.preprocess.decode import VIDEO_EXTENSIONS
from fgbg.preprocess.pipeline import Backends, VideoSource, build_backends, process_video, video_shards
from fgbg.utils.config import CONF_DIR

log = logging.getLogger(__name__)

FINISHED = ("done", "skipped")
# Keys that do not change what is written: they are left out of the settings a manifest is tied to.
_RUN_KEYS = ("input", "output", "workers", "part", "parts", "overwrite", "split_val", "split_seed", "sheet")
_LIST_SUFFIXES = (".txt", ".lst", ".list")


def video_id_for(relative: str) -> str:
    """A stable, shard- and key-safe id: sanitised stem plus 8 hex digits of the relative path.

    WebDataset splits keys at the first dot, so ids hold only ``[A-Za-z0-9_-]``.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(relative).stem).strip("_")[:48] or "video"
    return f"{stem}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def list_videos(inputs) -> list[VideoSource]:
    """A file, a folder (recursive, by extension) or a list file, or a list of those -> sorted sources.

    Ids come from paths relative to the folder or list file, so moving a corpus
    keeps them. Raises ``FileNotFoundError`` naming a missing input.
    """
    items = list(inputs) if isinstance(inputs, (list, tuple, ListConfig)) else [inputs]
    sources: dict[str, VideoSource] = {}
    for item in items:
        root = Path(str(item)).expanduser()
        if root.is_dir():
            found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
            pairs = [(p, p.relative_to(root).as_posix()) for p in found]
        elif root.is_file() and root.suffix.lower() in _LIST_SUFFIXES:
            pairs = []
            for line in root.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                path = Path(line).expanduser()
                path = path if path.is_absolute() else root.parent / path
                pairs.append((path, line))
        elif root.is_file():
            pairs = [(root, root.name)]
        else:
            raise FileNotFoundError(f"input: no such file or folder {str(item)!r}")
        for path, rel in pairs:
            source = VideoSource(str(path.resolve()), video_id_for(rel))
            sources.setdefault(source.video_id, source)
    return sorted(sources.values(), key=lambda s: s.video_id)


def parse_part(part, parts=None) -> tuple[int, int] | None:
    """``"I/N"`` (0 <= I < N) -> (I, N); an index ``I`` with ``parts=N`` -> (I, N); None -> None.

    ``parts`` (the number of parts, default 1) only matters for a bare index (the form a
    ``preprocess_launcher=submitit_slurm`` sweep passes); with ``"I/N"`` it must be 1 or N.
    """
    if parts is not None and (isinstance(parts, bool) or not isinstance(parts, int) or parts < 1):
        raise ValueError(f"parts must be a whole number of parts >= 1 (e.g. parts=16), got {parts!r}")
    if part is None:
        return None
    if isinstance(part, int) and not isinstance(part, bool):
        n = parts or 1
        if not 0 <= part < n:
            raise ValueError(f"part={part} with parts={n}: expected 0 <= part < parts (or part='I/N')")
        return part, n
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(part))
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"part must be 'I/N' with 0 <= I < N (e.g. part=0/4), got {part!r}")
    i, n = int(match[1]), int(match[2])
    if parts not in (None, 1, n):
        raise ValueError(f"part={part!r} says {n} parts but parts={parts}: give one of them")
    return i, n


def select_part(sources: list, part: tuple[int, int] | None) -> list:
    """The I-th of N contiguous, near-equal parts of ``sources`` (sizes differ by at most one)."""
    if part is None:
        return sources
    i, n = part
    return sources[len(sources) * i // n : len(sources) * (i + 1) // n]


def settings_of(cfg: DictConfig) -> dict:
    """The resolved config minus the run keys: what decides the content of the shards."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in container.items() if k not in _RUN_KEYS and k != "hydra"}


@contextmanager
def locked(path: Path):
    """An exclusive ``flock`` on ``<path>.lock`` for the block (released by the kernel if the process dies)."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            raise OSError(
                f"cannot lock {path}.lock ({err}): the output folder's file system has no flock (Lustre: mount "
                "with -o flock); write each part to its own output folder instead"
            ) from None
        yield
    finally:
        os.close(fd)


class Manifest:
    """``{"version", "settings", "videos": {video_id: entry}}`` kept on disk after every change.

    Several processes (the parts of a ``part=I/N`` run) may share the file: every change re-reads
    it and merges under :func:`locked`. ``own`` are this run's video ids: ``overwrite`` forgets
    their entries (all entries when ``own`` is None, or when the settings changed).
    """

    def __init__(self, path: Path, settings: dict, overwrite: bool, own: set[str] | None = None):
        self.path = path
        self.settings = settings
        self.data = {"version": MANIFEST_VERSION, "settings": settings, "videos": {}}
        with locked(path):
            old = self._read(check=not overwrite)
            if overwrite:
                if old is not None and old.get("settings") == settings and own is not None:
                    self.data["videos"] = {v: e for v, e in old.get("videos", {}).items() if v not in own}
                    if "split" in old:
                        self.data["split"] = old["split"]
                write_json_atomic(path, self.data)
            elif old is not None:
                self.data["videos"] = old.get("videos", {})
                if "split" in old:
                    self.data["split"] = old["split"]

    def _read(self, check: bool = True) -> dict | None:
        """The manifest on disk (None if absent), checked against this run's settings and version."""
        path, settings = self.path, self.settings
        if not path.exists():
            return None
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            if not check:
                return None
            raise ValueError(f"{path} is not valid JSON ({err}); fix it or rerun with overwrite=true") from None
        if check:
            if old.get("settings") != settings:
                changed = sorted(
                    k
                    for k in set(old.get("settings", {})) | set(settings)
                    if old.get("settings", {}).get(k) != settings.get(k)
                )
                raise ValueError(
                    f"{path} was written with different settings (changed: {changed}); "
                    "use another output folder, or overwrite=true to redo every video"
                )
            if old.get("version") != MANIFEST_VERSION:
                raise ValueError(
                    f"{path} has manifest version {old.get('version')!r}, this fgbg writes version "
                    f"{MANIFEST_VERSION}: use another output folder, or overwrite=true to redo every video"
                )
        return old

    def _update(self, change) -> None:
        """Re-read the file under the lock, apply ``change(data) -> data`` and write it back atomically."""
        with locked(self.path):
            data = self._read() or {"version": MANIFEST_VERSION, "settings": self.settings, "videos": {}}
            self.data = change(data)
            write_json_atomic(self.path, self.data)

    def finished(self) -> set[str]:
        return {vid for vid, e in self.data["videos"].items() if e.get("status") in FINISHED}

    def record(self, entry: dict) -> None:
        self._update(lambda data: {**data, "videos": {**data["videos"], entry["video_id"]: entry}})

    def split(self, val_fraction: float, seed: int) -> None:
        """Hold out ``val_fraction`` of the finished videos for validation (``fgbg.data.manifest``)."""
        self._update(lambda data: with_split(data, val_fraction, seed))
        held_out = len(self.data.get("split", {}).get("val", []))
        log.info("split by video: %d of %d finished videos held out for validation", held_out,
                 len(finished_videos(self.data)))  # fmt: skip


def finished_elsewhere(out_dir: Path, own: Path, settings: dict) -> set[str]:
    """Videos finished according to the other manifests of ``out_dir`` with the same settings (the
    ``manifest.partIII-of-NNN.json`` files that parts wrote before they shared ``manifest.json``)."""
    done: set[str] = set()
    for path in sorted(out_dir.glob("manifest*.json")):
        if path == own:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("settings") == settings:
            done |= {v for v, e in data.get("videos", {}).items() if e.get("status") in FINISHED}
    return done


def run_one(source: VideoSource, out_dir: Path, cfg: DictConfig, backends: Backends) -> dict:
    """``process_video`` that never raises: an unexpected error becomes a ``failed`` entry."""
    try:
        return process_video(source, out_dir, cfg, backends)
    except Exception as err:  # one bad video must not stop a corpus run
        log.error("%s failed:\n%s", source.path, traceback.format_exc())
        for shard in video_shards(out_dir, source.video_id):
            shard.unlink(missing_ok=True)
        return {
            "video_id": source.video_id,
            "source": source.path,
            "status": "failed",
            "reason": f"{type(err).__name__}: {err}",
        }


_WORKER: dict = {}


def _init_worker(cfg_container: dict, out_dir: str) -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool already uses every core
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    cfg = OmegaConf.create(cfg_container)
    _WORKER.update(cfg=cfg, out_dir=Path(out_dir), backends=build_backends(cfg))


def _worker_run(source: VideoSource) -> dict:
    return run_one(source, _WORKER["out_dir"], _WORKER["cfg"], _WORKER["backends"])


def _log_entry(done: int, total: int, entry: dict) -> None:
    if entry["status"] == "done":
        timing = entry["timing"]
        log.info(
            "[%d/%d] %s: %d clips, pose in %.0f%% of frames, %s tracks/clip, %.1f s (%.0f frames/s)",
            done, total, entry["video_id"], entry["clips"], 100 * entry["pose_detection_rate"],
            min(entry["tracks_per_clip"]), timing["seconds"], timing["frames_per_second"],
        )  # fmt: skip
    else:
        log.warning("[%d/%d] %s %s: %s", done, total, entry["video_id"], entry["status"], entry["reason"])


def preprocess(cfg: DictConfig) -> dict:
    """Process every unfinished video of ``cfg.input`` into ``cfg.output``; returns the manifest data."""
    part = parse_part(cfg.part, cfg.get("parts"))
    split_val = cfg.get("split_val")
    if split_val is not None and not (isinstance(split_val, (int, float)) and 0 <= split_val < 1):
        raise ValueError(f"split_val={split_val!r}: expected null or a fraction of videos in [0, 1), e.g. 0.05")
    sources = select_part(list_videos(cfg.input), part)  # bad input fails before anything is written
    out_dir = Path(str(cfg.output)).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_of(cfg)
    own = None if part is None else {s.video_id for s in sources}
    manifest = Manifest(out_dir / "manifest.json", settings, bool(cfg.overwrite), own)
    skip = set() if cfg.overwrite else manifest.finished() | finished_elsewhere(out_dir, manifest.path, settings)
    todo = [s for s in sources if s.video_id not in skip]
    log.info("%d videos in input%s, %d finished, %d to do -> %s", len(sources), f" part {part[0]}/{part[1]}" if part else "",
             len(sources) - len(todo), len(todo), out_dir)  # fmt: skip
    workers = max(1, int(cfg.workers))
    start = time.perf_counter()
    if workers == 1 or len(todo) <= 1:
        backends = build_backends(cfg)
        try:
            for n, source in enumerate(todo, 1):
                entry = run_one(source, out_dir, cfg, backends)
                manifest.record(entry)
                _log_entry(n, len(todo), entry)
        finally:
            backends.close()
    elif todo:
        build_backends(cfg).close()  # fail here, with the real message, on a bad backend config
        container = OmegaConf.to_container(cfg, resolve=True)
        container.pop("hydra", None)
        with ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(container, str(out_dir))
        ) as pool:
            futures = [pool.submit(_worker_run, s) for s in todo]
            for n, future in enumerate(as_completed(futures), 1):
                try:
                    entry = future.result()
                except BrokenProcessPool as err:
                    raise RuntimeError(
                        "a worker process died (out of memory, or a crash inside a native library); the "
                        f"{n - 1} videos finished so far are in {manifest.path}: rerun the same command to resume"
                    ) from err
                manifest.record(entry)
                _log_entry(n, len(todo), entry)
    if split_val is not None:
        manifest.split(float(split_val), int(cfg.get("split_seed", 0)))
    videos = manifest.data["videos"]
    counts = {s: sum(e["status"] == s for e in videos.values()) for s in ("done", "skipped", "failed")}
    frames = sum(videos[s.video_id].get("frames_processed", 0) for s in todo if s.video_id in videos)
    seconds = time.perf_counter() - start
    log.info("finished: %s; this run %d frames in %.1f s (%.1f frames/s); manifest %s", counts, frames, seconds,
             frames / max(seconds, 1e-9), manifest.path)  # fmt: skip
    return manifest.data


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="preprocess")
def main(cfg: DictConfig) -> None:
    preprocess(cfg)
