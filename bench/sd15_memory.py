"""SD-1.5 at its true size: public-format weights, one training step of each stage, memory and FLOPs.

    python bench/sd15_memory.py                       # everything below (about 30-40 min on 2 CPU cores)
    python bench/sd15_memory.py write --out /weights  # only the public-format folders (random weights)
    python bench/sd15_memory.py predict               # only the meta-device prediction at 512x512 x 16

Three parts, written to ``bench/results/sd15_memory.json`` (``--json``) with a markdown table:

1. **Public formats.** Random weights with the published shapes, saved as users download them: the
   SD-1.5 UNet and VAE (``save_pretrained``, ``stable-diffusion-v1-5/{unet,vae}``, runwayml's configs), a
   CLIP ViT-L/14 vision tower with its ``preprocessor_config.json`` (``clip-vit-large-patch14``), and the
   AnimateDiff motion modules v2 and v3 both as diffusers ``MotionAdapter`` folders
   (``animatediff-motion-adapter-v1-5-{2,3}``) and as original single files (``mm_sd_v15_v2.ckpt``,
   ``v3_sd15_mm.ckpt``: the published key names, v3 without the mid-block module). Each adapter file is read
   back through ``fgbg.models.unets.load_motion_adapter`` and compared with what was written.
2. **Measured on this CPU** (reduced size, ``--size`` 256, ``--frames`` 8, batch 1): ``model=fgbg_sd15`` is
   built from those folders exactly as the docs' command does (Hydra compose + instantiate), then one
   training step (loss + backward) of each stage, fp32 and bf16 autocast, gradient checkpointing off and on,
   each in a fresh process. Memory per component comes from torch's ``MemTracker`` (every tensor the step
   creates, by module and kind: activations kept for backward, temporaries), and the process's peak RSS is
   recorded as an independent total. The machine has 24 GiB, and the full model with its gradients and
   AdamW moments needs more, so gradients are released as soon as each is accumulated (as a fused
   optimizer would) and their bytes, like the optimizer's, are counted from the parameter lists.
3. **Predicted at 512x512 x 16 frames** on the meta device: the same model and step with shapes only
   (``MemTracker`` and ``torch.utils.flop_counter`` over one step plus an AdamW step; data-dependent
   branches take the "every condition kept" path; attention through the memory-efficient SDPA kernel, as
   on a GPU). The meta model is checked against part 2 at the reduced size (activation bytes). From it:
   peak memory per GPU for DDP and for FSDP2 on 8 GPUs (sharded parameters, gradients and optimizer state;
   two units gathered at a time; the VAE whole), with AdamW or 8-bit AdamW, checkpointing off or on, and the
   FLOPs per step with the step time an H100-class GPU would take at 40% of its 989 TFLOP/s bf16 dense peak.

``bench/gpu_check.sh`` runs ``python bench/sd15_memory.py gpu`` on a GPU: the real step time, MFU and peak
memory at 512x512 x 16 frames (sdpa and xformers).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "sd15_memory.json"
GIB = 2**30
H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM bf16 dense (no sparsity); the H200 has the same tensor cores
MFU = 0.40
GPU_MEMORY = 80 * 10**9  # bytes of an 80 GB card

# Published configurations (runwayml/stable-diffusion-v1-5 unet/ and vae/ config.json; openai/clip-vit-large-patch14
# vision_config; guoyww/animatediff-motion-adapter-v1-5-2 and -3, whose v3 has no mid-block motion module as in
# AnimateDiff's configs/inference/inference-v3.yaml).
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True,
    "freq_shift": 0, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2, "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu",
    "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 768, "attention_head_dim": 8,
}  # fmt: skip
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}  # fmt: skip
CLIP_L14_VISION = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
}  # fmt: skip
ADAPTER_V2 = {
    "block_out_channels": [320, 640, 1280, 1280], "motion_layers_per_block": 2,
    "motion_mid_block_layers_per_block": 1, "motion_num_attention_heads": 8, "motion_norm_num_groups": 32,
    "motion_max_seq_length": 32, "use_motion_mid_block": True,
}  # fmt: skip
ADAPTER_V3 = ADAPTER_V2 | {"use_motion_mid_block": False}
# The same layout at a few MB (tests/test_sd15_docs.py): shapes that fit model=fgbg_sd15's fixed keys
# (cross_attention_dim 768 read by the image encoder, 4 latent channels, 4 UNet levels).
TINY = {
    "unet": SD15_UNET | {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "norm_num_groups": 8,
                         "attention_head_dim": 2, "sample_size": 8},
    "vae": SD15_VAE | {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
                       "sample_size": 64},
    "clip": CLIP_L14_VISION | {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "image_size": 56, "projection_dim": 32},
    "adapter": {"block_out_channels": [32, 32, 64, 64], "motion_layers_per_block": 1, "motion_num_attention_heads": 2,
                "motion_norm_num_groups": 8},
}  # fmt: skip
FOLDERS = {
    "sd15": "stable-diffusion-v1-5",
    "clip": "clip-vit-large-patch14",
    "adapter_v2": "animatediff-motion-adapter-v1-5-2",
    "adapter_v3": "animatediff-motion-adapter-v1-5-3",
    "single_v2": "mm_sd_v15_v2.ckpt",
    "single_v3": "v3_sd15_mm.ckpt",
}
COMPONENTS = ("latent", "image_encoder", "referencenet", "controlnet", "track_encoder", "denoiser")


# ---------------------------------------------------------------------------------------------- public formats
def animatediff_original_layout(state: dict, max_len: int) -> dict:
    """diffusers ``MotionAdapter`` state -> the key names of AnimateDiff's published files (``mm_sd_v15_v2.ckpt``):
    ``motion_modules.<j>.temporal_transformer.*``, ``attention_blocks.<a>``, ``norms.<a>``, ``ff_norm`` and the
    sinusoidal ``pos_encoder.pe`` tables the original stores (tests/test_loading.py checks these names against
    the published module structure)."""
    import torch

    out = {}
    for key, value in state.items():
        if key.endswith("pos_embed.pe"):  # diffusers' own positional table; the files hold pos_encoder.pe instead
            continue
        k = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
        k = k.replace(".norm1", ".norms.0").replace(".norm2", ".norms.1").replace(".norm3", ".ff_norm")
        k = k.replace(".attn1", ".attention_blocks.0").replace(".attn2", ".attention_blocks.1")
        out[k] = value.contiguous()
        head = re.match(r"(.*\.attention_blocks\.\d+)\.to_q\.weight$", k)
        if head:
            out[f"{head.group(1)}.pos_encoder.pe"] = torch.zeros(1, max_len, value.shape[1])
    return out


def write_public_weights(out: Path, tiny: bool = False) -> dict[str, str]:
    """Random weights with SD-1.5's, CLIP ViT-L/14's and AnimateDiff's published shapes (``tiny``: the same layout
    at a few MB) in their public formats under ``out``; returns the paths by ``FOLDERS`` key. Each motion-module
    form is loaded back with ``load_motion_adapter`` and must equal what was written."""
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from fgbg.models.unets import load_motion_adapter

    out = Path(out)
    paths = {k: str(out / v) for k, v in FOLDERS.items()}
    torch.manual_seed(0)
    UNet2DConditionModel(**(TINY["unet"] if tiny else SD15_UNET)).save_pretrained(out / FOLDERS["sd15"] / "unet")
    gc.collect()
    AutoencoderKL(**(TINY["vae"] if tiny else SD15_VAE)).save_pretrained(out / FOLDERS["sd15"] / "vae")
    clip_cfg = TINY["clip"] if tiny else CLIP_L14_VISION
    CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_cfg)).save_pretrained(paths["clip"])
    size = clip_cfg["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        paths["clip"]
    )
    gc.collect()
    for version, cfg in (("v2", ADAPTER_V2), ("v3", ADAPTER_V3)):
        cfg = cfg | (TINY["adapter"] if tiny else {})
        adapter = MotionAdapter(**cfg)
        with torch.no_grad():  # a fresh adapter zeroes its outputs: give every tensor a value to check
            for p in adapter.parameters():
                p.normal_(0, 0.02)
        adapter.save_pretrained(paths[f"adapter_{version}"])
        state = adapter.state_dict()
        torch.save(animatediff_original_layout(state, cfg["motion_max_seq_length"]), paths[f"single_{version}"])
        for kind, kwargs in (
            ("folder", {"pretrained": paths[f"adapter_{version}"]}),
            ("single file", {"single_file": paths[f"single_{version}"], "single_file_config": paths[f"adapter_{version}"]}),
        ):  # fmt: skip
            loaded = load_motion_adapter(**kwargs).state_dict()
            bad = [k for k, v in state.items() if not torch.equal(loaded[k], v)]
            if bad or set(loaded) != set(state):
                raise RuntimeError(
                    f"AnimateDiff {version} {kind}: {len(bad)} tensors differ after loading, e.g. {bad[:3]}"
                )
        del adapter, state
        gc.collect()
    return paths


def user_overrides(paths: dict[str, str], stage: str) -> list[str]:
    """``model=fgbg_sd15`` as docs/scaling.md runs it: stage image with the v2 adapter folder, stage video with the
    v3 original single file."""
    over = ["model=fgbg_sd15", f"model.stage={stage}", f"model.unet.pretrained={paths['sd15']}",
            f"model.image_encoder.pretrained={paths['clip']}"]  # fmt: skip
    if stage == "image":
        return over + [f"model.motion_adapter.pretrained={paths['adapter_v2']}"]
    return over + [
        f"model.motion_adapter.single_file={paths['single_v3']}",
        f"model.motion_adapter.single_file_config={paths['adapter_v3']}",
    ]


# ---------------------------------------------------------------------------------------------- one step, measured
class AllKept:
    """On the meta device a tensor has no values: answer the model's data-dependent reads (``bool(keep.any())``,
    ``nonzero``) as if every condition were kept and every link present (the branch that runs every network),
    and route attention through the memory-efficient SDPA kernel (what a GPU runs; the meta math fallback would
    materialise every attention matrix). ``torch.autocast`` has no meta kernels (and a function-level stand-in
    would not reach the recomputation of checkpointed blocks in backward), so bf16 runs put the model and
    inputs in bf16, and an op that meets a float32 tensor made inside the model computes in bf16 too."""

    def __enter__(self):
        import torch
        import torch.nn.functional as F
        from torch.utils._python_dispatch import TorchDispatchMode

        keep_fp32 = {torch.ops.aten.linalg_solve_ex.default, torch.ops.aten._linalg_solve_ex.default}

        class Answer(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                x = args[0] if args else None
                if isinstance(x, torch.Tensor) and x.device.type == "meta":
                    if func is torch.ops.aten._local_scalar_dense.default:
                        return True if x.dtype == torch.bool else 1
                    if func is torch.ops.aten.nonzero.default:
                        grid = torch.meshgrid(*[torch.arange(n, device="meta") for n in x.shape], indexing="ij")
                        return torch.stack(grid, -1).reshape(-1, x.dim())
                    floats = {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
                    if floats == {torch.float32, torch.bfloat16} and func not in keep_fp32:
                        # a bf16 model (the stand-in for autocast) meets a float32 tensor made inside the model
                        args = tuple(a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.dtype == torch.float32
                                     else a for a in args)  # fmt: skip
                return func(*args, **(kwargs or {}))

        sdpa = F.scaled_dot_product_attention

        def efficient(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
            if q.device.type != "meta":
                return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)
            grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
            bias = None if attn_mask is None else attn_mask.to(q.dtype)
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, bias, grad, dropout_p, is_causal, scale=scale
            )[0]

        self._restore = (F, sdpa)
        F.scaled_dot_product_attention = efficient
        self._mode = Answer()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        F, sdpa = self._restore
        F.scaled_dot_product_attention = sdpa


def make_batch(size: int, frames: int, batch: int):
    """One training batch of the datamodule at ``size`` x ``size``, ``frames`` frames (fgbg-synth clips)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from fgbg.synth import SynthConfig, synthesize
    from fgbg.train import CONF_DIR

    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthConfig(output=tmp, num_videos=batch, videos_per_shard=batch, seed=0, height=size, width=size,
                               num_frames=frames))  # fmt: skip
        (shard,) = Path(tmp).glob("train-*.tar")
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[
                "experiment=synthetic_tiny_image", f"data.train_shards={shard}", f"data.resolution={size}",
                f"data.batch_size={batch}", f"data.clip_len={frames}", "data.num_workers=0",
            ])  # fmt: skip
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        return next(iter(datamodule.train_dataloader()))


def build_model(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from fgbg.train import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=synthetic_tiny_image", *overrides])
    return instantiate(cfg.model)


def parameter_counts(model) -> dict:
    """Parameters per component, all and trainable (counts; bytes follow from the dtypes chosen)."""
    out = {}
    for comp in COMPONENTS:
        params = list(getattr(model, comp).parameters())
        out[comp] = {
            "parameters": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
        }
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("parameters", "trainable")}
    return out


def fsdp_units(model) -> dict[str, int]:
    """Parameters each FSDP2 unit gathers at once under ``model.fsdp``'s defaults: every
    ``BasicTransformerBlock`` of the sharded components is a unit, each component's remaining parameters another."""
    from diffusers.models.attention import BasicTransformerBlock

    units = {}
    for comp in ("referencenet", "controlnet", "track_encoder", "image_encoder", "denoiser"):
        module = getattr(model, comp)
        inner = set()
        for name, sub in module.named_modules():
            if isinstance(sub, BasicTransformerBlock) and not any(name.startswith(u + ".") for u in inner):
                inner.add(name)
                units[f"{comp}.{name}"] = sum(p.numel() for p in sub.parameters())
        in_blocks = {id(p) for n in inner for p in module.get_submodule(n).parameters()}
        units[comp] = sum(p.numel() for p in module.parameters() if id(p) not in in_blocks)
    return units


class LiveBytes:
    """Every tensor storage the step creates, alive or freed, by kind: ``Activation`` (made in forward),
    ``Temp`` (made in backward: activation gradients, recomputed checkpointed blocks), ``Gradient`` (parameter
    gradients, re-tagged when accumulated) and ``Optstate``; the running total's peak and its split. A light
    stand-in for torch's ``MemTracker`` (whose per-module snapshots cost minutes per step on this CPU): one
    dispatch-mode hook per op, storages freed through weak references. Parameters made before are not counted
    (their bytes come from the parameter lists). ``watch(module, name)`` records what stays alive after the
    module's forward calls (activations kept for backward, outputs) and the peak while it runs."""

    def __init__(self):
        self.kind = "Activation"
        self.live: dict[int, tuple[int, str]] = {}
        self.current: dict[str, int] = {}
        self.total = self.peak = self.work_peak = 0
        self.peak_by_kind: dict[str, int] = {}
        self.modules: dict[str, dict] = {}
        self._open: list[list] = []
        self._known: set[int] = set()

    def known(self, tensors) -> None:
        """Storages that exist before the step (parameters, buffers, the batch): views of them are not new memory."""
        self._known |= {t.untyped_storage()._cdata for t in tensors}

    def __enter__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        tracker.add(t, tracker.kind)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)

    def add(self, t, kind: str) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self._known:
            return
        if key in self.live:
            if kind == "Gradient" and self.live[key][1] != kind:  # a gradient made in backward: re-tag it
                n, old = self.live[key]
                self.current[old] -= n
                self.current[kind] = self.current.get(kind, 0) + n
                self.live[key] = (n, kind)
            return
        n = st.nbytes()
        self.live[key] = (n, kind)
        self.current[kind] = self.current.get(kind, 0) + n
        self.total += n
        weakref.finalize(st, self._free, key)
        if self.total > self.peak:
            self.peak = self.total
            self.peak_by_kind = dict(self.current)
        self.work_peak = max(self.work_peak, self.current.get("Activation", 0) + self.current.get("Temp", 0))
        for entry in self._open:
            entry[1] = max(entry[1], self.total)

    def _free(self, key: int) -> None:
        n, kind = self.live.pop(key)
        self.current[kind] -= n
        self.total -= n

    def watch(self, module, name: str) -> None:
        stats = self.modules.setdefault(name, {"activations_kept_after_forward": 0, "peak_in_module": 0, "calls": 0})

        def pre(mod, args):
            self._open.append([self.current.get("Activation", 0), self.total])

        def post(mod, args, out):
            start, peak = self._open.pop()
            if self.kind == "Activation":  # not the recomputation of a checkpointed block in backward
                stats["activations_kept_after_forward"] += self.current.get("Activation", 0) - start
                stats["calls"] += 1
            stats["peak_in_module"] = max(stats["peak_in_module"], peak)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def one_step(model, batch, device, precision: str, checkpointing: bool, optimizer: bool, release_grads: bool) -> dict:
    """Loss + backward (+ AdamW step): bytes by kind and component (``LiveBytes``) and FLOPs (flop_counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fgbg.callbacks.gradient_checkpointing import GradientCheckpointing

    meta = torch.device(device).type == "meta"
    model.train()
    if checkpointing:
        GradientCheckpointing(enabled=True).setup(None, model, "fit")
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, foreach=False) if optimizer else None
    data = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    bf16 = precision == "bf16-mixed"
    if meta and bf16:  # autocast has no meta kernels: the networks in bf16 instead (see AllKept)
        from torch.utils._pytree import tree_map_only

        model.to(torch.bfloat16)

        def to_bf16(module, args, kwargs):  # the data stay float32 (as under bf16-mixed); the networks take bf16
            cast = lambda t: t.to(torch.bfloat16) if t.dtype == torch.float32 else t  # noqa: E731
            return tree_map_only(torch.Tensor, cast, (args, kwargs))

        for comp in COMPONENTS[1:]:
            getattr(model, comp).register_forward_pre_hook(to_bf16, with_kwargs=True)
    tracker = LiveBytes()
    tracker.known([*model.parameters(), *model.buffers(), *(v for v in data.values() if isinstance(v, torch.Tensor))])
    for comp in COMPONENTS[1:]:
        tracker.watch(getattr(model, comp), comp)
    tracker.watch(model.latent.vae.encoder, "latent")

    def grad_done(p):
        tracker.add(p.grad, "Gradient")
        if release_grads:  # as a fused optimizer would: each gradient is gone once accumulated (counted, not held)
            p.grad = None

    for p in trainable:
        p.register_post_accumulate_grad_hook(grad_done)
    rss_before = _rss()
    t0 = time.perf_counter()
    with tracker, FlopCounterMode(display=False) as flops, AllKept() if meta else contextlib.nullcontext():
        with (
            torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
            if bf16 and not meta
            else contextlib.nullcontext()
        ):
            loss = model.compute_loss(data, dropout=False)["loss"]
        flops_forward = flops.get_total_flops()
        after_forward = dict(tracker.current)
        tracker.kind = "Temp"
        loss.backward()
        if opt is not None:
            tracker.kind = "Optstate"
            opt.step()
            opt.zero_grad(set_to_none=False)
    seconds = time.perf_counter() - t0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_op = {str(op): n for op, n in flops.get_flop_counts().get("Global", {}).items()}
    return {
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "peak_bytes": tracker.peak,
        "peak_by_kind": tracker.peak_by_kind,
        "activations_and_temporaries_peak": tracker.work_peak,
        "after_forward_by_kind": after_forward,
        "components": tracker.modules,
        "flops": flops.get_total_flops(),
        "flops_forward": flops_forward,
        "flops_attention": sum(n for op, n in per_op.items() if "attention" in op),
        "seconds": round(seconds, 2),
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": rss_peak,
        "loss_finite": bool(meta or torch.isfinite(loss).item()),
    }


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> dict:
    """One measured variant in this (fresh) process."""
    import torch

    torch.manual_seed(0)
    batch = make_batch(args.size, args.frames if args.stage == "video" else 2, args.batch)
    if args.device == "meta":
        over = ["model=fgbg_sd15", f"model.stage={args.stage}", "model.unet.pretrained=null",
                "model.latent.pretrained=null", "model.image_encoder.pretrained=null"]  # fmt: skip
        with torch.device("meta"):
            model = build_model(over)
        load_s = 0.0
    else:
        t0 = time.perf_counter()
        model = build_model(user_overrides(json.loads(args.paths), args.stage)).to(args.device)
        load_s = time.perf_counter() - t0
    row = one_step(model, batch, args.device, args.precision, args.checkpointing,
                   optimizer=args.device == "meta", release_grads=args.device == "cpu")  # fmt: skip
    row |= {"stage": args.stage, "size": args.size, "frames": args.frames if args.stage == "video" else 1,
            "batch": args.batch, "device": args.device, "load_seconds": round(load_s, 1),
            "parameters": parameter_counts(model), "autocast_params": autocast_params(model)}  # fmt: skip
    if args.device == "meta":
        row["fsdp_units"] = fsdp_units(model)
    return row


def run_child(**kw) -> dict:
    cmd = [sys.executable, __file__, "child"]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in kw.items() if not isinstance(v, bool)]
    cmd += [f"--{k.replace('_', '-')}" for k, v in kw.items() if v is True]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gpu(args) -> dict:
    """On a GPU: step time, MFU and peak memory of stage video at ``--size`` x ``--frames`` (default 512 x 16 when
    run as ``gpu``), batch 1, bf16 autocast, checkpointing on, random weights, sdpa and xformers."""
    import torch

    size, frames = args.size or 512, args.frames or 16
    batch = make_batch(size, frames, 1)
    device = torch.device(args.device if args.device != "cpu" or not torch.cuda.is_available() else "cuda")
    rows = []
    for backend in ("sdpa", "xformers"):
        if backend == "xformers" and device.type != "cuda":
            continue
        if backend == "xformers" and importlib.util.find_spec("xformers") is None:
            # e.g. a GPU machine whose torch has no matching xformers build: keep the sdpa row, say why
            rows.append({"backend": backend, "skipped": "xformers is not installed on this machine"})
            continue
        torch.manual_seed(0)
        over = ["model=fgbg_sd15", "model.stage=video", "model.unet.pretrained=null", "model.latent.pretrained=null",
                "model.image_encoder.pretrained=null", f"model.attention_backend={backend}"]  # fmt: skip
        model = build_model(over).to(device)
        from torch.utils.flop_counter import FlopCounterMode

        from fgbg.callbacks.gradient_checkpointing import GradientCheckpointing

        GradientCheckpointing(enabled=True).setup(None, model, "fit")
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        data = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        times, flops = [], 0
        for step in range(args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            counter = FlopCounterMode(display=False) if step == 0 else contextlib.nullcontext()
            t0 = time.perf_counter()
            with counter, torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model.compute_loss(data, dropout=False)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            if step == 0:
                flops = counter.get_total_flops()
        step_s = min(times[1:]) if len(times) > 1 else times[0]
        rows.append({"backend": backend, "size": size, "frames": frames, "step_seconds": round(step_s, 3),
                     "flops": flops, "mfu": flops / step_s / H100_BF16_DENSE,
                     "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
                     "device": torch.cuda.get_device_name() if device.type == "cuda" else str(device)})  # fmt: skip
        del model, opt
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"benchmark": "SD-1.5 stage video on a GPU", "rows": rows}


# ---------------------------------------------------------------------------------------------- prediction
def autocast_params(model) -> int:
    """Parameters of the networks a stage backpropagates through: bf16 autocast keeps a bf16 copy of each of their
    weights for backward (a trainable weight's copy in autocast's cache, a frozen one's saved by its product
    because the input needs a gradient), which the meta stand-in (a bf16 model) does not show."""
    mods = [model.denoiser]
    if model.stage == "image":
        mods += [model.referencenet, model.controlnet, model.track_encoder, model.image_encoder.head]
    return sum(p.numel() for m in mods for p in m.parameters())


def autocast_copies(row: dict) -> int:
    return 2 * row["autocast_params"] if row["precision"] == "bf16-mixed" else 0


def work_bytes(row: dict) -> int:
    """Activations and temporaries at their peak (bf16: plus autocast's weight copies), for a meta row."""
    return row["activations_and_temporaries_peak"] + autocast_copies(row)


def predict(row: dict, world: int = 8) -> dict:
    """Peak bytes per GPU for DDP and FSDP2 (``world`` GPUs) from one meta step, bf16-mixed as Lightning runs it.

    Counted from the parameter lists: fp32 parameters (all), fp32 gradients (trainable; DDP's buckets hold them,
    ``gradient_as_bucket_view``), AdamW's two fp32 moments or 8-bit AdamW's two bytes. Measured on the meta
    device: activations and temporaries at the step's peak. The optimizer step's own temporaries (foreach AdamW,
    torch's default on GPUs, makes one fp32 copy of the trainable parameters) come after backward has freed the
    activations, so the peak is the static bytes plus the larger of the two. FSDP2 (``model.fsdp`` defaults:
    every ``BasicTransformerBlock`` a unit, each component's other parameters one more, ``param_dtype`` null,
    so gathered in fp32): parameters, gradients and optimizer state of the sharded components divided by
    ``world``, the VAE whole, and the two largest units gathered at once (the running one and the prefetched)."""
    p = row["parameters"]
    n_all, n_train = p["total"]["parameters"], p["total"]["trainable"]
    params, grads = 4 * n_all, 4 * n_train
    work = work_bytes(row)
    step_temp = 4 * n_train
    out = {"activations_and_temporaries": work, "optimizer_step_temporaries": step_temp, "parameters_fp32": params,
           "gradients_fp32": grads, "adamw_states": 8 * n_train, "adamw8bit_states": 2 * n_train}  # fmt: skip
    unsharded = 4 * p["latent"]["parameters"]  # the VAE stays whole (encode/decode, frozen)
    units = sorted(row["fsdp_units"].values(), reverse=True)
    gathered = 4 * sum(units[:2])
    for opt in ("adamw", "adamw8bit"):
        states = out[f"{opt}_states"]
        out[f"ddp_{opt}"] = params + grads + states + max(work, step_temp)
        sharded = (params - unsharded + grads + states) / world
        out[f"fsdp{world}_{opt}"] = int(sharded + unsharded + gathered + max(work, step_temp / world))
    out["fsdp_gathered_units"] = gathered
    out["fsdp_largest_units"] = units[:2]
    return out


def table(result: dict) -> str:
    lines = ["| stage | size | checkpointing | activations + temporaries | DDP, AdamW | DDP, 8-bit AdamW | "
             "FSDP x8, AdamW | FSDP x8, 8-bit AdamW | TFLOP/step | H100 s/step at 40% MFU |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def gb(x):
        mark = "" if x <= GPU_MEMORY else " (over)"
        return f"{x / 1e9:.1f} GB{mark}"

    for row in result["predicted"]:
        pr = row["prediction"]
        lines.append(
            f"| {row['stage']} | {row['size']}x{row['size']} x {row['frames']} x batch {row['batch']} | "
            f"{'on' if row['gradient_checkpointing'] else 'off'} | {gb(pr['activations_and_temporaries'])} | "
            f"{gb(pr['ddp_adamw'])} | {gb(pr['ddp_adamw8bit'])} | {gb(pr['fsdp8_adamw'])} | "
            f"{gb(pr['fsdp8_adamw8bit'])} | {row['flops'] / 1e12:.0f} | {row['h100_seconds']:.2f} |"
        )
    return "\n".join(lines)


def cpu_work(row: dict) -> int:
    """A CPU row's activations and temporaries at their peak (gradients were released as they came)."""
    if "activations_and_temporaries_peak" in row:
        return row["activations_and_temporaries_peak"]
    kinds = row["peak_by_kind"]
    return kinds.get("Activation", 0) + kinds.get("Temp", 0)


def measured_table(result: dict) -> str:
    lines = ["| stage | precision | checkpointing | activations + temporaries, measured | meta model (+ autocast copies) | "
             "kept after forward: ReferenceNet / ControlNet / denoiser | peak RSS over before | step |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["measured"]:
        c = row["components"]
        act = " / ".join(f"{c.get(k, {}).get('activations_kept_after_forward', 0) / GIB:.2f}"
                         for k in ("referencenet", "controlnet", "denoiser"))  # fmt: skip
        meta = row.get("meta", {})
        copies = meta.get("autocast_weight_copies", 0)
        lines.append(
            f"| {row['stage']} ({row['size']}x{row['size']} x {row['frames']}) | {row['precision']} | "
            f"{'on' if row['gradient_checkpointing'] else 'off'} | {cpu_work(row) / GIB:.2f} GiB | "
            f"{meta.get('predicted', 0) / GIB:.2f} GiB" + (f" ({copies / GIB:.2f} copies)" if copies else "") + " | "
            f"{act} GiB | {(row['rss_peak_bytes'] - row['rss_before_bytes']) / GIB:.2f} GiB | {row['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="all", choices=["all", "write", "predict", "child", "gpu"])
    parser.add_argument("--out", type=Path, default=None, help="write: the folder for the public-format weights")
    parser.add_argument("--tiny", action="store_true", help="write: the same layout at a few MB (tests)")
    parser.add_argument("--size", type=int, default=None, help="image size (measured steps: 256; gpu: 512)")
    parser.add_argument("--frames", type=int, default=None, help="frames of stage video (measured steps: 8; gpu: 16)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    # child
    parser.add_argument("--stage", default="image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--paths", default="{}")
    parser.add_argument("--steps", type=int, default=3, help="gpu: steps timed (the first warms up)")
    args = parser.parse_args()
    if args.command != "gpu":
        args.size, args.frames = args.size or 256, args.frames or 8

    if args.command == "child":
        print(json.dumps(child(args)))
        return
    if args.command == "write":
        if args.out is None:
            parser.error("write needs --out FOLDER")
        print(json.dumps(write_public_weights(args.out, tiny=args.tiny), indent=2))
        return
    if args.command == "gpu":
        print(json.dumps(gpu(args), indent=1))
        return

    result = json.loads(args.json.read_text()) if args.json.exists() and args.command == "predict" else {}
    result |= {"benchmark": "SD-1.5 true size: memory and FLOPs", "machine": platform.machine(),
               "cpus": os.cpu_count(), "gpu_memory_bytes": GPU_MEMORY, "mfu": MFU,
               "peak_flops": H100_BF16_DENSE}  # fmt: skip
    variants = [("32-true", False), ("32-true", True), ("bf16-mixed", False), ("bf16-mixed", True)]
    if args.command == "all":
        with tempfile.TemporaryDirectory(dir=os.environ.get("FGBG_BENCH_TMP")) as tmp:
            t0 = time.perf_counter()
            paths = json.loads(subprocess.run([sys.executable, __file__, "write", "--out", tmp], check=True,
                                              capture_output=True, text=True).stdout)  # fmt: skip
            result["write_seconds"] = round(time.perf_counter() - t0, 1)
            result["files_bytes"] = {k: _size(v) for k, v in paths.items()}
            result["measured"] = []
            for stage in ("image", "video"):
                for precision, ckpt in variants:
                    print(f"measuring {stage} {precision} checkpointing={ckpt}", flush=True)
                    result["measured"].append(run_child(stage=stage, precision=precision, checkpointing=ckpt,
                                                        size=args.size, frames=args.frames, paths=json.dumps(paths),
                                                        device="cpu"))  # fmt: skip
                    _save(args.json, result)
    for row in result.get("measured", []):  # the meta model at the measured size: how well it predicts
        print(
            f"checking the meta model on {row['stage']} {row['precision']} {row['gradient_checkpointing']}", flush=True
        )
        meta = run_child(stage=row["stage"], precision=row["precision"], checkpointing=row["gradient_checkpointing"],
                         size=row["size"], frames=args.frames, device="meta")  # fmt: skip
        row["meta"] = {"activations_and_temporaries_peak": meta["activations_and_temporaries_peak"],
                       "autocast_weight_copies": autocast_copies(meta),
                       "predicted": meta["activations_and_temporaries_peak"] + autocast_copies(meta)}  # fmt: skip
    predicted = []
    for stage, batch in (("image", 1), ("image", 16), ("video", 1)):
        for ckpt in (False, True):
            print(f"predicting {stage} batch {batch} checkpointing={ckpt}", flush=True)
            row = run_child(stage=stage, precision="bf16-mixed", checkpointing=ckpt, size=512, frames=16,
                            batch=batch, device="meta")  # fmt: skip
            row["prediction"] = predict(row)
            row["h100_seconds"] = row["flops"] / (MFU * H100_BF16_DENSE)
            predicted.append(row)
    result["predicted"] = predicted
    _save(args.json, result)
    if "measured" in result:
        print(measured_table(result))
    print(table(result))


def _save(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def _size(path: str) -> int:
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


if __name__ == "__main__":
    main()
