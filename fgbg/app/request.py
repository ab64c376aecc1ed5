"""One request of the demo page -> one ``fgbg-generate`` run in its own folder.

Kept free of Gradio so it can be tested alone: ``GenerationRequest`` holds what
the page's controls say, ``check_request`` refuses what the page must not run
(too many frames or steps, a missing upload, a driving video too long to
preprocess on the spot), ``generation_config`` turns it into the
``conf/generate.yaml`` config, and ``run_request`` runs ``fgbg.generate.generate``
with a per-clip progress callback and returns the files it wrote.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from fgbg.app.examples import DRIVING_EXAMPLES, driving_example
from fgbg.generation.camera import KINDS as CAMERA_KINDS
from fgbg.generation.camera import CameraPreset
from fgbg.generation.drawn import drawn_tracks, parse_strokes
from fgbg.generation.inputs import InputError
from fgbg.generation.sources import VIDEO_SUFFIXES

log = logging.getLogger(__name__)

MOTION_SOURCES = ("example", "video", "file")  # bundled clip | uploaded driving video | pose/tracks file
BACKGROUNDS = ("tracks", "camera", "static")  # the driving motion's own tracks | a camera preset | nothing moves
MOTION_FILE_SUFFIXES = (".tar", ".json")
TRACKS_FILE_SUFFIXES = (".npz", ".json")

ProgressFn = Callable[[float, str], None]  # (fraction done in [0, 1], what is happening)


class RequestError(InputError):
    """A request the page refuses; the message is shown to the person as it is."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``conf/app.yaml``)."""

    max_frames: int = 64
    max_steps: int = 50
    max_driving_seconds: float = 30.0


@dataclass
class PageSettings:
    """What the page needs besides the request: the composed generate config and limits.

    Built by ``fgbg.app.server``, read by ``fgbg.app.page``; it lives here so neither imports the other.
    """

    base: DictConfig  # conf/generate.yaml with ckpt_path and the app's generate settings applied
    limits: Limits
    output_root: Path  # each request writes into its own new folder under this one
    default_frames: int = 16
    default_steps: int = 20
    title: str = "fgbg: animate a person, move the background"


@dataclass
class GenerationRequest:
    """The page's controls. Paths are local files (Gradio's upload cache or bundled assets)."""

    reference: str | None
    motion_source: str = "example"
    example: str = "dance_pan"
    driving_video: str | None = None
    motion_file: str | None = None
    tracks_file: str | None = None
    background: str = "camera"
    preset: str = "pan"
    direction_deg: float = 0.0
    speed: float = 1.0  # output px / frame
    zoom_rate: float = 0.01  # per frame
    shake_amplitude: float = 1.5  # output px
    num_frames: int = 16
    steps: int = 20
    guidance: dict[str, float] = field(default_factory=lambda: {"reference": 1.0, "pose": 1.0, "tracks": 1.0})
    seed: int = 0
    retarget: bool = False
    drawn_paths: str = ""  # the page's drawing: JSON strokes in the reference image's pixels (fgbg.generation.drawn)


@dataclass
class GenerationResult:
    output_dir: Path
    video: Path
    sheet: Path
    downloads: list[Path]
    report: dict[str, Any]

    notes: list[str] = field(default_factory=list)  # e.g. drawn strokes dropped for lying on the person

    def summary(self) -> str:
        r = self.report
        res = r["settings"]["resolved"]
        notes = "".join(f"; {n}" for n in self.notes)
        return (
            f"{r['frames']} frames at {res['width']}x{res['height']} in {r['clips']} clips, "
            f"{r['seconds_per_frame']:.2f} s/frame; files in {self.output_dir}{notes}"
        )


def driving_video_seconds(path: str | Path) -> float:
    """Duration of a video file in seconds (container duration, else frames / rate)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise RequestError(f"driving video {Path(path).name} has no video stream")
            if container.duration is not None:
                return container.duration / 1e6  # microseconds
            stream = container.streams.video[0]
            return float(stream.frames / stream.average_rate) if stream.average_rate else 0.0
    except av.error.FFmpegError as err:
        raise RequestError(f"driving video {Path(path).name} is not a readable video: {err}") from None


def _need_file(path: str | None, what: str, suffixes: tuple[str, ...]) -> Path:
    if not path:
        raise RequestError(f"upload {what} first")
    p = Path(path)
    if not p.is_file():
        raise RequestError(f"{what} {p.name} is no longer on the server: upload it again")
    if p.suffix.lower() not in suffixes:
        raise RequestError(
            f"{what} {p.name}: expected a {' / '.join(suffixes)} file, got {p.suffix or 'no extension'!r}"
        )
    return p


def check_request(req: GenerationRequest, limits: Limits) -> None:
    """Refuse, with a message for the page, anything this page will not run."""
    if not req.reference:
        raise RequestError("upload a reference image (or pick an example) first")
    if not 1 <= int(req.num_frames) <= limits.max_frames:
        raise RequestError(
            f"{req.num_frames} frames requested; this page makes 1 to {limits.max_frames} "
            f"(start it with max_frames=N to allow more)"
        )
    if not 1 <= int(req.steps) <= limits.max_steps:
        raise RequestError(f"{req.steps} sampling steps requested; this page allows 1 to {limits.max_steps}")
    if req.motion_source not in MOTION_SOURCES:
        raise RequestError(f"driving motion source {req.motion_source!r}: expected one of {MOTION_SOURCES}")
    if req.background not in BACKGROUNDS:
        raise RequestError(f"background motion {req.background!r}: expected one of {BACKGROUNDS}")
    if req.background == "camera" and req.preset not in CAMERA_KINDS:
        raise RequestError(f"camera preset {req.preset!r}: expected one of {CAMERA_KINDS}")
    try:
        strokes, _ = parse_strokes(req.drawn_paths)
    except ValueError as err:
        raise RequestError(str(err)) from None
    if strokes and req.background == "tracks":
        raise RequestError("drawn background paths combine with a camera preset or a static background, not with "
                           "the driving motion's own tracks: choose one of those, or clear the drawing")  # fmt: skip
    if strokes and req.motion_source == "video":
        raise RequestError("drawn background paths need a bundled clip or a pose/tracks file as the driving motion "
                           "(preprocess the video with fgbg-preprocess and upload the shard), or clear the drawing")  # fmt: skip
    if req.motion_source == "example":
        try:
            driving_example(req.example)
        except KeyError as err:
            raise RequestError(err.args[0]) from None
    elif req.motion_source == "video":
        video = _need_file(req.driving_video, "a driving video", VIDEO_SUFFIXES)
        seconds = driving_video_seconds(video)
        if seconds > limits.max_driving_seconds:
            raise RequestError(
                f"driving video {video.name} lasts {seconds:.1f} s; this page preprocesses at most "
                f"{limits.max_driving_seconds:g} s (trim it, or use fgbg-preprocess and upload the shard)"
            )
    else:
        motion = _need_file(req.motion_file, "a pose/tracks file", MOTION_FILE_SUFFIXES)
        if req.tracks_file:
            _need_file(req.tracks_file, "the tracks file", TRACKS_FILE_SUFFIXES)
        elif req.background == "tracks" and motion.suffix.lower() == ".json":
            raise RequestError(
                f"pose file {motion.name} has no background tracks: upload a tracks file (.npz/.json), "
                "or choose a camera preset or a static background"
            )


def motion_path(req: GenerationRequest) -> str:
    if req.motion_source == "example":
        return str(driving_example(req.example).shard)
    return str(req.driving_video if req.motion_source == "video" else req.motion_file)


def reference_keypoints_for(req: GenerationRequest) -> str | None:
    """The reference person's keypoints: ``auto`` (mediapipe) to retarget; for a bundled example image its
    own shard (the image is that clip's first frame), which the person hint uses; else none."""
    if req.retarget:
        return "auto"
    for example in DRIVING_EXAMPLES:
        if Path(req.reference).resolve() == example.shard.with_suffix(".png").resolve():
            return str(example.shard)
    return None


def generation_config(req: GenerationRequest, base: DictConfig, output_dir: Path) -> DictConfig:
    """The ``conf/generate.yaml`` config of one request (``base``: the page's composed defaults)."""
    cfg = copy.deepcopy(base)
    cfg.reference = str(req.reference)
    cfg.reference_keypoints = reference_keypoints_for(req)
    cfg.retarget = bool(req.retarget)
    cfg.motion = motion_path(req)
    cfg.motion_key = None
    cfg.tracks = str(req.tracks_file) if req.motion_source == "file" and req.tracks_file else None
    cfg.camera = {"tracks": None, "camera": req.preset, "static": "static"}[req.background]
    cfg.camera_args.direction_deg = float(req.direction_deg)
    cfg.camera_args.speed = float(req.speed)
    cfg.camera_args.zoom_rate = float(req.zoom_rate)
    cfg.camera_args.shake_amplitude = float(req.shake_amplitude)
    cfg.camera_args.seed = int(req.seed)
    cfg.loop = True  # a short driving clip repeats rather than refusing the frame count
    cfg.num_frames = int(req.num_frames)
    cfg.steps = int(req.steps)
    cfg.guidance = {k: float(v) for k, v in req.guidance.items()}
    cfg.seed = int(req.seed)
    cfg.output_dir = str(output_dir)
    cfg.overwrite = False
    return cfg


class ClipProgress(L.Callback):
    """Reports each finished clip of the predict loop to ``progress`` (fractions ``start`` .. 1)."""

    def __init__(self, progress: ProgressFn, start: float = 0.1):
        self.progress = progress
        self.start = start

    def on_predict_start(self, trainer, pl_module) -> None:
        self.progress(self.start, f"generating clip 1 of {self._total(trainer)}")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        total = self._total(trainer)
        done = batch_idx + 1
        what = f"generating clip {done + 1} of {total}" if done < total else "writing the video"
        self.progress(self.start + (1 - self.start) * done / total, what)

    @staticmethod
    def _total(trainer) -> int:
        return max(1, int(sum(trainer.num_predict_batches)))


def no_clip_message(video_name: str, error: str) -> str:
    """The page's words for a driving video that preprocessing made no clip of.

    ``error`` is ``load_motion_arrays``' message, which carries fgbg-preprocess's
    summary with a ``'reason'`` per video (e.g. ``no_person: a person was found in 0% of 20 frames``).
    """
    reasons = re.findall(r"'reason': '([^']*)'", error)
    why = "; ".join(reasons) or "no clip of enough frames with a person"
    if any(r.startswith("no_person") for r in reasons):
        return f"no person found in the driving video {video_name} ({why})"
    return f"the driving video {video_name} gave no usable clip ({why})"


DRAWN_TRACKS = "drawn_tracks.npz"


def _reference_person(req: GenerationRequest, cfg: DictConfig, reference, fit):
    """(H, W) bool person mask of the reference at the output size, to keep drawn tracks off the person: a bundled
    example's own mask (its shard's first frame, also for an uploaded copy; mediapipe's selfie model takes most of those synthetic pictures
    for a person), else ``reference_mask`` as generation computes it; None (with a warning) when neither works."""
    import numpy as np
    from PIL import Image

    from fgbg.generate import reference_person_mask
    from fgbg.generation.inputs import load_sample

    data = Path(req.reference).read_bytes()  # Gradio hands over a copy of a picked example: match by content
    shards = [e.shard for e in DRIVING_EXAMPLES if e.shard.with_suffix(".png").read_bytes() == data]
    shard = str(shards[0]) if shards else None
    try:
        if shard is not None:
            mask = Image.fromarray(load_sample(shard).masks[0].astype(np.uint8) * 255)
            return fit.image(mask, *reference.shape[:2], fill=0) > 127
        return reference_person_mask(cfg, reference, None)
    except (ImportError, OSError, RuntimeError, ValueError) as err:  # InputError is a ValueError
        log.warning("drawn paths: no person mask of the reference (%s); strokes on the person are not checked", err)
        return None


def write_drawn_tracks(req: GenerationRequest, cfg: DictConfig, output_dir: Path) -> list[str]:
    """The request's drawn strokes (+ its camera preset) -> ``output_dir/drawn_tracks.npz`` given to generation
    as ``tracks=`` (``camera=null``); returns warnings for the page. Nothing is written without strokes.

    Tracks are made at the output size, for every frame of the driving motion (a tracks file describes the
    same frames as the pose); a stroke is travelled over the requested frames (at most the motion's length).
    """
    import numpy as np
    from PIL import Image

    from fgbg.generate import model_data_settings
    from fgbg.generation.inputs import load_reference
    from fgbg.generation.sources import load_motion_arrays

    strokes, size = parse_strokes(req.drawn_paths)
    if not strokes:
        return []
    drawn_h, drawn_w = size
    data = model_data_settings(cfg.ckpt_path)
    res = int(data.get("resolution") or 32)
    height, width = int(cfg.height or res), int(cfg.width or res)
    reference, fit = load_reference(cfg.reference, height, width, cfg.fit)
    with Image.open(cfg.reference) as img:  # the drawing's size may differ from the file's (a scaled preview)
        sx, sy = img.width / drawn_w, img.height / drawn_h
    strokes = [fit.points(s * np.array([sx, sy])).astype(np.float64) for s in strokes]
    person = _reference_person(req, cfg, reference, fit)
    frames = load_motion_arrays(cfg.motion, height, width, cfg.fit, None, None, None)["pose"].shape[0]
    preset = CameraPreset(kind=cfg.camera or "static", **dict(cfg.camera_args))
    num_points = min(int(cfg.num_tracks), int(data.get("max_tracks") or 50))
    drawn = drawn_tracks(strokes, frames, height, width, preset, num_points, duration=min(int(cfg.num_frames), frames),
                         person_region=person)  # fmt: skip
    path = output_dir / DRAWN_TRACKS
    np.savez(path, tracks=drawn.tracks, visible=drawn.visible, size=np.array([height, width]), group=drawn.group)
    cfg.tracks, cfg.camera = str(path), None
    return drawn.warnings


def run_request(
    req: GenerationRequest,
    base: DictConfig,
    limits: Limits,
    output_root: str | Path,
    progress: ProgressFn | None = None,
) -> GenerationResult:
    """Check and run one request into a new folder under ``output_root``."""
    from fgbg.generate import generate

    progress = progress or (lambda fraction, what: None)
    check_request(req, limits)
    Path(output_root).mkdir(parents=True, exist_ok=True)
    output_dir = Path(tempfile.mkdtemp(prefix="request-", dir=output_root))
    cfg = generation_config(req, base, output_dir)
    what = "preprocessing the driving video" if req.motion_source == "video" else "reading the inputs"
    progress(0.0, what)
    try:
        notes = write_drawn_tracks(req, cfg, output_dir)
        report = generate(cfg, callbacks=[ClipProgress(progress)])
    except BaseException as err:
        shutil.rmtree(output_dir, ignore_errors=True)  # a failed request leaves nothing behind
        if isinstance(err, InputError) and req.motion_source == "video" and "produced no clip" in str(err):
            raise RequestError(no_clip_message(Path(cfg.motion).name, str(err))) from None
        raise
    names = ("video.mp4", "video.gif", "generation.json", DRAWN_TRACKS)
    files = [output_dir / n for n in names if (output_dir / n).is_file()]
    return GenerationResult(output_dir, output_dir / "video.mp4", output_dir / "sheet.png", files, report, notes)
