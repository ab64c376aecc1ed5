"""fgbg: human video generation with disentangled foreground (pose) and background (track) motion."""

__version__ = "0.1.0"
