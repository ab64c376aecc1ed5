"""Training callbacks: EMA, stage-weight safetensors, sample videos, numerical guard."""

from fgbg.callbacks.ema import EMACallback
from fgbg.callbacks.numerical_guard import NonFiniteTrainingError, NumericalGuard
from fgbg.callbacks.sample_video import SampleVideoCallback
from fgbg.callbacks.stage_weights import StageWeightsCheckpoint

__all__ = ["EMACallback", "NonFiniteTrainingError", "NumericalGuard", "SampleVideoCallback", "StageWeightsCheckpoint"]
