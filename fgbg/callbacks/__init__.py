"""Training callbacks: EMA, stage-weight safetensors, sample videos."""

from fgbg.callbacks.ema import EMACallback
from fgbg.callbacks.sample_video import SampleVideoCallback
from fgbg.callbacks.stage_weights import StageWeightsCheckpoint

__all__ = ["EMACallback", "SampleVideoCallback", "StageWeightsCheckpoint"]
