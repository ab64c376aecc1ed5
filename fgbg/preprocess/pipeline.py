"""One video -> clips -> shards: decode, shot cuts, pose, person masks, background tracks.

Streaming: frames are decoded one at a time and only the frames of the clip
being assembled are held, so memory is flat in video length. Pose, masks and
tracks are computed at the decoded size (``decode.max_side``); the finished
clip is then cropped and resized to ``clips.resolution`` with the joint
transforms of ``fgbg.data.transforms``, which move keypoints and tracks with the
pixels. The one place that guarantees "no visible track on the person" is
``assemble_clip``: after the resize, a track point is visible only where the
stored (dilated) person mask and the pose's body region (``tracks.skeleton_scale``)
are off.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fgbg.data.schema import NUM_KEYPOINTS, Clip
from fgbg.data.shards import ClipShardWriter
from fgbg.data.transforms import CropBox, center_crop_box, crop_clip, largest_box, mark_out_of_frame, resize_clip
from fgbg.preprocess.decode import VideoFrames, VideoReadError
from fgbg.preprocess.masks import PersonSegmenter, body_region, build_person_segmenter, dilate_masks
from fgbg.preprocess.pose import PoseEstimator, build_pose_estimator, has_person
from fgbg.preprocess.sheet import SheetRows, sheet_path
from fgbg.preprocess.shots import ShotCutDetector
from fgbg.preprocess.tracks import Tracker, TrackSet, build_tracker, person_exclusion, pixel_lookup, select_tracks

log = logging.getLogger(__name__)

SHARD_SUFFIX = "-%05d.tar"


@dataclass
class Backends:
    """The models of one worker, built once and reused for every video."""

    pose: PoseEstimator
    segmenter: PersonSegmenter
    tracker: Tracker

    def reset(self) -> None:
        """Drop temporal state, so a video's output never depends on what came before it."""
        self.pose.reset()
        self.segmenter.reset()

    def close(self) -> None:
        self.pose.close()
        self.segmenter.close()


def build_backends(cfg: DictConfig) -> Backends:
    """The pose estimator, the person segmenter (attached to the pose pass when it reads its mask) and the tracker."""
    pose = build_pose_estimator(cfg.pose)
    return Backends(pose, build_person_segmenter(cfg.masks, pose), build_tracker(cfg.tracks))


@dataclass(frozen=True)
class VideoSource:
    """A video to process: its path and its id (unique, stable; names its shards and clip keys)."""

    path: str
    video_id: str


def video_shards(out_dir: Path, video_id: str) -> list[Path]:
    """Every finished or temporary shard of one video in ``out_dir``, sorted."""
    pattern = re.compile(re.escape(video_id) + r"-\d{5}\.tar(\.tmp)?$")
    return sorted(p for p in out_dir.glob(f"{video_id}-*.tar*") if pattern.fullmatch(p.name))


def person_crop_box(person: np.ndarray, out_height: int, out_width: int) -> CropBox:
    """(T, H, W) bool person masks -> the largest box of the output's aspect, centred on the person.

    The centre is the mean position of all person pixels of the clip (the frame
    centre when there are none), moved as little as needed to keep the box inside.
    """
    _, h, w = person.shape
    cw, ch = largest_box(h, w, out_width / out_height)
    ys, xs = np.nonzero(person.any(0))
    cx, cy = (xs.mean() + 0.5, ys.mean() + 0.5) if len(xs) else (w / 2, h / 2)
    x0 = int(np.clip(round(cx - cw / 2), 0, w - cw))
    y0 = int(np.clip(round(cy - ch / 2), 0, h - ch))
    return x0, y0, cw, ch


def clip_crop_box(person: np.ndarray, resolution, mode: str) -> CropBox:
    """The box (decoded pixels) a clip is cropped to before resizing to ``resolution``."""
    _, h, w = person.shape
    if resolution is None or mode == "stretch":
        return 0, 0, w, h
    out_h, out_w = int(resolution[0]), int(resolution[1])
    if mode == "person":
        return person_crop_box(person, out_h, out_w)
    if mode == "center":
        return center_crop_box(h, w, out_h, out_w)
    raise ValueError(f"clips.crop must be person, center or stretch, got {mode!r}")


@dataclass
class ClipResult:
    clip: Clip | None
    skip_reason: str | None = None
    fb_error_px: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def assemble_clip(
    frames: np.ndarray,
    keypoints: list[np.ndarray | None],
    person_prob: np.ndarray,
    cfg: DictConfig,
    tracker: Tracker,
    key: str,
    meta: dict,
) -> ClipResult:
    """Frames (T, H, W, 3) uint8, per-frame keypoints (18, 3) or None, person probability (T, H, W)
    at the decoded size -> a schema clip at ``clips.resolution``, or the reason it is skipped
    (``no_person``, ``too_few_tracks``). ``fb_error_px`` holds the forward-backward errors (decoded
    pixels) of every visible step of the kept tracks."""
    t = frames.shape[0]
    found = [has_person(k, cfg.pose.conf_threshold, cfg.pose.min_keypoints) for k in keypoints]
    if np.mean(found) < cfg.clips.min_pose_rate:
        return ClipResult(None, "no_person")
    pose = np.stack([k if k is not None else np.zeros((NUM_KEYPOINTS, 3), np.float32) for k in keypoints])
    person = person_prob > cfg.masks.threshold
    box = clip_crop_box(person, cfg.clips.resolution, cfg.clips.crop)
    skeleton_scale, conf = float(cfg.tracks.skeleton_scale), float(cfg.pose.conf_threshold)
    exclusion = person_exclusion(person, keypoints, int(cfg.tracks.person_margin_px), skeleton_scale, conf)
    found_tracks = tracker(frames, exclusion, box)
    clip = Clip(frames, person, pose, found_tracks.tracks, found_tracks.visible, meta, key)
    if box != (0, 0, frames.shape[2], frames.shape[1]):
        clip = crop_clip(clip, box)
    if cfg.clips.resolution is not None:
        clip = resize_clip(clip, int(cfg.clips.resolution[0]), int(cfg.clips.resolution[1]))
    clip = mark_out_of_frame(clip)
    masks = dilate_masks(clip.masks, int(cfg.masks.dilate_px))
    h, w = masks.shape[1:]
    off = [masks[i] | body_region(clip.pose[i], h, w, conf, skeleton_scale) for i in range(t)]
    visible = clip.visible & ~np.stack([pixel_lookup(off[i], clip.tracks[i]) for i in range(t)])
    kept = select_tracks(
        TrackSet(clip.tracks, visible, found_tracks.fb_error),
        max_tracks=int(cfg.tracks.max_tracks),
        min_visible_frames=max(1, math.ceil(cfg.tracks.min_visible_frac * t)),
    )
    if kept.num_tracks < cfg.tracks.min_tracks:
        return ClipResult(None, "too_few_tracks")
    clip = replace(clip, masks=masks, tracks=kept.tracks, visible=kept.visible)
    meta.update(crop_box=list(box), num_tracks=kept.num_tracks)
    fb = kept.fb_error[kept.visible]
    return ClipResult(clip, None, fb[np.isfinite(fb)])


def process_video(source: VideoSource, out_dir: Path, cfg: DictConfig, backends: Backends) -> dict:
    """Process one video into ``<out_dir>/<video_id>-NNNNN.tar`` shards; returns its manifest entry.

    Unreadable, empty and person-less videos come back with ``status: skipped``
    and a reason; earlier shards of the same video are removed first, so a
    rerun of an interrupted video gives the same files as an uninterrupted run.
    """
    start = time.perf_counter()
    entry: dict = {"video_id": source.video_id, "source": source.path, "status": "skipped", "reason": None}
    for stale in video_shards(out_dir, source.video_id):
        stale.unlink()
    try:
        reader = VideoFrames(source.path, int(cfg.decode.frame_step), cfg.decode.max_side)
    except VideoReadError as err:
        entry["reason"] = f"{err.reason}: {err.detail}"
        return entry
    info = reader.info
    entry.update(fps=info.fps, codec=info.codec, source_size=list(info.source_size), decoded_size=list(info.size))
    length, stride = int(cfg.clips.length), int(cfg.clips.stride)
    if length < 1 or stride < 1:
        raise ValueError(f"clips.length and clips.stride must be >= 1, got {length} and {stride}")
    backends.reset()
    detector = ShotCutDetector(float(cfg.shots.threshold))
    base_meta = {
        "source": source.path,
        "video_id": source.video_id,
        "fps": info.fps / int(cfg.decode.frame_step),
        "frame_step": int(cfg.decode.frame_step),
        "source_size": list(info.source_size),
        "decoded_size": list(info.size),
        "pose_estimator": backends.pose.name,
        "pose_estimator_version": backends.pose.version,
        "person_segmenter": f"{backends.segmenter.name} {backends.segmenter.version}",
        "tracker": backends.tracker.name,
        "tracker_version": backends.tracker.version,
    }
    frames_seen = frames_with_person = shot = candidates = 0
    skip_counts: dict[str, int] = {}
    tracks_per_clip: list[int] = []
    fb_errors: list[np.ndarray] = []
    buffer: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray]] = []
    to_skip = 0  # frames to drop before the next clip starts (stride > length)
    pattern = str(out_dir / (source.video_id + SHARD_SUFFIX))
    writer = ClipShardWriter(pattern, int(cfg.shards.max_clips_per_shard), frame_format=str(cfg.shards.frame_format))
    sheet = SheetRows() if cfg.get("sheet") else None
    with reader, writer:
        for index, frame in reader:
            if detector.is_cut(frame):
                shot += 1
                buffer.clear()
                to_skip = 0
                backends.reset()
            keypoints = backends.pose(frame)
            frames_seen += 1
            frames_with_person += has_person(keypoints, cfg.pose.conf_threshold, cfg.pose.min_keypoints)
            prob = backends.segmenter(frame, keypoints)
            if to_skip:
                to_skip -= 1
                continue
            buffer.append((index, frame, keypoints, prob))
            if len(buffer) < length:
                continue
            meta = dict(base_meta, shot=shot, clip_start_frame=buffer[0][0])
            result = assemble_clip(
                np.stack([b[1] for b in buffer]),
                [b[2] for b in buffer],
                np.stack([b[3] for b in buffer]),
                cfg,
                backends.tracker,
                key=f"{source.video_id}_{candidates:05d}",
                meta=meta,
            )
            candidates += 1
            if result.clip is None:
                skip_counts[result.skip_reason] = skip_counts.get(result.skip_reason, 0) + 1
            else:
                writer.write(result.clip)
                if sheet is not None:
                    sheet.add(result.clip)
                tracks_per_clip.append(result.clip.tracks.shape[1])
                fb_errors.append(result.fb_error_px)
            del buffer[: min(stride, length)]
            to_skip = max(0, stride - length)
    if sheet is not None and sheet.write(sheet_path(cfg.sheet, source.video_id)):
        entry["sheet"] = str(sheet_path(cfg.sheet, source.video_id))
    seconds = time.perf_counter() - start
    pose_rate = frames_with_person / frames_seen if frames_seen else 0.0
    fb_all = np.concatenate(fb_errors) if fb_errors else np.zeros(0)
    entry.update(
        frames=reader.frames_decoded,
        frames_processed=frames_seen,
        truncated=reader.truncated,
        shots=shot + 1 if frames_seen else 0,
        clips=len(tracks_per_clip),
        clips_skipped=dict(sorted(skip_counts.items())),
        pose_detection_rate=round(pose_rate, 4),
        tracks_per_clip=tracks_per_clip,
        fb_error_median_px=round(float(np.median(fb_all)), 4) if len(fb_all) else None,
        shards=[Path(p).name for p in writer.written],
        timing={"seconds": round(seconds, 3), "frames_per_second": round(frames_seen / max(seconds, 1e-9), 2)},
    )
    if tracks_per_clip:
        entry["status"] = "done"
    elif frames_seen == 0:
        entry["reason"] = "no_frames: the file holds no decodable video frames"
    elif pose_rate < cfg.clips.min_pose_rate and skip_counts.get("no_person", 0) == candidates:
        entry["reason"] = f"no_person: a person was found in {pose_rate:.0%} of {frames_seen} frames"
    elif candidates == 0:
        entry["reason"] = f"too_short: no shot holds {length} frames ({frames_seen} frames, {shot + 1} shots)"
    else:
        entry["reason"] = f"no_clip_passed: {candidates} clips, skipped {dict(sorted(skip_counts.items()))}"
    return entry
