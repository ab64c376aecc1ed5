"""The preprocessing manifest (``fgbg-preprocess`` writes it next to the shards) as a shard source,
and its split held out by video.

A manifest is ``{"version", "settings", "videos": {video_id: entry}, "split"?}``; every finished
video (``status: done``) lists its shard files (``entry["shards"]``, relative to the manifest's
folder), and every shard holds clips of one video only. ``split`` (written by
``fgbg-preprocess ... split_val=0.05`` or ``python -m fgbg.data.manifest``) is
``{"by": "video", "val_fraction", "seed", "val": [video_id, ...]}``: a video is in ``val`` or in
train, never both, so two clips of one video never land on both sides.

Which videos are held out depends only on ``(seed, video_id)`` (a hash below ``val_fraction``), so
the parts of a ``part=I/N`` run agree, and a video added later never moves an earlier one across.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

MANIFEST_VERSION = 1
SPLITS = ("train", "val")


class ManifestError(ValueError):
    """A manifest that cannot be read as the shard source it claims to be."""


def read_manifest(path: str | os.PathLike) -> dict:
    """Load and check a preprocessing manifest; raises :class:`ManifestError` naming ``path``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"manifest {str(path)!r} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        raise ManifestError(
            f"{str(path)!r} is not an fgbg-preprocess manifest: expected a JSON object with "
            f"'version' and 'videos' (got keys {sorted(data) if isinstance(data, dict) else type(data).__name__})"
        )
    if data.get("version") != MANIFEST_VERSION:
        raise ManifestError(
            f"manifest {str(path)!r} has version {data.get('version')!r}, this fgbg reads version "
            f"{MANIFEST_VERSION}: rerun fgbg-preprocess into a new output folder"
        )
    return data


def finished_videos(data: dict) -> list[str]:
    """Ids of the videos with written clips, sorted."""
    return sorted(v for v, e in data["videos"].items() if e.get("status") == "done" and e.get("shards"))


def _unit(seed: int, video_id: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, video id)."""
    digest = hashlib.sha256(f"{seed}:{video_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_video(video_ids: list[str], val_fraction: float, seed: int = 0) -> list[str]:
    """The held-out video ids: those whose hash lies below ``val_fraction``; with two or more videos and
    ``val_fraction > 0``, at least one (the lowest hash) and never all (the highest stays in train)."""
    if not 0 <= val_fraction < 1 or not math.isfinite(val_fraction):
        raise ValueError(f"split_val={val_fraction!r}: expected a fraction of videos in [0, 1)")
    ranked = sorted(video_ids, key=lambda v: (_unit(seed, v), v))
    val = [v for v in ranked if _unit(seed, v) < val_fraction]
    if val_fraction > 0 and len(ranked) >= 2 and not val:
        val = ranked[:1]
    return sorted(val[: max(0, len(ranked) - 1)])


def with_split(data: dict, val_fraction: float, seed: int = 0) -> dict:
    """``data`` with its ``split`` set over its finished videos (removed for ``val_fraction == 0``)."""
    data = dict(data)
    if not val_fraction:
        data.pop("split", None)
        return data
    data["split"] = {
        "by": "video",
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "val": split_by_video(finished_videos(data), float(val_fraction), int(seed)),
    }
    return data


def manifest_shards(path: str | os.PathLike, split: str | None = None) -> list[str]:
    """Shard paths of the finished videos of manifest ``path``: all (``split=None``), or those of the
    ``train`` or ``val`` side of its split. Without a split, ``train`` is all of them and ``val`` none."""
    if split not in (None, *SPLITS):
        raise ValueError(f"split={split!r}: expected None, 'train' or 'val'")
    path = Path(path)
    data = read_manifest(path)
    videos = finished_videos(data)
    if split is not None:
        held_out = set((data.get("split") or {}).get("val", []))
        videos = [v for v in videos if (v in held_out) == (split == "val")]
    root = path.parent
    return [str(root / name) for v in videos for name in data["videos"][v]["shards"]]


def write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    """``python -m fgbg.data.manifest data/real/manifest.json --val 0.05 [--seed 0]``: (re)write the split."""
    parser = argparse.ArgumentParser(
        prog="python -m fgbg.data.manifest",
        description="Write a held-out-by-video split into a preprocessing manifest.",
    )
    parser.add_argument("manifest", help="manifest.json written by fgbg-preprocess")
    parser.add_argument("--val", type=float, required=True, help="fraction of videos held out for validation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = Path(args.manifest)
    data = with_split(read_manifest(path), args.val, args.seed)
    write_json_atomic(path, data)
    split = data.get("split", {"val": []})
    total = len(finished_videos(data))
    print(f"{path}: {len(split['val'])} of {total} videos held out for validation, {total - len(split['val'])} train")


if __name__ == "__main__":
    main()
