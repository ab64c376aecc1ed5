"""Shard sources (issue 15, point 1): brace pattern, glob, folder, manifest.json, text file of URLs, and
remote URLs read through webdataset's opener (pipe:, http://), with the same safe decoding and skip
counts as local files; clear errors naming the source. And the held-out-by-video split (point 2)."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from fgbg.data.manifest import MANIFEST_VERSION, manifest_shards, split_by_video
from fgbg.data.manifest import main as manifest_main
from fgbg.data.shards import ClipShardWriter, SkipCounter, count_tar_groups, expand_shards, iter_clips
from fgbg.datamodules import ClipDataModule
from tests.conftest import random_clip

VIDEOS = [f"vid{i}-{i:08x}" for i in range(10)]


def write_video_shards(folder: Path, videos=VIDEOS, clips_per_video: int = 2) -> dict:
    """What fgbg-preprocess writes: ``<video_id>-00000.tar`` per video (its clips only) and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for v, vid in enumerate(videos):
        with ClipShardWriter(str(folder / f"{vid}-%05d.tar"), max_count=64) as writer:
            for c in range(clips_per_video):
                clip = random_clip(key=f"{vid}_{c:05d}", t=8, h=16, w=16, seed=10 * v + c)
                clip.meta["video_id"] = vid
                writer.write(clip)
        entries[vid] = {"video_id": vid, "status": "done", "clips": clips_per_video,
                        "shards": [Path(p).name for p in writer.written]}  # fmt: skip
    entries["broken-00000000"] = {"video_id": "broken-00000000", "status": "skipped", "reason": "no_person: ..."}
    manifest = {"version": MANIFEST_VERSION, "settings": {}, "videos": entries}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.fixture()
def shards(tmp_path) -> Path:
    folder = tmp_path / "shards"
    write_video_shards(folder, VIDEOS[:3])
    return folder


def keys(urls) -> list[str]:
    counter = SkipCounter()
    out = [c.key for c in iter_clips(urls, counter)]
    assert counter.total == 0, counter.as_dict()
    return out


ALL_KEYS = [f"{v}_{c:05d}" for v in VIDEOS[:3] for c in range(2)]


def test_every_local_source_kind_names_the_same_shards(shards, tmp_path):
    tars = sorted(str(p) for p in shards.glob("*.tar"))
    assert len(tars) == 3
    (tmp_path / "urls.txt").write_text(
        "# one shard a line; relative paths are relative to this file\n\n"
        + "\n".join(f"shards/{Path(t).name}" for t in tars)
        + "\n"
    )
    sources = {
        "list": tars,
        "brace": f"{shards}/{{{','.join(VIDEOS[:3])}}}-00000.tar",
        "glob": f"{shards}/*.tar",
        "recursive glob": f"{tmp_path}/**/vid*.tar",
        "folder": str(shards),  # holds manifest.json: its finished videos
        "manifest": str(shards / "manifest.json"),
        "text file of URLs": str(tmp_path / "urls.txt"),
        "file:// URL": [f"file://{t}" for t in tars],
    }
    for kind, source in sources.items():
        got = expand_shards(source)
        assert sorted(got) == tars, (kind, got)
        assert sorted(keys(got)) == ALL_KEYS, kind

    with pytest.raises(FileNotFoundError, match=r"6 of 9 shards of '.*' do not exist"):
        expand_shards(f"{shards}/vid{{0..2}}-0000000{{0..2}}-00000.tar")  # 9 names, 3 exist
    # a folder without a manifest: every .tar below it
    (shards / "manifest.json").unlink()
    assert expand_shards(str(shards)) == tars


def test_pipe_source_trains_end_to_end_through_the_datamodule(shards):
    tars = sorted(shards.glob("*.tar"))
    pipes = [f"pipe:cat {t}" for t in tars]
    assert expand_shards(pipes) == pipes
    assert [count_tar_groups(p) for p in pipes] == [2, 2, 2]
    assert sorted(keys(pipes)) == ALL_KEYS
    dm = ClipDataModule(train_shards=pipes, val_shards=f"pipe:cat {shards}/{{{','.join(t.name for t in tars)}}}",
                        resolution=16, clip_len=4, batch_size=2, num_workers=0, epoch_len=4, max_tracks=12,
                        min_tracks=1, shuffle_buffer=2, rank=0, world_size=1)  # fmt: skip
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and batches[0]["frames"].shape[:2] == (2, 4)
    val = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in val) == 6 and dm.skip_counter.total == 0


def test_a_failing_pipe_counts_as_a_corrupt_shard_and_a_cut_one_keeps_its_whole_samples(shards, tmp_path):
    tar = sorted(shards.glob("*.tar"))[0]
    counter = SkipCounter()
    half = tar.stat().st_size * 3 // 4
    got = [c.key for c in iter_clips([f"pipe:cat {tmp_path}/missing.tar", f"pipe:head -c {half} {tar}"], counter)]
    assert got == [f"{VIDEOS[0]}_00000"]  # the complete first sample of the cut shard
    assert counter.as_dict() == {"corrupt_shard": 2, "bad_sample": 0}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_source_from_a_local_server(shards):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(shards)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        names = ",".join(f"{v}-00000" for v in VIDEOS[:3])
        urls = expand_shards(f"{base}/{{{names}}}.tar")
        assert urls == [f"{base}/{v}-00000.tar" for v in VIDEOS[:3]]
        assert sorted(keys(urls)) == ALL_KEYS
        assert count_tar_groups(urls[0]) == 2
        with pytest.raises(FileNotFoundError, match=rf"cannot read shard '{base}/nope-000000.tar'"):
            expand_shards(f"{base}/nope-000000.tar")  # 404: before any training starts
    finally:
        server.shutdown()
        server.server_close()


def test_bad_sources_are_clear_errors_naming_them(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no shards match the glob '.*/nothing-\*\.tar'"):
        expand_shards(f"{tmp_path}/nothing-*.tar")
    port = free_port()  # nothing listens there
    with pytest.raises(FileNotFoundError, match=rf"cannot read shard 'http://127.0.0.1:{port}/x-000000.tar'"):
        expand_shards(f"http://127.0.0.1:{port}/x-000000.tar")
    with pytest.raises(FileNotFoundError, match=r"cannot read shard 'pipe:cat /nonexistent/a.tar'"):
        expand_shards("pipe:cat /nonexistent/a.tar")
    with pytest.raises(ValueError, match=r"webdataset cannot open s3:// URLs.*'pipe:aws s3 cp s3://b/x.tar -'"):
        expand_shards("s3://b/x.tar")
    old = json.loads((shards / "manifest.json").read_text())
    (tmp_path / "v2.json").write_text(json.dumps({**old, "version": 2}))
    with pytest.raises(ValueError, match=r"manifest '.*v2.json' has version 2, this fgbg reads version 1"):
        expand_shards(str(tmp_path / "v2.json"))
    (tmp_path / "other.json").write_text(json.dumps({"shards": []}))
    with pytest.raises(ValueError, match=r"'.*other.json' is not an fgbg-preprocess manifest"):
        expand_shards(str(tmp_path / "other.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder '.*empty' holds no manifest\*.json and no .tar shards"):
        expand_shards(str(tmp_path / "empty"))
    (tmp_path / "blank.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=r"list of shards '.*blank.txt' names no shard"):
        expand_shards(str(tmp_path / "blank.txt"))
    with pytest.raises(FileNotFoundError, match=r"no such manifest '.*missing.json'"):
        expand_shards(str(tmp_path / "missing.json"))


# -- held out by video (point 2) ------------------------------------------------------------------
def test_split_is_by_video_stable_and_agrees_across_parts(tmp_path):
    folder = tmp_path / "real"
    write_video_shards(folder, VIDEOS, clips_per_video=3)
    manifest = folder / "manifest.json"
    assert manifest_shards(manifest, "val") == []  # no split yet: nothing held out
    manifest_main([str(manifest), "--val", "0.3", "--seed", "0"])
    data = json.loads(manifest.read_text())
    held_out = data["split"]["val"]
    assert data["split"]["by"] == "video" and 1 <= len(held_out) < len(VIDEOS)
    assert "broken-00000000" not in held_out  # only finished videos are split

    train, val = expand_shards(str(manifest), split="train"), expand_shards(str(folder), split="val")
    assert not set(train) & set(val) and sorted(train + val) == sorted(expand_shards(str(manifest)))
    video_of = {c.key: c.meta["video_id"] for c in iter_clips(train + val)}
    train_videos = {video_of[k] for k in keys(train)}
    val_videos = {video_of[k] for k in keys(val)}
    assert not train_videos & val_videos  # no video has clips on both sides
    assert val_videos == set(held_out) and len(keys(val)) == 3 * len(held_out)

    # membership depends on (seed, video id) only: two halves of a part=I/2 run agree with the whole
    many = [f"v{i:03d}-{i:08x}" for i in range(100)]
    whole = split_by_video(many, 0.1)
    assert 3 <= len(whole) <= 20 and split_by_video(many[:50], 0.1) + split_by_video(many[50:], 0.1) == whole
    assert set(split_by_video(many[:80], 0.1)) == set(whole) & set(many[:80])  # adding videos moves none
    assert split_by_video(VIDEOS, 0.3, seed=1) != held_out or split_by_video(VIDEOS, 0.3, seed=2) != held_out
    assert split_by_video(VIDEOS[:1], 0.5) == [] and len(split_by_video(VIDEOS[:2], 0.01)) == 1
    with pytest.raises(ValueError, match=r"split_val=1.0: expected a fraction of videos in \[0, 1\)"):
        split_by_video(VIDEOS, 1.0)


def test_datamodule_validates_on_the_held_out_videos_only(tmp_path, caplog):
    folder = tmp_path / "real"
    write_video_shards(folder, VIDEOS[:4])
    manifest = str(folder / "manifest.json")
    dm = ClipDataModule(train_shards=manifest, val_shards=manifest, resolution=16, clip_len=4, batch_size=2,
                        num_workers=0, epoch_len=2, max_tracks=12, min_tracks=1, rank=0, world_size=1)  # fmt: skip
    assert dm.val_dataloader() == []  # no split in the manifest: no validation, with a notice
    assert "holds no held-out videos" in caplog.text
    manifest_main([manifest, "--val", "0.25"])
    held_out = json.loads(Path(manifest).read_text())["split"]["val"]
    assert 1 <= len(held_out) < 4
    val_keys = [k for b in ClipDataModule(train_shards=manifest, val_shards=manifest, resolution=16, clip_len=4,
                                          batch_size=2, num_workers=0, max_tracks=12, min_tracks=1, rank=0,
                                          world_size=1).val_dataloader() for k in b["key"]]  # fmt: skip
    assert sorted(val_keys) == [f"{v}_{c:05d}" for v in held_out for c in range(2)]


def test_bad_sources_stop_fgbg_train_before_training(shards, tmp_path):
    from hydra import compose, initialize_config_dir

    from fgbg.config_checks import ConfigError, check_train_config
    from fgbg.utils.config import CONF_DIR

    old = json.loads((shards / "manifest.json").read_text())
    (tmp_path / "v0.json").write_text(json.dumps({**old, "version": 0}))
    bad = {
        f"{tmp_path}/nothing-*.tar": r"data.train_shards: no shards match the glob",
        str(tmp_path / "v0.json"): r"data.train_shards: manifest '.*v0.json' has version 0",
        f"http://127.0.0.1:{free_port()}/x.tar": r"data.train_shards: cannot read shard 'http://127.0.0.1:\d+/x.tar'",
    }
    for source, message in bad.items():
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["experiment=synthetic_tiny_image", "data=shards",
                                              f"data.train_shards={source}"])  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            check_train_config(cfg)
