"""``FgbgModule``: the dual-motion video diffusion model as a LightningModule.

Parts (each built from ``conf/model/*.yaml``):

- ``latent``: frozen ``AutoencoderKL`` or identity (pixel space);
- ``image_encoder``: reference image -> global cross-attention tokens (B, L, D);
- ``referencenet``: spatial UNet run once per sample at timestep 0, filling the
  ``ReferenceBank`` read by the denoiser's spatial self-attention;
- ``controlnet``: pose ControlNet (frames folded into the batch), residuals gated
  by the dilated body region (pose drives the person);
- ``track_encoder``: track maps -> residuals gated by the background region
  (1 - body region; tracks drive the rest);
- ``denoiser``: ``UNetMotionModel`` whose input is
  ``[noisy latent (c), link latent (c), link mask (1), link noise level (1), motion hint (c + 1),
  person hint (c + 1)]`` (the level channel by ``link_augment``, each hint by config: ``motion_hint``,
  ``person_hint``).

Training stages: ``image`` (one frame per sample; spatial parts train, motion modules
frozen) and ``video`` (all frames; the motion modules train, plus the denoiser parameters
that ``video_trainable`` names, the rest frozen and in eval mode). Generation uses ``encode_reference`` then ``sample_clip``.

Tensor layout: per-frame tensors are (B, F, C, H, W), batch-major; folded to
(B*F, C, H, W) frame-minor, which is diffusers' ``UNetMotionModel`` order.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from diffusers.training_utils import compute_snr
from torch import nn
from torchmetrics import MeanMetric

from fgbg.models.attention import ReferenceBank, check_backend, set_processors
from fgbg.models.motion_hint import FITS, dilate, motion_hint
from fgbg.models.person_hint import drop_reference_keypoints, jitter_reference_keypoints, person_hint
from fgbg.models.track_encoder import TrackEncoder, gate_residuals
from fgbg.models.unets import Denoiser, ReferenceNet, down_residual_specs
from fgbg.utils.config import plain_dict

log = logging.getLogger(__name__)

CONDITIONS = ("reference", "pose", "tracks")
SAMPLERS = {"ddim": DDIMScheduler, "dpmpp": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}
HINT_SPACES = ("latent", "pixel")
STAGES = ("image", "video")
LINK_MODES = ("channels", "noise_init", "both")
LINK_AUGMENT_KEYS = ("prob", "max_t")
COND_KEYS = (
    "pose_maps",
    "body_region",
    "track_maps",
    "tracks",
    "track_visible",
    "track_anchor",
    "track_anchor_visible",
    "keypoints",
    "reference_keypoints",
)


@dataclass
class ReferenceContext:
    """What ``encode_reference`` computes once per reference and every clip reuses.

    bank:          ReferenceNet layer name -> (B, M, C) tokens
    global_tokens: (B, L, D) image-encoder tokens (cross-attention context)
    latent:        (B, c, h, w) reference latent
    mask:          (B, 1, H, W) reference person mask, or None
    image_size:    (H, W) in pixels
    image:         (B, 3, H, W) the reference in [-1, 1] (what ``hint_space=pixel`` warps)
    """

    bank: dict[str, torch.Tensor]
    global_tokens: torch.Tensor
    latent: torch.Tensor
    mask: torch.Tensor | None
    image_size: tuple[int, int]
    image: torch.Tensor | None = None  # None only in contexts built by hand (tests), which hint_space=pixel cannot use


def _pooled_gate(plan: dict, residual: torch.Tensor) -> torch.Tensor:
    """The plan's pose gate area-pooled to ``residual``'s size (as ``gate_residuals`` does), once per size."""
    key = (*residual.shape[-2:], residual.dtype)
    pooled = plan["pose_gate_pooled"]
    if key not in pooled:
        pooled[key] = F.adaptive_avg_pool2d(plan["pose_gate"], residual.shape[-2:]).to(residual.dtype)
    return pooled[key]


def make_sampler(name: str, train_scheduler_config) -> object:
    """A diffusers inference scheduler (``ddim`` | ``dpmpp`` | ``euler``) from the training scheduler's config."""
    if name not in SAMPLERS:
        raise ValueError(f"scheduler={name!r}: expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name].from_config(train_scheduler_config)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) per sample, finite and > 0 at every SNR.

    The rule weighs the x0-space error by ``min(SNR, gamma)``; in the model's own output space that is
    ``min(SNR, gamma) / SNR`` (epsilon), ``min(SNR, gamma) / (SNR + 1)`` (v_prediction) and
    ``min(SNR, gamma)`` (sample). Used as published wherever SNR > 0 (epsilon written as
    ``gamma / max(SNR, gamma)``, the same numbers). SNR = 0 happens only at the last timestep with
    ``rescale_betas_zero_snr``, where the rule has no value (epsilon: 0/0 = NaN; v and sample: 0, so the
    step that zero terminal SNR exists to train would never be trained). There the weight is 1 for every
    parameterisation: it is epsilon's limit (its weight is exactly 1 for all SNR <= gamma), and for v and
    sample it is the plain MSE with which zero terminal SNR (Lin et al. 2024) trains that step, the
    conditional mean from which every sampler's first step (trailing spacing: t = T - 1) starts. A floor
    on the SNR instead (e.g. the smallest non-zero SNR: 1e-6 to 1e-9 for the shipped schedules) would
    keep that weight practically 0 and only hide the NaN. (epsilon with zero terminal SNR is refused by
    ``fgbg.config_checks``: the sampler cannot turn an epsilon prediction into x0 at SNR 0.)

    snr: (B,) float; prediction_type: ``epsilon`` | ``v_prediction`` | ``sample``. Returns (B,).
    """
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        weight = gamma / snr.clamp(min=gamma)
    elif prediction_type == "v_prediction":
        weight = clipped / (snr + 1)
    elif prediction_type == "sample":
        weight = clipped
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    return torch.where(snr > 0, weight, torch.ones_like(weight))


def _rate(value, lo_open: bool = False) -> bool:
    """A finite real number in [0, 1] (or (0, 1] with ``lo_open``), not a bool."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    return ok and not (lo_open and value == 0)


def parse_link_augment(value) -> dict | None:
    """``model.link_augment``: None (off: no level channel, no draws) or {prob in [0, 1], max_t in (0, 1]}."""
    if value is None:
        return None
    cfg = plain_dict(value)
    unknown = set(cfg) - set(LINK_AUGMENT_KEYS)
    if unknown:
        raise ValueError(f"model.link_augment: unknown keys {sorted(unknown)}; expected {LINK_AUGMENT_KEYS}")
    cfg = {"prob": 0.5, "max_t": 0.3} | cfg
    if not _rate(cfg["prob"]):
        raise ValueError(f"model.link_augment.prob={cfg['prob']!r}: expected a probability in [0, 1]")
    if not _rate(cfg["max_t"], lo_open=True):
        raise ValueError(
            f"model.link_augment.max_t={cfg['max_t']!r}: expected a fraction of the diffusion schedule in (0, 1]"
        )
    return {"prob": float(cfg["prob"]), "max_t": float(cfg["max_t"])}


# Generation's link options at their defaults (``sample_clip``'s; the predictor passes only the ones changed).
LINK_DEFAULTS = {"link_mode": "channels", "link_noise": 0.0, "link_init_weight": 0.5}
# All of generation's options beyond steps, sampler and guidance: the link's, and ``hint_anchor`` (the fraction of
# the sampling steps whose predicted clean frames get the hints' valid pixels pasted in; 0 = off; ``sample_clip``).
SAMPLE_DEFAULTS = {**LINK_DEFAULTS, "hint_anchor": 0.0, "anchor_finish": "blend"}
# How an anchored clip ends (``sample_clip``): ``blend`` (the last anchored step moves the latents by what the paste
# changes in their encoding), ``latent`` (where the hints cover a latent cell, the final latents are the pasted
# frame's encoding) or ``pixel`` (as ``latent``, and the decoded frames get the hints' pixels by their weight:
# diffusers' inpainting overlay of the known region).
ANCHOR_FINISHES = ("blend", "latent", "pixel")
# hint_anchor's motion hint: the reference around each track moves with the track (not only by the affine fitted
# to all of them), over a Gaussian of this fraction of the image's longer side (6 px at 64x64). 4 px (until
# 2026-12-02) moved too little of what surrounds a drawn stroke to be seen moving; 6 px followed strokes closer in
# each of 12 stroke-pair x camera cases, 8 px began to blend neighbouring tracks (bench/drawn_paths.py --sweep).
ANCHOR_TRACK_SIGMA = 3 / 32


def check_link_options(link_mode: str, link_noise, link_init_weight) -> None:
    """Generation's link options (``link_mode``, ``link_noise``, ``link_init_weight``); raises naming the key."""
    if link_mode not in LINK_MODES:
        raise ValueError(f"link_mode={link_mode!r}: expected one of {LINK_MODES}")
    if not _rate(link_noise):
        raise ValueError(f"link_noise={link_noise!r}: expected a fraction of the diffusion schedule in [0, 1]")
    if not _rate(link_init_weight):
        raise ValueError(f"link_init_weight={link_init_weight!r}: expected a weight in [0, 1]")


def check_hint_anchor(hint_anchor, anchor_finish: str = SAMPLE_DEFAULTS["anchor_finish"]) -> None:
    """Generation's ``hint_anchor`` (a fraction of the sampling steps in [0, 1]) and ``anchor_finish`` (one of
    ``ANCHOR_FINISHES``); raises naming the key."""
    if not _rate(hint_anchor):
        raise ValueError(f"hint_anchor={hint_anchor!r}: expected a fraction of the sampling steps in [0, 1]")
    if anchor_finish not in ANCHOR_FINISHES:
        raise ValueError(f"anchor_finish={anchor_finish!r}: expected one of {ANCHOR_FINISHES}")


class FgbgModule(L.LightningModule):
    """See the module docstring. Arguments mirror ``conf/model/fgbg_tiny.yaml``."""

    def __init__(
        self,
        unet,
        motion_adapter,
        latent,
        image_encoder,
        noise_scheduler: DDPMScheduler,
        optimizer: Callable | None = None,
        lr_scheduler: Callable | None = None,
        stage: str = "image",
        attention_backend: str = "sdpa",
        referencenet: Mapping | None = None,
        controlnet: Mapping | None = None,
        track_encoder: Mapping | None = None,
        motion_hint: bool = True,
        motion_hint_fit: str = "irls",
        hint_mask_dilation: int = 1,
        hint_space: str = "latent",
        link_prob: float = 0.2,
        link_augment: Mapping | None = None,
        video_trainable: Sequence[str] | None = None,
        cfg_dropout: Mapping | None = None,
        pose_gate: bool = True,
        pose_gate_dilation: int = 2,
        conditioning_scale: float = 1.0,
        min_snr_gamma: float | None = 5.0,
        offset_noise: float = 0.0,
        noise_seed: int | None = None,
        person_loss_weight: float = 1.0,
        person_hint: bool = False,
        person_hint_radius: float = 0.6,
        reference_keypoints_dropout: float = 0.0,
        reference_keypoints_jitter: float = 0.0,
        use_tracks: bool = True,
        init_from: str | None = None,
        per_sample_seed: int | None = None,
        fsdp: Mapping | None = None,
    ):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"model.stage={stage!r}: expected one of {STAGES}")
        check_backend(attention_backend)
        if latent.channels != unet.config.in_channels:
            raise ValueError(
                f"model.unet.in_channels={unet.config.in_channels} but the latent space has {latent.channels} channels"
            )
        if noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {noise_scheduler.config.prediction_type!r}")
        self.stage = stage
        self.use_tracks = use_tracks
        self.use_motion_hint = motion_hint and use_tracks
        if motion_hint_fit not in FITS:
            raise ValueError(f"model.motion_hint_fit={motion_hint_fit!r}: expected one of {FITS}")
        self.motion_hint_fit = motion_hint_fit
        self.use_person_hint = person_hint
        self.person_hint_radius = person_hint_radius
        if not _rate(reference_keypoints_dropout):
            raise ValueError(
                f"model.reference_keypoints_dropout={reference_keypoints_dropout!r}: expected a rate in [0, 1]"
            )
        # Training drops the reference keypoints alone at this rate (person hint zero, pose and reference kept), as
        # generation has it when mediapipe finds no person in the reference (fgbg.models.person_hint).
        self.reference_keypoints_dropout = float(reference_keypoints_dropout)
        if not (isinstance(reference_keypoints_jitter, int | float) and 0 <= reference_keypoints_jitter < 1):
            raise ValueError(
                f"model.reference_keypoints_jitter={reference_keypoints_jitter!r}: expected a standard deviation in "
                "frame sides, in [0, 1)"
            )
        # Training moves each reference keypoint by Gaussian noise of this std (x and y, in the frame's longer side),
        # as an estimator at generation misplaces them (fgbg.models.person_hint.jitter_reference_keypoints).
        self.reference_keypoints_jitter = float(reference_keypoints_jitter)
        self.hint_mask_dilation = hint_mask_dilation
        if hint_space not in HINT_SPACES:
            raise ValueError(f"model.hint_space={hint_space!r}: expected one of {HINT_SPACES}")
        # pixel: the motion and person hints warp the reference's pixels at full resolution and the frozen latent
        # space encodes the result (exact, as the frames' own latents are); latent: they warp the reference latent
        # by bilinear sampling (cheaper; at 16x16 a 64x64 limb is a fraction of a cell). Same channels either way.
        self.hint_space = hint_space
        self.link_prob = link_prob
        # Set: training noises the link latent to a random level and the denoiser sees that level as one more
        # constant input channel (docs/model.md "Link augmentation"). None: today's clean link, no channel.
        self.link_augment = parse_link_augment(link_augment)
        self.link_level_channel = self.link_augment is not None
        if isinstance(video_trainable, str) or not all(isinstance(p, str) for p in video_trainable or ()):
            raise ValueError(f"model.video_trainable={video_trainable!r}: expected a list of parameter name patterns")
        self.video_trainable = tuple(video_trainable or ())
        self.cfg_dropout = {k: 0.0 for k in CONDITIONS} | plain_dict(cfg_dropout)
        unknown = set(self.cfg_dropout) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"model.cfg_dropout: unknown conditions {sorted(unknown)}; expected {CONDITIONS}")
        self.pose_gate = pose_gate
        self.pose_gate_dilation = pose_gate_dilation
        self.conditioning_scale = conditioning_scale
        self.min_snr_gamma = min_snr_gamma
        self.offset_noise = offset_noise
        self.person_loss_weight = person_loss_weight
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.referencenet_calls = 0
        # sample_clip reuses what does not change between steps (the ControlNet's pose embedding) and clips (the
        # bank's projected keys/values); False recomputes them at every step (tests/test_bank_cache.py compares).
        self.reuse_in_sampling = True
        self.skip_optimizer_step = False  # set by training_step on a non-finite loss (any rank), see there
        # Set: training draws (noise, timesteps, dropouts, frames) come from a generator seeded by (noise_seed,
        # rank, micro-batch index), not from the global RNG, so a run resumed at any step draws what the
        # uninterrupted run drew (tests/test_scale_resume.py). None: the global RNG.
        self.noise_seed = noise_seed
        # Set: each training sample draws its frame, noise, timestep and dropouts from a generator seeded by
        # (per_sample_seed, step, sample key), so a global batch's gradient does not depend on its split over
        # ranks (tests/test_scale_ddp_equivalence.py). One forward pass per sample: slower, for checks.
        self.per_sample_seed = per_sample_seed
        self.fsdp = plain_dict(fsdp)  # fgbg.models.sharding.shard_model kwargs, used under ModelParallelStrategy
        self.fsdp_units: list[str] = []
        self.val_metrics = nn.ModuleDict({"loss": MeanMetric(), "loss_unweighted": MeanMetric()})

        c = latent.channels
        self.latent = latent
        self.image_encoder = image_encoder
        self.noise_scheduler = noise_scheduler
        self.bank = ReferenceBank()
        ref_cfg = plain_dict(referencenet)
        self.referencenet = ReferenceNet(unet, self.bank, bool(ref_cfg.get("mask_input", False)), attention_backend)
        cn_cfg = plain_dict(controlnet)
        if cn_cfg.get("pretrained"):
            self.controlnet = ControlNetModel.from_pretrained(
                cn_cfg["pretrained"], variant=cn_cfg.get("variant"), local_files_only=True
            )
        else:
            self.controlnet = ControlNetModel.from_unet(
                unet,
                conditioning_embedding_out_channels=tuple(cn_cfg.get("conditioning_embedding_out_channels", (16,))),
            )
        set_processors(self.controlnet, attention_backend)
        specs, mid_spec = down_residual_specs(unet.config)
        self.track_encoder = TrackEncoder(specs, mid_spec, latent.factor, **plain_dict(track_encoder))
        self.hint_channels = (c + 1 if self.use_motion_hint else 0) + (c + 1 if person_hint else 0)
        link_channels = c + 1 + int(self.link_level_channel)
        self.denoiser = Denoiser(unet, motion_adapter, link_channels + self.hint_channels, self.bank, attention_backend)
        if set(self.denoiser.reader_names) != set(self.referencenet.writer_names):
            raise ValueError("denoiser and ReferenceNet spatial self-attention layers do not pair up by name")
        self.apply_stage()
        if init_from:
            from fgbg.models.checkpoint import load_init_weights

            load_init_weights(self, init_from)

    # ------------------------------------------------------------------ stages
    def trainable_names(self, stage: str | None = None) -> set[str]:
        """Full parameter names that ``stage`` (default: this module's) trains."""
        stage = stage or self.stage
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r}: expected one of {STAGES}")
        if stage == "video":
            return {f"denoiser.{n}" for n, _ in self.denoiser.motion_parameters()} | self._video_extra_names()
        names = {f"denoiser.{n}" for n, _ in self.denoiser.named_parameters() if "motion_modules" not in n}
        names |= {
            f"referencenet.{n}"
            for n, _ in self.referencenet.named_parameters()
            if n not in self.referencenet.unused_parameter_names
        }
        names |= {f"controlnet.{n}" for n, _ in self.controlnet.named_parameters()}
        if self.use_tracks:
            names |= {f"track_encoder.{n}" for n, _ in self.track_encoder.named_parameters()}
        names |= {f"image_encoder.{n}" for n, _ in self.image_encoder.trainable_parameters()}
        return names

    def _video_extra_names(self) -> set[str]:
        """Denoiser parameters ``video_trainable`` adds to stage video.

        A pattern names a parameter exactly, a module (every parameter under it, e.g.
        ``denoiser.unet.conv_in``) or an ``fnmatch`` glob; each must match at least one parameter, and only
        denoiser parameters that stage image trains (stage video runs every other part without a graph).
        """
        if not self.video_trainable:
            return set()
        allowed = {n for n in self.trainable_names("image") if n.startswith("denoiser.")}
        names = {n for n, _ in self.named_parameters()}
        out = set()
        for pattern in self.video_trainable:
            hits = {n for n in names if n == pattern or n.startswith(pattern + ".") or fnmatchcase(n, pattern)}
            if not hits:
                raise ValueError(
                    f"model.video_trainable: {pattern!r} matches no parameter (e.g. denoiser.unet.conv_in)"
                )
            if hits - allowed:
                raise ValueError(
                    f"model.video_trainable: {pattern!r} matches parameters outside the denoiser's spatial layers "
                    f"(e.g. {sorted(hits - allowed)[:3]}); stage video can train only denoiser parameters"
                )
            out |= hits
        return out

    def adapt_init_tensor(self, name: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """``model.init_from`` weights made without ``link_augment`` into a model with it: ``conv_in``'s weight
        gets a zero input column at the level channel (right after the link mask), so the model starts out as the
        one it was made from. Any other shape difference is returned as is (and refused by the loader)."""
        if name != "denoiser.unet.conv_in.weight" or not self.link_level_channel:
            return tensor
        if tensor.shape[1] + 1 != shape[1] or tensor.shape[:1] + tensor.shape[2:] != shape[:1] + shape[2:]:
            return tensor
        at = 2 * self.latent.channels + 1  # noisy (c), link (c), link mask (1), then the level
        zero = tensor.new_zeros(tensor.shape[0], 1, *tensor.shape[2:])
        log.info("model.init_from: %s has no link level channel; its conv_in column starts at zero", name)
        return torch.cat([tensor[:, :at], zero, tensor[:, at:]], 1)

    def apply_stage(self) -> None:
        """Set ``requires_grad`` to exactly the stage's trainable set."""
        trainable = self.trainable_names()
        for name, p in self.named_parameters():
            p.requires_grad_(name in trainable)

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (dropout/normalisation statistics untouched)."""
        super().train(mode)
        self.latent.eval()
        if self.stage == "video":
            for child in (self.referencenet, self.controlnet, self.track_encoder, self.image_encoder, self.denoiser):
                child.eval()
            for name, m in self.denoiser.named_modules():
                if name.endswith("motion_modules"):
                    m.train(mode)
        else:
            self.image_encoder.train(mode)
            for name, m in self.denoiser.named_modules():
                if name.endswith("motion_modules"):
                    m.eval()
        return self

    # ------------------------------------------------------------------ sharding
    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (``trainer=fsdp``/``fsdp_sim``): shard with FSDP2 over all
        ranks (``fgbg.models.sharding.shard_model``, options from ``model.fsdp``). A no-op under other strategies
        and when already sharded (Lightning calls this hook again for each ``fit``/``validate``)."""
        if self.device_mesh is None or self.fsdp_units:
            return
        from fgbg.models.sharding import data_parallel_mesh, shard_model

        self.fsdp_units = shard_model(self, data_parallel_mesh(self.trainer.strategy.root_device), **self.fsdp)
        log.info("FSDP2: %d sharded units", len(self.fsdp_units))

    # ------------------------------------------------------------------ reference
    def encode_reference(
        self,
        reference: torch.Tensor,
        reference_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ReferenceContext:
        """Run the image encoder and ReferenceNet once.

        reference: (B, 3, H, W) in [-1, 1]; reference_mask: (B, 1, H, W) in {0, 1} or None; generator: for
        the VAE's posterior sample (training passes its seeded one), None: the global RNG.
        """
        self.referencenet_calls += 1
        latent = self.latent.encode(reference, generator)
        tokens = self.image_encoder(reference)
        mask_latent = None
        if self.referencenet.mask_input:
            if reference_mask is None:
                raise ValueError("encode_reference: this model's ReferenceNet takes the reference person mask")
            mask_latent = F.adaptive_max_pool2d(reference_mask.to(latent.dtype), latent.shape[-2:])
        bank = self.referencenet(latent, tokens, mask_latent)
        return ReferenceContext(bank, tokens, latent, reference_mask, tuple(reference.shape[-2:]), reference)

    # ------------------------------------------------------------------ denoising
    def static_conditions(self, ctx: ReferenceContext, cond: Mapping[str, torch.Tensor]) -> dict:
        """Timestep-independent conditioning: track residuals, gates and motion hint.

        cond: the contract's per-clip keys, per-frame tensors (B, F, ...). Returns tensors
        folded to (B*F, ...) where per frame, computed once per clip at generation time.
        """
        b, f = cond["pose_maps"].shape[:2]
        body = cond["body_region"].flatten(0, 1).to(self.dtype)  # (B*F, 1, H, W)
        track_down, track_mid = self.track_encoder(cond["track_maps"].flatten(0, 1).to(self.dtype))
        out = {
            "batch": b,
            "frames": f,
            "pose": cond["pose_maps"].flatten(0, 1).to(self.dtype),
            "pose_gate": dilate(body, self.pose_gate_dilation) if self.pose_gate else torch.ones_like(body),
            "track_down": track_down,
            "track_mid": track_mid,
            "track_gate": 1.0 - body,
            "hint": None,
            "person_hint": None,
        }
        source = ctx.image.to(self.dtype) if self.hint_space == "pixel" else ctx.latent
        if self.use_motion_hint:
            out["hint"] = self._motion_hint(source, ctx, cond)
        if self.use_person_hint:
            out["person_hint"] = self._person_hint(source, ctx, cond)
        if self.hint_space == "pixel":
            for key in ("hint", "person_hint"):
                if out[key] is not None:
                    out[key] = self._encode_hint(out[key], ctx.latent.shape[-2:])
        return out

    def _person_hint(self, source: torch.Tensor, ctx: ReferenceContext, cond: Mapping) -> torch.Tensor:
        """``person_hint`` of ``source`` (the reference latent or image) with this model's options."""
        return person_hint(
            source,
            ctx.mask,
            cond["reference_keypoints"].to(ctx.latent.dtype),
            cond["keypoints"].to(ctx.latent.dtype),
            ctx.image_size,
            radius=self.person_hint_radius,
        )

    def _motion_hint(
        self, source: torch.Tensor, ctx: ReferenceContext, cond: Mapping, local_sigma: float = 0.0
    ) -> torch.Tensor:
        """``motion_hint`` of ``source`` (the reference latent or image) with this model's options."""
        return motion_hint(
            source,
            ctx.mask,
            cond["tracks"].to(ctx.latent.dtype),
            cond["track_visible"].bool(),
            cond["track_anchor"].to(ctx.latent.dtype),
            cond["track_anchor_visible"].bool(),
            ctx.image_size,
            self.hint_mask_dilation,
            self.motion_hint_fit,
            local_sigma,
        )

    def _encode_hint(self, hint: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A pixel-space hint (B, T, 3 + 1, H, W) -> (B, T, c + 1, h, w): the colours through the frozen latent
        space's encoder (its mean: no sampling noise in a condition), the validity area-pooled to the latent grid."""
        b, t = hint.shape[:2]
        colour = self.latent.encode(hint[:, :, :3].flatten(0, 1), mean=True).to(hint.dtype)
        valid = F.adaptive_avg_pool2d(hint[:, :, 3:].flatten(0, 1), tuple(size))
        return torch.cat([colour, valid], 1).unflatten(0, (b, t))

    def denoise(
        self,
        noisy: torch.Tensor,
        timestep: torch.Tensor,
        ctx: ReferenceContext,
        static: dict,
        keep: Mapping[str, torch.Tensor],
        link_latent: torch.Tensor | None = None,
        link_on: torch.Tensor | None = None,
        plan: dict | None = None,
        link_level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One network evaluation.

        noisy: (B, F, c, h, w); timestep: (B,); keep: condition -> (B,) bool (False = dropped
        for classifier-free guidance); link_latent: (B, c, h, w) or None; link_on: (B,) bool;
        link_level: (B,) noise level of the link latent (fraction of the schedule; None: 0), fed only to a
        model with ``link_augment``.
        plan: ``denoise_plan(ctx, static, keep, link_latent, link_on, link_level)`` made beforehand (``sample_clip`` makes
        one per guidance pass and clip, reused at every step); None: made here.
        Returns the model output (epsilon, v or x0 by ``prediction_type``), (B, F, c, h, w).

        Training (a graph, stage image): the ControlNet and the track residuals always run and are multiplied
        by their per-sample keep, as are the global tokens and the hints, and the bank is tied in with weight 0
        when no sample reads it, so every trainable parameter gets a gradient (zero where dropped) whatever the
        dropout draw: DDP ranks (find_unused_parameters=False) agree on the set.
        No graph (``sample_clip``, validation, stage video's frozen branches): a branch whose keep is False
        for every sample is skipped, a pure speed-up (it would add exact zeros), except under FSDP, where
        every rank must run the same sharded modules.
        """
        b, f = noisy.shape[:2]
        if plan is None:
            plan = self.denoise_plan(ctx, static, keep, link_latent, link_on, link_level)
        grads = torch.is_grad_enabled() and self.stage == "image"
        if plan["grads"] != grads:
            raise RuntimeError("denoise: the plan was made in another grad mode; make it where it is used")
        folded = noisy.flatten(0, 1)
        t_frames = timestep.repeat_interleave(f)
        down, mid = plan["track_down"], plan["track_mid"]  # gated track residuals, or None
        if plan["run_pose"]:
            with torch.set_grad_enabled(grads):
                cn_down, cn_mid = self.controlnet(
                    folded,
                    t_frames,
                    encoder_hidden_states=plan["tokens_frames"],
                    controlnet_cond=static["pose"],
                    conditioning_scale=self.conditioning_scale,
                    return_dict=False,
                )
            # gate_residuals' products, with the gate pooled to each residual's size once per plan
            cn_down = [r * _pooled_gate(plan, r) for r in cn_down]
            cn_mid = cn_mid * _pooled_gate(plan, cn_mid)
            down = cn_down if down is None else [c + t for c, t in zip(cn_down, down, strict=True)]
            mid = cn_mid if mid is None else cn_mid + mid
        sample = torch.cat([noisy, plan["inputs"]], 2).transpose(1, 2)  # (B, C_in, F, h, w)
        with self.bank.reading(ctx.bank, plan["keep_ref"]):
            out = self.denoiser(sample, timestep, plan["tokens"], down, mid)
        if grads and ctx.bank and not bool(plan["keep_ref"].any()):
            # No sample reads the bank (reference_attention then leaves it out): tie it in with weight 0 so the
            # ReferenceNet still gets its (zero) gradient, as on a rank whose micro-batch keeps a reference.
            out = out + 0.0 * sum(t.sum() for t in ctx.bank.values())
        return out.transpose(1, 2)

    def denoise_plan(
        self,
        ctx: ReferenceContext,
        static: dict,
        keep: Mapping[str, torch.Tensor],
        link_latent: torch.Tensor | None = None,
        link_on: torch.Tensor | None = None,
        link_level: torch.Tensor | None = None,
    ) -> dict:
        """What ``denoise`` computes from everything but the noisy input and the timestep: the gated global
        tokens (and their per-frame copy), which branches run, the track residuals times their gate, the pose
        gate pooled to each residual size, and the denoiser's extra input channels (link latent and mask, the
        link's noise level with ``link_augment``, motion and person hints, each times its keep),
        (B, F, C_extra, h, w). Made in the grad mode of its use."""
        b, f = static["batch"], static["frames"]
        if not self.use_tracks:
            keep = dict(keep) | {"tracks": torch.zeros_like(keep["tracks"])}
        dtype = ctx.latent.dtype
        per_frame = {k: v.to(dtype).repeat_interleave(f)[:, None, None, None] for k, v in keep.items()}
        keep_ref = keep["reference"]
        tokens = ctx.global_tokens * keep_ref.to(ctx.global_tokens.dtype)[:, None, None]
        # With a graph in stage image every branch runs, gated to zero where dropped, so the set of parameters that
        # get a gradient never depends on the dropout draw (DDP with find_unused_parameters=False needs the same set
        # on every rank). Without one (generation, validation, stage video's frozen branches) a branch whose keep is
        # False for the whole batch is skipped: it would add exact zeros.
        # Under FSDP every rank must run the same modules: each sharded forward all-gathers its parameters, so a
        # ControlNet skipped on one rank only (its draw dropped every pose) would desynchronise the collectives.
        grads = torch.is_grad_enabled() and self.stage == "image"
        always = grads or bool(self.fsdp_units)
        run_pose = always or bool(keep["pose"].any())
        run_tracks = (always and self.use_tracks) or bool(keep["tracks"].any())
        plan = {
            "grads": grads,
            "keep_ref": keep_ref,
            "tokens": tokens,
            "tokens_frames": tokens.repeat_interleave(f, 0),
            "run_pose": run_pose,
            "track_down": None,
            "track_mid": None,
        }
        if run_pose:
            plan["pose_gate"] = static["pose_gate"] * per_frame["pose"]
            plan["pose_gate_pooled"] = {}  # (h, w, dtype) -> gate pooled to that size, filled at first use
        if run_tracks:
            gate = static["track_gate"] * per_frame["tracks"]
            plan["track_down"] = gate_residuals(static["track_down"], gate)
            plan["track_mid"] = gate_residuals([static["track_mid"]], gate)[0]

        c, (h, w) = ctx.latent.shape[1], ctx.latent.shape[-2:]
        if link_latent is None or link_on is None:
            link_latent = ctx.latent.new_zeros(b, c, h, w)
            link_on = torch.zeros(b, dtype=torch.bool, device=ctx.latent.device)
        on = link_on.to(dtype)[:, None, None, None]
        parts = [(link_latent * on)[:, None].expand(b, f, c, h, w), on[:, None].expand(b, f, 1, h, w)]
        if self.link_level_channel:  # a constant channel: the link's noise level (0 = clean or no link)
            level = on * (0.0 if link_level is None else link_level.to(dtype)[:, None, None, None])
            parts.append(level[:, None].expand(b, f, 1, h, w))
        if self.use_motion_hint:
            hint_keep = (keep["reference"] & keep["tracks"]).to(dtype)
            parts.append(static["hint"] * hint_keep[:, None, None, None, None])
        if self.use_person_hint:
            person_keep = (keep["reference"] & keep["pose"]).to(dtype)
            parts.append(static["person_hint"] * person_keep[:, None, None, None, None])
        plan["inputs"] = torch.cat(parts, 2)
        return plan

    # ------------------------------------------------------------------ training
    def _select_frames(
        self, batch: Mapping, generator: torch.Generator | None
    ) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Per-clip tensors for this stage: all frames (video) or one random frame (image).

        Returns (cond with the per-frame keys and ``frames``, link frame (B, 3, H, W),
        link available (B,) bool). In stage image the link frame of frame i is frame i-1
        (the stored link frame for i = 0), so it keeps its meaning: the frame just before.
        """
        frames = batch["frames"]
        b, t = frames.shape[:2]
        keys = ("frames", "pose_maps", "keypoints", "body_region", "track_maps", "tracks", "track_visible", "masks")
        keys = tuple(k for k in keys if k in batch)
        link, link_ok = batch["link_frame"], batch["link_available"].bool()
        if self.stage == "video":
            cond = {k: batch[k] for k in keys}
        else:
            idx = torch.randint(0, t, (b,), generator=generator, device=generator.device if generator else "cpu")
            idx = idx.to(frames.device)
            rows = torch.arange(b, device=frames.device)
            cond = {k: batch[k][rows, idx][:, None] for k in keys}
            prev = frames[rows, (idx - 1).clamp_min(0)]
            first = (idx == 0)[:, None, None, None]
            link = torch.where(first, link, prev)
            link_ok = torch.where(idx == 0, link_ok, torch.ones_like(link_ok))
        cond["track_anchor"] = batch["track_anchor"]
        cond["track_anchor_visible"] = batch["track_anchor_visible"]
        cond["reference_keypoints"] = batch["reference_keypoints"]
        return cond, link, link_ok

    def _rand(self, shape, generator, device) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=generator.device if generator else device).to(device)

    def _draw_link_levels(self, link_on: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """``link_augment``'s per-sample noise levels (B,): ``U[0, max_t]`` with probability ``prob`` where the
        link is on, else 0. No draw when augmentation is off or ``prob`` is 0 (the training stream is unchanged)."""
        if self.link_augment is None or self.link_augment["prob"] == 0:
            return None
        b, dev = link_on.shape[0], link_on.device
        augment = link_on & (self._rand(b, generator, dev) < self.link_augment["prob"])
        level = self._rand(b, generator, dev) * self.link_augment["max_t"]
        return torch.where(augment, level, torch.zeros_like(level))

    def noise_link(
        self, link_latent: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The link latent (B, c, h, w) noised by the training scheduler's ``add_noise`` at timestep
        ``floor(level * num_train_timesteps)`` where ``level`` (B,) > 0 (kept clean where 0). Returns the latent
        and the level actually used (timestep / num_train_timesteps, 0 where clean), which the level channel gets."""
        num_t = self.noise_scheduler.config.num_train_timesteps
        t = (level * num_t).long().clamp(0, num_t - 1)
        gen_dev = generator.device if generator else link_latent.device
        noise = torch.randn(link_latent.shape, generator=generator, device=gen_dev).to(link_latent)
        noisy = self.noise_scheduler.add_noise(link_latent, noise, t.to(link_latent.device))
        on = level > 0
        used = torch.where(on, t.to(level.dtype) / num_t, torch.zeros_like(level))
        return torch.where(on[:, None, None, None], noisy, link_latent), used

    def compute_loss(self, batch: Mapping, generator: torch.Generator | None = None, dropout: bool = True) -> dict:
        """Diffusion loss of one batch (see the batch contract). Returns {"loss", "loss_unweighted"}."""
        cond, link_frame, link_ok = self._select_frames(batch, generator)
        frames = cond["frames"]
        b, f = frames.shape[:2]
        dev = frames.device
        if dropout and self.use_person_hint and self.reference_keypoints_dropout > 0:  # no draw at 0: same stream
            drop = self._rand(b, generator, dev) < self.reference_keypoints_dropout
            cond["reference_keypoints"] = drop_reference_keypoints(cond["reference_keypoints"], drop)
        if dropout and self.use_person_hint and self.reference_keypoints_jitter > 0:  # no draw at 0: same stream
            sigma = self.reference_keypoints_jitter * max(frames.shape[-2:])
            cond["reference_keypoints"] = jitter_reference_keypoints(cond["reference_keypoints"], sigma, generator)
        with torch.no_grad():
            z0 = self.latent.encode(frames.flatten(0, 1).to(self.dtype), generator).unflatten(0, (b, f))
        # Stage video trains only the motion modules: the conditioning parts run without a graph.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.stage == "image"):
            ctx = self.encode_reference(batch["reference"].to(self.dtype), batch["reference_mask"], generator)
            static = self.static_conditions(ctx, cond)

        gen_dev = generator.device if generator else dev
        noise = torch.randn(z0.shape, generator=generator, device=gen_dev).to(dev, z0.dtype)
        if self.offset_noise:
            offset = torch.randn(b, 1, z0.shape[2], 1, 1, generator=generator, device=gen_dev).to(dev, z0.dtype)
            noise = noise + self.offset_noise * offset
        num_t = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_t, (b,), generator=generator, device=gen_dev).to(dev)
        noisy = self.noise_scheduler.add_noise(z0, noise, timesteps)
        keep = {k: (self._rand(b, generator, dev) >= (self.cfg_dropout[k] if dropout else 0.0)) for k in CONDITIONS}
        link_on = link_ok & (self._rand(b, generator, dev) < self.link_prob)
        link_level = self._draw_link_levels(link_on, generator) if dropout else None
        link_latent = None
        if bool(link_on.any()):
            with torch.no_grad():
                link_latent = self.latent.encode(link_frame.to(self.dtype), generator)
                if link_level is not None and bool((link_level > 0).any()):
                    link_latent, link_level = self.noise_link(link_latent, link_level, generator)
        pred = self.denoise(noisy, timesteps, ctx, static, keep, link_latent, link_on, link_level=link_level)

        kind = self.noise_scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": z0}.get(kind)
        if target is None:
            target = self.noise_scheduler.get_velocity(z0, noise, timesteps)
        err = F.mse_loss(pred.float(), target.float(), reduction="none")  # (B, F, c, h, w)
        if self.person_loss_weight != 1.0 and "masks" in cond:
            person = F.adaptive_avg_pool2d(cond["masks"].flatten(0, 1).float(), err.shape[-2:])
            err = err * (1.0 + (self.person_loss_weight - 1.0) * person.unflatten(0, (b, f)))
        per_sample = err.mean((1, 2, 3, 4))
        weight = torch.ones_like(per_sample)
        if self.min_snr_gamma:
            snr = compute_snr(self.noise_scheduler, timesteps).to(per_sample)
            weight = min_snr_weights(snr, self.min_snr_gamma, kind)
        return {"loss": (per_sample * weight).mean(), "loss_unweighted": per_sample.mean()}

    def training_step(self, batch, batch_idx):
        """Loss of one batch; the optimizer step is skipped on every rank when it is not finite on any rank.

        The non-finite flag is all-reduced (max) over the ranks (a no-op in one process), so all ranks decide
        alike. A skipped step returns ``{"loss": loss * 0, "skipped": True}``: Lightning refuses ``None`` under
        DDP, and a backward on every rank keeps DDP's gradient all-reduce (find_unused_parameters=False) in
        step; ``on_before_optimizer_step`` then drops every gradient (zero or NaN), so AdamW leaves the weights
        and its moments untouched (with gradient accumulation: the whole accumulated step).
        ``fgbg.callbacks.NumericalGuard`` counts such skips and stops a run that keeps producing them.
        """
        if self.per_sample_seed is None:
            out = self.compute_loss(batch, generator=self._noise_generator())
        else:
            out = self._per_sample_loss(batch)
        if self._nonfinite_on_any_rank(out["loss"]):
            log.warning(
                "step %d: non-finite loss on some rank (here %s), skipping the optimizer step on every rank",
                self.global_step,
                out["loss"].item(),
            )
            self.skip_optimizer_step = True
            return {"loss": out["loss"] * 0.0, "skipped": True}
        bs = batch["frames"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("train/loss_unweighted", out["loss_unweighted"], batch_size=bs)
        return out["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Release the bank tokens the denoiser read (kept for backward's recomputation, see ``ReferenceBank``)."""
        self.bank.clear()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Drop every gradient of a step that ``training_step`` skipped (after the callbacks, before clipping)."""
        if self.skip_optimizer_step:
            optimizer.zero_grad(set_to_none=True)
            self.skip_optimizer_step = False

    def _nonfinite_on_any_rank(self, loss: torch.Tensor) -> bool:
        """True on every rank when ``loss`` is not finite on at least one (one all-reduce; single process: local)."""
        from fgbg.models.sharding import any_rank

        return any_rank(~torch.isfinite(loss.detach()).all(), self._trainer.strategy if self._trainer else None)

    def _per_sample_loss(self, batch: Mapping) -> dict:
        """Mean of ``compute_loss`` over the samples one by one, each with its own seeded generator."""
        outs = []
        for i, key in enumerate(batch["key"]):
            seed = zlib.crc32(f"{self.per_sample_seed}/{self.global_step}/{key}".encode())
            gen = torch.Generator(device=self.device).manual_seed(seed)
            outs.append(self.compute_loss({k: v[i : i + 1] for k, v in batch.items()}, generator=gen))
        return {k: torch.stack([o[k] for o in outs]).mean() for k in outs[0]}

    def _noise_generator(self) -> torch.Generator | None:
        """Generator of this training micro-batch's draws, seeded by (noise_seed, global rank, micro-batch index).

        ``fit_loop.epoch_loop.total_batch_idx`` counts micro-batches over the whole run and is restored on
        resume, unlike the global RNG (which DataLoader iterators and other code also draw from).
        """
        if self.noise_seed is None or self._trainer is None:
            return None
        idx = self.trainer.fit_loop.epoch_loop.total_batch_idx
        seed = zlib.crc32(f"{self.noise_seed}/{self.global_rank}/{idx}".encode())
        return torch.Generator(device=self.device).manual_seed(seed)

    def validation_step(self, batch, batch_idx):
        """Validation loss with fixed draws, averaged over samples by torchmetrics ``MeanMetric``s.

        A padding batch (``val_pad``: this rank ran out of validation samples before the others, see
        ``ClipStream._val_batches``) still runs the forward pass, as FSDP's collectives need every rank, and
        counts with weight 0. The metrics sum (loss x samples) and samples over ranks at epoch end, so uneven
        per-rank counts give the true mean (Lightning's own ``sync_dist`` mean averages the integer sample
        counts over ranks in integer arithmetic: 1 and 0 samples gave a count of 0, val/loss = inf).
        """
        gen = torch.Generator(device=self.device).manual_seed(1000 + batch_idx)
        out = self.compute_loss(batch, generator=gen, dropout=False)
        weight = 0.0 if batch.get("val_pad") else float(batch["frames"].shape[0])
        for key, metric in self.val_metrics.items():
            metric.update(out[key].detach(), weight=weight)
            self.log(f"val/{key}", metric, prog_bar=key == "loss")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("model.optimizer is not set")
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample_clip(
        self,
        ctx: ReferenceContext,
        cond: Mapping[str, torch.Tensor],
        link_frame: torch.Tensor | None = None,
        num_inference_steps: int = 20,
        scheduler: str = "ddim",
        guidance: Mapping[str, float] | None = None,
        generator: torch.Generator | None = None,
        drop: tuple[str, ...] | list[str] = (),
        link_mode: str = LINK_DEFAULTS["link_mode"],
        link_noise: float = LINK_DEFAULTS["link_noise"],
        link_init_weight: float = LINK_DEFAULTS["link_init_weight"],
        hint_anchor: float = SAMPLE_DEFAULTS["hint_anchor"],
        anchor_finish: str = SAMPLE_DEFAULTS["anchor_finish"],
    ) -> torch.Tensor:
        """Generate one clip. Returns (B, T, 3, H, W) in [-1, 1].

        cond: ``COND_KEYS`` of the batch contract (per-frame tensors (B, T, ...)).
        link_frame: (B, 3, H, W) in [-1, 1], the previous clip's last frame, or None.
        guidance: condition -> scale. Compositional classifier-free guidance:
        ``out = full + sum_c (s_c - 1) * (full - without_c)``, one network pass with all
        conditions plus one per condition whose scale is not 1 (the reference pass drops
        the bank, the global tokens and both hints; the tracks pass drops the track
        residuals and the motion hint; the pose pass drops the ControlNet and the person
        hint). All scales 1 is plain conditional sampling.
        drop: conditions left out of every pass (as in classifier-free dropout), e.g.
        ``("reference",)`` for the claims benchmark's first-clip-only reference row.
        link_mode: how ``link_frame`` reaches the clip: ``channels`` (the link input channels), ``noise_init``
        (the starting noise: ``initial_latents``) or ``both``. link_noise: with the channels, the link latent is
        noised to this fraction of the schedule (``noise_link``; a model with ``link_augment`` also sees the level).
        link_init_weight: the noised link's weight in the starting noise (``noise_init``/``both``).
        hint_anchor: for this fraction of the sampling steps (the first, noisiest ones), each step's predicted
        clean frames get the hints' pixels pasted where the hints are valid (``hint_anchor_pixels``: the
        reference warped to the pose and by the tracks), and the next latents move by what that paste changes
        in the clean latents (``_anchor_correction``; as inpainting keeps a known region). The warped
        reference's colours are then where generation goes rather than what a small denoiser may or may not
        copy; the last steps run free, to blend the pasted pixels with the rest. 0 is off.
        anchor_finish: with ``hint_anchor`` > 0, how the clip ends. ``blend``: as every anchored step (the final
        latents keep the model's detail under the paste's change). ``latent``: the last anchored step's latents
        are the pasted frame's encoding where the hints cover a latent cell, by the cell's mean weight (the
        paste is kept up to the VAE's round trip). ``pixel``: as ``latent``, then the decoded frames get the
        hints' pixels by their weight (diffusers' inpainting overlay of the known region: the reference's
        detail finer than the VAE keeps, e.g. a small chequered shirt, survives).
        """
        check_link_options(link_mode, link_noise, link_init_weight)
        check_hint_anchor(hint_anchor, anchor_finish)
        missing = [k for k in COND_KEYS if k not in cond]
        if missing:
            raise KeyError(f"sample_clip: cond lacks {missing}")
        guidance = {k: 1.0 for k in CONDITIONS} | dict(guidance or {})
        unknown = set(guidance) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"guidance: unknown conditions {sorted(unknown)}; expected {CONDITIONS}")
        b, t = cond["pose_maps"].shape[:2]
        h, w = ctx.latent.shape[-2:]
        dev = ctx.latent.device
        sampler = make_sampler(scheduler, self.noise_scheduler.config)
        sampler.set_timesteps(num_inference_steps, device=dev)
        shape = (b, t, ctx.latent.shape[1], h, w)
        gen_dev = generator.device if generator else dev
        latents = torch.randn(shape, generator=generator, device=gen_dev).to(dev, ctx.latent.dtype)
        latents = latents * sampler.init_noise_sigma
        cond = {k: v.to(dev) for k, v in cond.items() if k in COND_KEYS}
        static = self.static_conditions(ctx, cond)
        link_latent, link_on, link_level = None, None, None
        if link_frame is not None:
            clean = self.latent.encode(link_frame.to(dev, self.dtype))
            if link_mode != "noise_init":
                link_latent, link_on = clean, torch.ones(b, dtype=torch.bool, device=dev)
                if link_noise > 0:
                    if not self.link_level_channel:
                        log.warning("link_noise=%s: this model was trained without link_augment", link_noise)
                    level = torch.full((b,), float(link_noise), device=dev)
                    link_latent, link_level = self.noise_link(clean, level, generator)
            if link_mode != "channels":
                latents = self.initial_latents(latents, clean, sampler, link_init_weight, generator)
        bad = set(drop) - set(CONDITIONS)
        if bad:
            raise ValueError(f"drop: unknown conditions {sorted(bad)}; expected {CONDITIONS}")
        all_on = {k: torch.full((b,), k not in drop, dtype=torch.bool, device=dev) for k in CONDITIONS}
        # Everything but the noisy input and the timestep is fixed for the clip: one plan per guidance pass,
        # the ControlNet's pose embedding, and (across clips too) the bank's projected keys and values.
        keeps = [(1.0, all_on)] + [
            (scale, dict(all_on) | {name: torch.zeros(b, dtype=torch.bool, device=dev)})
            for name, scale in guidance.items()
            if scale != 1.0 and name not in drop
        ]
        passes = [
            (scale, keep, self.denoise_plan(ctx, static, keep, link_latent, link_on, link_level))
            for scale, keep in keeps
        ]
        timesteps = sampler.timesteps
        anchor_steps = round(hint_anchor * len(timesteps))
        anchor = self.hint_anchor_pixels(ctx, cond, static, all_on) if anchor_steps > 0 else None
        reuse = self.reuse_in_sampling and not self.fsdp_units
        with self._fixed_pose_embedding(static["pose"], reuse and any(plan["run_pose"] for *_, plan in passes)):
            with self.bank.reuse_projections(reuse):
                for i, step_t in enumerate(timesteps):
                    model_in = sampler.scale_model_input(latents, step_t)
                    tt = step_t.reshape(1).expand(b).to(dev)
                    full = self.denoise(model_in, tt, ctx, static, all_on, plan=passes[0][2])
                    out = full
                    for scale, keep, plan in passes[1:]:
                        without = self.denoise(model_in, tt, ctx, static, keep, plan=plan)
                        out = out + (scale - 1.0) * (full - without)
                    latents = sampler.step(out, step_t, latents, generator=generator).prev_sample
                    if anchor is not None and i < anchor_steps:
                        last = i + 1 == anchor_steps and anchor_finish != "blend"
                        delta = self._anchor_correction(model_in, out, step_t, anchor, replace=last)
                        if i + 1 < len(timesteps):  # x0's change as it enters the next latents (add_noise is linear)
                            delta = sampler.add_noise(delta, torch.zeros_like(delta), timesteps[i + 1 : i + 2])
                        latents = latents + delta.to(latents.dtype)
        frames = self.latent.decode(latents.flatten(0, 1))
        if anchor is not None and anchor_finish == "pixel":
            pixels, weight = anchor
            frames = frames + weight.to(frames.dtype) * (pixels.to(frames.dtype) - frames)
        return frames.unflatten(0, (b, t)).clamp(-1, 1)

    def hint_anchor_pixels(
        self, ctx: ReferenceContext, cond: Mapping, static: Mapping, keep: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What ``hint_anchor`` pastes into each predicted frame: (pixels (B*T, 3, H, W), weight (B*T, 1, H, W)),
        or None when the clip has no hint in use.

        The hints in pixel space (the reference warped by the tracks and bone by bone to the pose, whatever the
        model's ``hint_space``; the motion hint also moves the reference around each track as that track says,
        ``ANCHOR_TRACK_SIGMA``, so a path drawn against the camera is followed rather than pasted over): the
        person hint where it is valid, the motion hint where it is valid outside the frame's body region (the
        person, not the reference's background, stands there). A hint counts only where its conditions are kept,
        as in ``denoise_plan``: the motion hint needs the reference and the tracks, the person hint the reference
        and the pose."""
        if ctx.image is None:
            raise ValueError("hint_anchor: the reference context has no pixel image to warp (encode_reference's)")
        source = ctx.image.to(self.dtype)
        pixels, weight = None, None
        if self.use_person_hint and static.get("person_hint") is not None:
            hint = self._person_hint(source, ctx, cond)
            kept = (keep["reference"] & keep["pose"]).to(self.dtype)[:, None, None, None, None]
            pixels, weight = hint[:, :, :3], hint[:, :, 3:] * kept
        if self.use_motion_hint and static.get("hint") is not None:
            # each track carries its neighbourhood too: a path drawn against the camera is followed, not pasted over
            hint = self._motion_hint(source, ctx, cond, ANCHOR_TRACK_SIGMA * max(ctx.image_size))
            kept = (keep["reference"] & keep["tracks"]).to(self.dtype)[:, None, None, None, None]
            body = cond["body_region"].to(self.dtype)
            valid = hint[:, :, 3:] * (1.0 - body) * kept
            if pixels is None:
                pixels, weight = hint[:, :, :3], valid
            else:
                fill = valid * (1.0 - weight)
                pixels, weight = pixels * weight + hint[:, :, :3] * fill, weight + fill
        if weight is None or not bool(weight.any()):
            return None
        return pixels.flatten(0, 1), weight.flatten(0, 1)

    def _anchor_correction(
        self, model_in: torch.Tensor, out: torch.Tensor, step_t: torch.Tensor, anchor: tuple, replace: bool = False
    ) -> torch.Tensor:
        """The change ``hint_anchor`` makes to this step's predicted clean latents (B, T, c, h, w): decode the
        prediction, paste the hint's pixels by their weight, and take the difference of the two encodings (only
        what the pasted pixels change; the rest of the latent stays the model's, with no round trip's loss).
        replace (``anchor_finish`` latent/pixel, at the last anchored step): where the paste covers a latent cell,
        by the cell's mean weight, the change takes the predicted latents all the way to the pasted frame's
        encoding. model_in is the sampler's scaled input, the variance-preserving x_t for every sampler here."""
        alpha = self.noise_scheduler.alphas_cumprod.to(model_in.device)[step_t.long()].to(model_in.dtype)
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            x0 = (model_in - (1 - alpha).sqrt() * out) / alpha.sqrt()
        elif kind == "v_prediction":
            x0 = alpha.sqrt() * model_in - (1 - alpha).sqrt() * out
        else:
            x0 = out
        pixels, weight = anchor
        flat = x0.flatten(0, 1)
        decoded = self.latent.decode(flat).to(pixels.dtype)
        pasted = weight * pixels + (1.0 - weight) * decoded
        target = self.latent.encode(pasted, mean=True)
        delta = target - self.latent.encode(decoded, mean=True)
        if replace:
            cover = F.adaptive_avg_pool2d(weight.to(target.dtype), target.shape[-2:])
            delta = delta + cover * (target - flat.to(target.dtype) - delta)
        return delta.to(x0.dtype).unflatten(0, x0.shape[:2])

    def initial_latents(
        self,
        latents: torch.Tensor,
        link_latent: torch.Tensor,
        sampler,
        weight: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Starting noise of a linked clip (``link_mode`` ``noise_init``/``both``; the paper links "the final
        frame of one clip to the input noise for the next").

        The link latent (B, c, h, w) is noised to the sampler's first timestep by the sampler's own ``add_noise``
        (so it has the starting noise's scale for every sampler), broadcast to all frames (one noise draw shared
        by the frames) and mixed with the fresh starting noise ``latents`` (B, T, c, h, w), keeping the variance:
        ``sqrt(weight) * noised link + sqrt(1 - weight) * latents``. weight 0: ``latents`` unchanged.
        """
        if weight == 0:
            return latents
        gen_dev = generator.device if generator else link_latent.device
        noise = torch.randn(link_latent.shape, generator=generator, device=gen_dev).to(link_latent)
        t0 = sampler.timesteps[:1].to(link_latent.device)
        noised = sampler.add_noise(link_latent, noise, t0).to(latents.dtype)
        return weight**0.5 * noised[:, None] + (1.0 - weight) ** 0.5 * latents

    @contextmanager
    def _fixed_pose_embedding(self, pose: torch.Tensor, enabled: bool = True) -> Iterator[None]:
        """Within the block (no graph), the ControlNet embeds ``pose`` (its ``controlnet_cond``) once and reuses
        the embedding at every later call with that same tensor: it depends on neither the noisy input nor the
        timestep. Other inputs are embedded as usual. Nothing changes outside the block."""
        embedding = self.controlnet.controlnet_cond_embedding
        if not enabled or torch.is_grad_enabled() or self.fsdp_units or "forward" in vars(embedding):
            yield
            return
        forward, memo = embedding.forward, []

        def reuse(cond: torch.Tensor) -> torch.Tensor:
            if cond is not pose:
                return forward(cond)
            if not memo:
                memo.append(forward(cond))
            return memo[0]

        embedding.forward = reuse
        try:
            yield
        finally:
            del embedding.forward

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
