"""Evaluation measures: frame metrics (PSNR, SSIM, L1, LPIPS; whole frame, person, background),
FID and FVD from local feature-network weights, and the measures this method exists for:
track-following error, seam score, colour drift, person appearance and background structure per clip. See ``docs/evaluation.md``."""

from fgbg.eval.appearance import appearance_metrics, clip_index, per_clip
from fgbg.eval.features import (
    FrechetDistance,
    I3DTorchScriptFeatures,
    InceptionFeatures,
    TorchvisionVideoFeatures,
    frechet_distance,
    frechet_distance_from_features,
    load_video_features,
)
from fgbg.eval.longvideo import (
    camera_from_tracks,
    colour_drift,
    colour_error,
    rgb_to_lab,
    seam_score,
    seen_background,
    seen_colour_error,
)
from fgbg.eval.metrics import LPIPS, frame_metrics, per_frame_metrics
from fgbg.eval.motion import track_following_error, track_following_error_per_clip, track_queries

__all__ = [
    "LPIPS",
    "I3DTorchScriptFeatures",
    "InceptionFeatures",
    "TorchvisionVideoFeatures",
    "appearance_metrics",
    "camera_from_tracks",
    "clip_index",
    "colour_drift",
    "colour_error",
    "frame_metrics",
    "FrechetDistance",
    "frechet_distance",
    "frechet_distance_from_features",
    "load_video_features",
    "per_clip",
    "per_frame_metrics",
    "rgb_to_lab",
    "seam_score",
    "seen_background",
    "seen_colour_error",
    "track_following_error",
    "track_following_error_per_clip",
    "track_queries",
]
