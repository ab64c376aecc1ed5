"""``fgbg-generate``: a long video of the reference person, clip by clip (``conf/generate.yaml``).

    fgbg-generate ckpt_path=model.safetensors reference=me.png motion=dance.tar camera=pan num_frames=64 output_dir=out

Built on ``Trainer.predict``: ``VideoJobsDataModule`` yields the clip jobs,
``LongVideoPredictor.predict_step`` samples one clip linked to the previous
clip's last frame (reference features computed once, injected at every clip),
and ``VideoPredictionWriter`` streams the frames to ``video.mp4``/``video.gif``
and writes ``sheet.png`` and ``generation.json``. Inputs are all checked
before any model work; nothing is written over unless ``overwrite=true``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fgbg.callbacks.progress import StepProgress
from fgbg.callbacks.video_writer import OUTPUT_NAMES, VideoPredictionWriter
from fgbg.config_checks import check_generate_config
from fgbg.datamodules.video_jobs import VideoJobs, VideoJobsDataModule
from fgbg.generation.camera import CameraPreset
from fgbg.generation.inputs import InputError, load_pose, load_reference
from fgbg.generation.motion import DrivingMotion
from fgbg.generation.predictor import LongVideoPredictor
from fgbg.generation.sources import load_motion_arrays
from fgbg.utils.config import CONF_DIR

log = logging.getLogger(__name__)


def model_data_settings(ckpt_path: str) -> dict[str, Any]:
    """The data settings a model was trained with, read without building it."""
    from fgbg.models.bundle import read_bundle_info

    path = Path(ckpt_path)
    if path.is_dir():
        cfg_path = path / ".hydra" / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"ckpt_path={path} is a folder but not a training run ({cfg_path} is missing)")
        run_cfg = OmegaConf.load(cfg_path)
        return OmegaConf.to_container(run_cfg.data, resolve=False) | {"stage": run_cfg.model.stage}
    info = read_bundle_info(path)
    return info.data | {"stage": info.extra.get("stage", "video"), "generation": info.extra.get("generation", {})}


def load_model(ckpt_path: str, ema: bool = True, device: str = "cpu") -> torch.nn.Module:
    """A bundle file or a training run folder -> the model in eval mode on ``device``."""
    from fgbg.models.bundle import load_bundle, load_run

    path = Path(ckpt_path)
    model = load_run(path, ema=ema)[0] if path.is_dir() else load_bundle(path)[0]
    return model.to(device).eval()


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available; use device=cpu or auto")
    return name


def check_outputs(output_dir: Path, overwrite: bool) -> None:
    existing = [n for n in OUTPUT_NAMES if (output_dir / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"output_dir {output_dir} already holds {existing}; choose another output_dir or set overwrite=true"
        )


def pose_window_mask(cfg: DictConfig) -> np.ndarray | None:
    """The reference person's mask at the reference image's own size, for the top-down pose window of
    :func:`estimate_reference_keypoints`: ``reference_mask=PATH`` resized to the image, ``auto`` the selfie
    segmenter's (None without mediapipe), ``none`` None."""
    from PIL import Image

    choice = cfg.reference_mask
    if choice in (None, "none"):
        return None
    with Image.open(cfg.reference) as im:
        size = im.size
        image = np.asarray(im.convert("RGB")) if choice == "auto" else None
    if choice != "auto":
        if not Path(choice).is_file():
            raise InputError(f"reference_mask {choice} does not exist (expected a mask image, white = person)")
        try:
            with Image.open(choice) as m:
                return np.asarray(m.convert("L").resize(size, Image.NEAREST)) > 127
        except (OSError, ValueError) as err:
            raise InputError(f"reference_mask {choice} is not a readable image: {err}") from None
    try:
        from fgbg.preprocess.masks import SelfieSegmenter
    except ImportError:
        return None
    seg = SelfieSegmenter()
    try:
        return seg(image, None) > 0.5
    finally:
        seg.close()


def reference_person_mask(cfg: DictConfig, reference: np.ndarray, keypoints: np.ndarray | None) -> np.ndarray | None:
    """(H, W) bool person mask of the reference, per ``cfg.reference_mask``."""
    from fgbg.data.render import render_body_region

    choice = cfg.reference_mask
    h, w = reference.shape[:2]
    if choice in (None, "none"):
        return None
    if choice != "auto":
        mask, _ = load_reference(choice, h, w, cfg.fit)
        return mask.mean(-1) > 127
    try:
        from fgbg.preprocess.masks import SelfieSegmenter

        seg = SelfieSegmenter()
        try:
            return seg(reference, None) > 0.5
        finally:
            seg.close()
    except ImportError as err:
        if keypoints is None:
            raise InputError(
                f"reference_mask=auto needs mediapipe ({err}) or reference_keypoints=...; "
                "or give reference_mask=PATH (white = person)"
            ) from None
        return render_body_region(keypoints[None], h, w)[0, 0] > 0.5


def estimate_reference_keypoints(
    path: str, height: int, width: int, fit: str, person_mask: np.ndarray | None = None
) -> np.ndarray:
    """(18, 3) OpenPose-18 keypoints of the reference person, in output pixels (corner origin).

    MediaPipe pose runs on the image at its own size. With ``person_mask`` (bool, the image's own size) it
    runs top-down on windows of several sizes around the mask and on the whole image, each also mirrored,
    and keeps the keypoints whose body region matches the mask best
    (:func:`fgbg.preprocess.pose.pose_matching_mask`); when none matches it (IoU under 0.3) the person is
    not found. Without a mask: the whole image once. The points are mapped with the same ``Fit`` as the
    reference image. Hidden keypoints have low confidence.
    """
    from PIL import Image

    _, fit_map = load_reference(path, height, width, fit)  # checks the file first
    try:
        from fgbg.preprocess.pose import MediaPipePose, pose_matching_mask

        estimator = MediaPipePose(static_image_mode=True)  # many tries on one image: one graph, no tracking
    except ImportError as err:
        msg = f"reference_keypoints=auto needs mediapipe ({err}); or give reference_keypoints=FILE"
        raise InputError(msg) from None
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        if person_mask is not None and person_mask.any():
            keypoints, iou = pose_matching_mask(estimator, image, person_mask)
            if keypoints is None:
                raise InputError(
                    f"reference image {path}: mediapipe pose found no person matching the reference mask (best body "
                    f"region IoU {iou:.2f}, needed 0.30); give reference_keypoints=FILE or a better reference_mask"
                )
        else:
            keypoints = estimator(image)
    finally:
        estimator.close()
    if keypoints is None:
        raise InputError(f"reference image {path}: mediapipe pose found no person; give reference_keypoints=FILE")
    keypoints = keypoints.astype(np.float32)
    keypoints[:, :2] = fit_map.points(keypoints[:, :2])
    return keypoints


def prepare_jobs(cfg: DictConfig, data: dict[str, Any]) -> tuple[VideoJobs, dict[str, Any]]:
    """Read and check every input; build the clip jobs. No model needed."""
    res = data.get("resolution") or 32
    height = int(cfg.height or res)
    width = int(cfg.width or res)
    if height % 8 or width % 8:
        raise ValueError(f"height={height}, width={width}: both must be multiples of 8 (the UNet downsamples by 8)")
    # An image-stage model has no trained motion modules and trained on single frames: default to 8.
    trained_len = data.get("clip_len") if data.get("stage") == "video" else None
    clip_len = int(cfg.clip_len or trained_len or 8)
    if cfg.num_frames < 1:
        raise ValueError(f"num_frames={cfg.num_frames}: must be >= 1")
    reference, _ = load_reference(cfg.reference, height, width, cfg.fit)
    ref_kp = None
    window = pose_window_mask(cfg) if cfg.reference_keypoints in (None, "auto") else None  # a bad mask file: error
    if cfg.reference_keypoints == "auto":
        ref_kp = estimate_reference_keypoints(cfg.reference, height, width, cfg.fit, window)
    elif cfg.reference_keypoints is None:  # default: estimated, as training always gives the person hint a pose
        try:
            ref_kp = estimate_reference_keypoints(cfg.reference, height, width, cfg.fit, window)
        except InputError as err:
            log.warning("%s: generating without the person hint (reference_keypoints=none says so quietly)", err)
    elif cfg.reference_keypoints == "none":
        pass
    elif cfg.reference_keypoints and str(cfg.reference_keypoints).endswith(".tar"):
        # A shard: its first sample's first-frame pose (the reference image is that frame, e.g. the examples).
        ref_kp = load_motion_arrays(cfg.reference_keypoints, height, width, cfg.fit)["pose"][0].copy()
    elif cfg.reference_keypoints:
        pose, (h, w) = load_pose(cfg.reference_keypoints, cfg.pose_size)
        from fgbg.generation.inputs import Fit

        ref_kp = pose[0].copy()
        ref_kp[:, :2] = Fit.make(h, w, height, width, cfg.fit).points(pose[0, :, :2])
    arrays = load_motion_arrays(
        cfg.motion, height, width, cfg.fit, cfg.motion_key,
        tuple(cfg.pose_size) if cfg.pose_size else None, cfg.tracks,
    )  # fmt: skip
    max_tracks = int(data.get("max_tracks") or 50)
    num_points = min(int(cfg.num_tracks), max_tracks)
    camera = None
    if cfg.camera:
        camera = CameraPreset(kind=cfg.camera, **OmegaConf.to_container(cfg.camera_args, resolve=True))
    elif "tracks" not in arrays:
        raise InputError(f"motion {cfg.motion} has no background tracks: give tracks=FILE or camera=PRESET")
    motion = DrivingMotion(
        arrays["pose"], height, width,
        tracks=None if camera else arrays["tracks"], visible=None if camera else arrays["visible"],
        camera=camera, loop=bool(cfg.loop), num_points=num_points, source=arrays["source"],
    )  # fmt: skip
    motion.check_covers(int(cfg.num_frames))
    if cfg.retarget:
        from fgbg.generation.retarget import retarget_sequence

        if ref_kp is None:
            raise InputError("retarget=true needs the reference's keypoints: give reference_keypoints=FILE or auto")
        motion.pose = retarget_sequence(motion.pose, ref_kp)
    mask = reference_person_mask(cfg, reference, ref_kp)
    render = {
        k: data[k]
        for k in ("pose_line_scale", "pose_conf_threshold", "track_sigma", "body_limb_scale")
        if data.get(k) is not None
    }
    jobs = VideoJobs(
        reference, motion, int(cfg.num_frames), clip_len, max_tracks,
        reference_mask=mask, reference_keypoints=ref_kp, render=render,
    )  # fmt: skip
    info = {"height": height, "width": width, "clip_len": clip_len, "clips": len(jobs), "motion": arrays["source"],
            "camera": None if camera is None else vars(camera)}  # fmt: skip
    return jobs, info


def generate(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Run one generation; returns the report written to ``generation.json``.

    ``callbacks``: extra Lightning callbacks for the predict loop (e.g. a progress
    display fed per clip by ``on_predict_batch_end``).
    """
    check_generate_config(cfg)
    output_dir = Path(cfg.output_dir)
    check_outputs(output_dir, bool(cfg.overwrite))
    device = pick_device(cfg.device)
    data = model_data_settings(cfg.ckpt_path)
    jobs, info = prepare_jobs(cfg, data)  # every input checked before model work
    t0 = time.perf_counter()
    model = load_model(cfg.ckpt_path, bool(cfg.ema), device)
    load_seconds = time.perf_counter() - t0
    predictor = LongVideoPredictor.from_config(model, cfg, data.get("generation"))
    info["sampling"] = predictor.sampling  # a null key resolved: the bundle's recommendation, else the default
    settings = OmegaConf.to_container(cfg, resolve=True) | {"resolved": info, "model_load_seconds": load_seconds}
    writer = VideoPredictionWriter(output_dir, jobs.num_frames, fps=cfg.fps, settings=settings, gif=bool(cfg.gif))
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False,
        callbacks=[writer, StepProgress(), *(callbacks or [])],  # per clip: a bar on a terminal, else log lines
        enable_progress_bar=True, enable_model_summary=False, inference_mode=True,
    )  # fmt: skip
    trainer.predict(predictor, datamodule=VideoJobsDataModule(jobs), return_predictions=False)
    log.info("wrote %s", ", ".join(sorted(writer.paths.values())))
    import json

    return json.loads((output_dir / "generation.json").read_text())


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate.yaml")
def main(cfg: DictConfig) -> None:
    report = generate(cfg)
    print(
        f"{report['frames']} frames in {report['clips']} clips, {report['seconds_per_frame']:.3f} s/frame -> {cfg.output_dir}"
    )


if __name__ == "__main__":
    main()
