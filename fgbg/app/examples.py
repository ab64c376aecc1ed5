"""The bundled examples the demo page offers: reference images and driving clips.

Driving clips are one-clip synthetic shards (``fgbg-synth``, 64x64, 16 frames,
ground-truth pose and background tracks) under ``fgbg/assets/examples/``; each
clip's first frame is also offered as a reference image. ``skimage.data.astronaut()``
(a real photo) is offered too when scikit-image is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"


@dataclass(frozen=True)
class DrivingExample:
    """A bundled driving clip: ``shard`` holds pose, tracks and frames (docs/data.md)."""

    name: str
    shard: Path
    description: str


DRIVING_EXAMPLES = (
    DrivingExample("dance_pan", EXAMPLES_DIR / "dance_pan.tar", "dance, camera panning"),
    DrivingExample("wave_zoom", EXAMPLES_DIR / "wave_zoom.tar", "wave, camera zooming"),
)


def driving_example(name: str) -> DrivingExample:
    """The bundled clip called ``name``; ``KeyError`` names the ones that exist."""
    for example in DRIVING_EXAMPLES:
        if example.name == name:
            return example
    raise KeyError(f"no bundled driving clip {name!r}; choose one of {[e.name for e in DRIVING_EXAMPLES]}")


def reference_examples(cache_dir: Path) -> list[Path]:
    """Bundled reference images; the astronaut photo is written to ``cache_dir`` once."""
    images = [e.shard.with_suffix(".png") for e in DRIVING_EXAMPLES]
    try:
        from PIL import Image
        from skimage import data
    except ImportError:
        return images
    astronaut = Path(cache_dir) / "astronaut.png"
    if not astronaut.is_file():
        astronaut.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.astronaut()).save(astronaut)
    return [astronaut, *images]
