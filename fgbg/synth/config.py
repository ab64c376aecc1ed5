"""The typed configuration of ``fgbg-synth`` (``conf/synth.yaml`` is merged into it and validated)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from fgbg.synth.background import BackgroundConfig
from fgbg.synth.camera import CameraConfig
from fgbg.synth.person import PersonConfig


@dataclass
class SynthConfig:
    """Everything ``fgbg-synth`` reads; see ``docs/synth.md``."""

    output: str = "???"
    split: str = "train"
    num_videos: int = 8
    clips_per_video: int = 1
    videos_per_shard: int = 16
    seed: int = 0
    workers: int = 0  # 0: render in this process; N: N processes (output order and bytes unchanged)
    overwrite: bool = False  # allow writing into a folder that already holds `{split}-*.tar` shards
    sheet: str | None = None  # write a contact sheet of the first 4 clips here (PNG)
    sheet_tracks: int = 16  # track points drawn per clip on the sheet
    height: int = 64
    width: int = 64
    num_frames: int = 16  # frames per clip
    fps: int = 8
    num_tracks: int = 64  # ground-truth background tracks stored per clip
    candidates_per_track: int = 4  # candidates drawn per stored track; the most visible ones are kept
    element_track_fraction: float = 0.25  # share of candidates on moving elements (when there are any)
    occlusion_margin: int = 1  # px: a point is occluded if the person/element covers this neighbourhood
    camera: CameraConfig = field(default_factory=CameraConfig)
    person: PersonConfig = field(default_factory=PersonConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)

    def __post_init__(self) -> None:
        positive = ("num_videos", "clips_per_video", "videos_per_shard", "height", "width", "num_frames", "fps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"synth config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "num_tracks", "occlusion_margin", "sheet_tracks"):
            if getattr(self, name) < 0:
                raise ValueError(f"synth config: {name} must be >= 0, got {getattr(self, name)}")
        if self.candidates_per_track < 1:
            raise ValueError(f"synth config: candidates_per_track must be >= 1, got {self.candidates_per_track}")
        if not 0.0 <= self.element_track_fraction <= 1.0:
            raise ValueError(
                f"synth config: element_track_fraction must be in [0, 1], got {self.element_track_fraction}"
            )
        if not self.split or "/" in self.split or "%" in self.split:
            raise ValueError(f"synth config: split must be a plain name like 'train', got {self.split!r}")


def to_synth_config(cfg: DictConfig | dict) -> SynthConfig:
    """Merge a (Hydra) config into ``SynthConfig``; unknown keys and wrong types raise naming the key."""
    merged = OmegaConf.merge(OmegaConf.structured(SynthConfig), cfg)
    return OmegaConf.to_object(merged)
