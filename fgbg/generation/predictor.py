"""Clip-by-clip long-video sampling as a Lightning ``predict_step``.

``LongVideoPredictor`` wraps a trained model that offers

- ``encode_reference(reference, reference_mask) -> ctx``: ReferenceNet bank and
  global image tokens, computed once per video;
- ``sample_clip(ctx, cond, link_frame, num_inference_steps, scheduler,
  guidance, generator) -> (B, T, 3, H, W)`` in [-1, 1].

Job 0 encodes the reference; every job samples one clip from the same context
(reference features injected at every clip) and, for k > 0, the last frame of
clip k-1 as its link frame. Only that one frame is kept between jobs, so memory
does not grow with the video's length.

Two switches exist for the claims benchmark's ablations (``docs/results.md``):
``link=False`` generates every clip independently (no link frame), and
``reference_every_clip=False`` injects the reference (bank, global tokens and the
reference-derived hints) into clip 0 only; later clips see only the link frame.

How the link reaches the next clip (``docs/generation.md``): ``link_mode`` ``channels``
(the link input channels, the default), ``noise_init`` (the next clip's starting noise
is mixed with the noised link latent, weight ``link_init_weight``) or ``both``;
``link_noise`` noises the link given as channels to that fraction of the schedule.
``hint_anchor`` (every clip, not only linked ones) pastes the hints' valid pixels into the predicted clean
frames of that fraction of the sampling steps, and ``anchor_finish`` says how an anchored clip ends (``blend``,
``latent`` or ``pixel``; ``FgbgModule.sample_clip``).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from fgbg.models.module import LINK_DEFAULTS, SAMPLE_DEFAULTS, check_hint_anchor, check_link_options


def sampling_options(cfg, recommended: dict | None = None) -> dict[str, Any]:
    """The link and hint keys (``SAMPLE_DEFAULTS``) of a generate/evaluate config. A key left null (``hint_anchor``
    is, by default) takes the model's recommendation, a bundle's ``generation`` metadata (``python -m
    fgbg.models.bundle RUN OUT --generation hint_anchor=1.0``), else the default; a value given wins."""
    recommended = dict(recommended or {})
    return {
        k: recommended.get(k, default) if cfg.get(k) is None else cfg.get(k) for k, default in SAMPLE_DEFAULTS.items()
    }


class LongVideoPredictor(L.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        num_inference_steps: int = 20,
        scheduler: str = "ddim",
        guidance: dict[str, float] | None = None,
        seed: int = 0,
        link: bool = True,
        reference_every_clip: bool = True,
        link_mode: str = LINK_DEFAULTS["link_mode"],
        link_noise: float = LINK_DEFAULTS["link_noise"],
        link_init_weight: float = LINK_DEFAULTS["link_init_weight"],
        hint_anchor: float = SAMPLE_DEFAULTS["hint_anchor"],
        anchor_finish: str = SAMPLE_DEFAULTS["anchor_finish"],
    ):
        super().__init__()
        check_link_options(link_mode, link_noise, link_init_weight)
        check_hint_anchor(hint_anchor, anchor_finish)
        # Passed to sample_clip only when not at its defaults (today's call, and models without these options).
        self.sampling = {"link_mode": link_mode, "link_noise": link_noise, "link_init_weight": link_init_weight,
                         "hint_anchor": hint_anchor, "anchor_finish": anchor_finish}  # fmt: skip
        self.link_options = {k: v for k, v in self.sampling.items() if v != SAMPLE_DEFAULTS[k]}
        self.link = link
        self.reference_every_clip = reference_every_clip
        self.model = model
        self.num_inference_steps = num_inference_steps
        self.scheduler_name = scheduler
        self.guidance = dict(guidance or {})
        self.seed = seed
        self.ctx = None
        self.last_frame: torch.Tensor | None = None
        self.clip_seconds: list[float] = []

    @classmethod
    def from_config(cls, model: torch.nn.Module, cfg, recommended: dict | None = None) -> LongVideoPredictor:
        """From the sampling keys shared by ``conf/generate.yaml`` and ``conf/evaluate.yaml``; a null link or
        hint key takes the model's ``recommended`` value (``sampling_options``)."""
        from omegaconf import OmegaConf

        return cls(
            model,
            int(cfg.steps),
            cfg.sampler,
            OmegaConf.to_container(cfg.guidance, resolve=True),
            int(cfg.seed),
            link=bool(cfg.get("link", True)),
            reference_every_clip=bool(cfg.get("reference_every_clip", True)),
            **sampling_options(cfg, recommended),
        )

    def on_predict_start(self) -> None:
        self.ctx = None
        self.last_frame = None
        self.clip_seconds = []
        self.model.eval()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self.ctx is None:
            self.ctx = self.model.encode_reference(batch["reference"], batch.get("reference_mask"))
        k = int(batch["clip_index"][0])
        # One generator per clip, seeded by (seed, clip index): a clip's noise does not depend on the others.
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + k)
        cond = {n: v for n, v in batch.items() if n not in ("reference", "reference_mask", "key")}
        link_frame = self.last_frame if self.link else None
        if link_frame is not None:
            cond["link_available"] = torch.ones_like(batch["link_available"])
        drop = ("reference",) if k > 0 and not self.reference_every_clip else ()
        frames = self.model.sample_clip(
            self.ctx,
            cond,
            link_frame=link_frame,
            drop=drop,
            num_inference_steps=self.num_inference_steps,
            scheduler=self.scheduler_name,
            guidance=self.guidance,
            generator=generator,
            **self.link_options,
        )
        self.last_frame = frames[:, -1].detach()
        self.clip_seconds.append(time.perf_counter() - t0)
        return {"frames": frames.detach(), "clip_index": k, "start": int(batch["start"][0])}
