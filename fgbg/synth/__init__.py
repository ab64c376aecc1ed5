"""The synthetic world with exact ground truth (``fgbg-synth``): textured backgrounds seen
through moving cameras, swaying and drifting elements, and articulated people, written in
the shard schema of ``fgbg.data.schema``. See ``docs/synth.md``."""

from fgbg.synth.app import main, synthesize
from fgbg.synth.config import SynthConfig, to_synth_config
from fgbg.synth.world import render_world, sample_world, synthesize_video

__all__ = ["SynthConfig", "main", "render_world", "sample_world", "synthesize", "synthesize_video", "to_synth_config"]
