"""``fgbg-synth``: render the synthetic world into WebDataset shards (and optionally a contact sheet)::

fgbg-synth output=data/synth num_videos=64 seed=0 workers=2 sheet=synth.png
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from fgbg.data.render import contact_sheet, save_png
from fgbg.data.schema import Clip
from fgbg.data.shards import ClipShardWriter, iter_clips
from fgbg.synth.config import SynthConfig, to_synth_config
from fgbg.synth.world import synthesize_video
from fgbg.utils.config import CONF_DIR

log = logging.getLogger(__name__)


def _videos(cfg: SynthConfig) -> Iterator[list[Clip]]:
    """Yield each video's clips in index order, rendered here or by ``cfg.workers`` processes."""
    if cfg.workers <= 1:
        for i in range(cfg.num_videos):
            yield synthesize_video(cfg, i)
        return
    # spawn: no inherited OpenCV/BLAS thread state; imap keeps the output order fixed
    with mp.get_context("spawn").Pool(cfg.workers) as pool:
        yield from pool.imap(partial(synthesize_video, cfg), range(cfg.num_videos))


def synthesize(cfg: DictConfig | SynthConfig) -> list[str]:
    """Render ``num_videos`` videos into ``{output}/{split}-%06d.tar`` shards; returns the shard paths."""
    cfg = cfg if isinstance(cfg, SynthConfig) else to_synth_config(cfg)
    out = Path(cfg.output)
    existing = sorted(out.glob(f"{cfg.split}-*.tar"))
    if existing and not cfg.overwrite:
        raise FileExistsError(
            f"{out} already holds {len(existing)} '{cfg.split}-*.tar' shards (e.g. {existing[0].name}); "
            "choose another output= or pass overwrite=true"
        )
    for stale in existing:
        stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / f"{cfg.split}-%06d.tar")
    frames = 0
    with ClipShardWriter(pattern, max_count=cfg.videos_per_shard * cfg.clips_per_video) as writer:
        for clips in _videos(cfg):
            for clip in clips:
                writer.write(clip)
                frames += clip.num_frames
    log.info("wrote %d videos, %d frames into %d shards under %s", cfg.num_videos, frames, len(writer.written), out)
    if cfg.sheet:
        write_sheet(writer.written, cfg.sheet, num_clips=4, num_tracks=cfg.sheet_tracks)
        log.info("contact sheet: %s", cfg.sheet)
    return writer.written


def write_sheet(shards: list[str], path: str, num_clips: int = 4, num_tracks: int = 16, num_columns: int = 8) -> None:
    """Contact sheet of the first ``num_clips`` clips: frames with skeleton and ``num_tracks`` tracks drawn."""
    rows = []
    for clip in iter_clips(shards):
        keep = np.argsort(-clip.visible.sum(0), kind="stable")[:num_tracks]
        label = f"{clip.meta.get('camera')} / {clip.meta.get('person_motion')}"
        rows.append(
            dict(
                frames=clip.frames,
                pose=clip.pose,
                tracks=clip.tracks[:, keep],
                visible=clip.visible[:, keep],
                label=label,
            )
        )
        if len(rows) == num_clips:
            break
    if not rows:
        raise ValueError(f"no clips to draw a contact sheet from in {shards}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_png(contact_sheet(rows, num_columns=num_columns), path)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="synth")
def main(cfg: DictConfig) -> None:
    synthesize(cfg)
