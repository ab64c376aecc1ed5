"""The xformers attention path on CPU, through an SDPA stand-in for ``xformers.ops.memory_efficient_attention``.

xformers is not installed here and has no CPU kernels. The stand-in takes xformers' layout
(B, N, heads, d), asserts what the real kernel needs from us (batch <= 65,535, never a dense
``attn_bias``), counts its calls and computes with ``F.scaled_dot_product_attention``.
``bench/gpu_check.sh`` runs the real kernel on a GPU.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch.utils._python_dispatch import TorchDispatchMode

from fgbg.models import attention as attn_mod
from fgbg.models.attention import FgbgAttnProcessor, ReferenceBank, attention
from fgbg.models.module import COND_KEYS
from tests.test_model import build, random_batch

XFORMERS_GRID_LIMIT = 65_535


class StandIn:
    """``xformers.ops.memory_efficient_attention`` computed by SDPA, checking its inputs."""

    def __init__(self):
        self.calls = 0
        self.batches: list[int] = []

    def memory_efficient_attention(self, query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None):
        assert attn_bias is None, "a dense attention bias reached xformers"
        assert query.ndim == key.ndim == value.ndim == 4, "xformers layout is (B, N, heads, d)"
        assert query.shape[0] <= min(attn_mod.XFORMERS_MAX_BATCH, XFORMERS_GRID_LIMIT), query.shape
        assert key.shape == value.shape and key.shape[0] == query.shape[0] and key.shape[2:] == query.shape[2:]
        assert query.stride(-1) == key.stride(-1) == value.stride(-1) == 1
        self.calls += 1
        self.batches.append(query.shape[0])
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dropout_p=p, scale=scale
        )
        return out.transpose(1, 2)


@pytest.fixture
def xformers(monkeypatch) -> StandIn:
    """Install the stand-in as ``xformers`` / ``xformers.ops`` and report CUDA as available."""
    stand_in = StandIn()
    pkg, ops = types.ModuleType("xformers"), types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = stand_in.memory_efficient_attention
    pkg.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", pkg)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attn_mod, "_cuda_available", lambda: True)
    return stand_in


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- the whole model


def model_pair(xformers: StandIn, **overrides):
    """The tiny model with the SDPA backend and the same weights with the xformers backend."""
    sdpa = build(attention_backend="sdpa", **overrides)
    xf = build(attention_backend="xformers", **overrides)
    assert xformers.calls == 0, "building the model ran an xformers kernel (on CPU)"
    assert xf.referencenet.unused_parameter_names == sdpa.referencenet.unused_parameter_names
    xf.load_state_dict(sdpa.state_dict())
    return sdpa, xf


@pytest.mark.parametrize("stage", ["image", "video"])
def test_xformers_training_step_equals_sdpa(xformers, monkeypatch, stage):
    # cfg_dropout.reference=0.5 and seed 6 drop the reference of one sample only in both stages: the mixed
    # keep/drop reader path (the seed depends on the order of the module's draws; the assert below says if not).
    sdpa, xf = model_pair(xformers, stage=stage, **{"cfg_dropout.reference": 0.5})
    keeps, inner = [], attn_mod.reference_attention

    def spy(q, k, v, k_ref, v_ref, keep, backend):
        keeps.append(None if keep is None else keep.tolist())
        return inner(q, k, v, k_ref, v_ref, keep, backend)

    monkeypatch.setattr(attn_mod, "reference_attention", spy)
    batch = random_batch(b=2, t=3)
    results = {}
    for name, model in (("sdpa", sdpa), ("xformers", xf)):
        model.train()
        calls = xformers.calls
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        loss = model.compute_loss(batch, generator=torch.Generator().manual_seed(6))["loss"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        results[name] = (loss.detach(), grads, params)
        assert (xformers.calls > calls) == (name == "xformers")
    assert [True, False] in keeps or [False, True] in keeps, keeps  # a mixed batch went through the bank
    (l0, g0, p0), (l1, g1, p1) = results["sdpa"], results["xformers"]
    assert g0.keys() == g1.keys() and g0
    diffs = max_diff(l0, l1), max(max_diff(g0[n], g1[n]) for n in g0), max(max_diff(p0[n], p1[n]) for n in p0)
    print(f"{stage}: |loss|, |grad|, |param after step| max differences {diffs}")
    assert max(diffs) < 1e-5


def test_xformers_sampling_with_reference_guidance_equals_sdpa(xformers):
    sdpa, xf = model_pair(xformers)
    batch = random_batch(b=2, t=3)
    cond = {k: batch[k] for k in COND_KEYS}
    outs = []
    for model in (sdpa, xf):
        model.eval()
        calls = xformers.calls
        with torch.no_grad():
            ctx = model.encode_reference(batch["reference"], batch["reference_mask"])
            outs.append(
                model.sample_clip(
                    ctx, cond, num_inference_steps=2, guidance={"reference": 2.0}, generator=torch.Generator()
                )
            )
        assert (xformers.calls > calls) == (model is xf)
    print(f"sampled clip max difference {max_diff(*outs)}")
    assert max_diff(*outs) < 1e-5


# ---------------------------------------------------------------- the batch limit


def test_xformers_batch_is_split_at_the_limit(xformers, monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(20, 5, 2, 4, generator=g) for _ in range(3))
    whole = attention(q, k, v, "xformers")
    assert xformers.batches == [20]
    monkeypatch.setattr(attn_mod, "XFORMERS_MAX_BATCH", 7)
    split = attention(q, k, v, "xformers")
    assert xformers.batches == [20, 7, 7, 6]
    torch.testing.assert_close(split, whole, atol=0, rtol=0)
    torch.testing.assert_close(attention(q, k, v, "sdpa"), whole, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- a dropped reference


def reader_layer(backend: str, c: int = 16, heads: int = 2, seed: int = 0):
    """A diffusers self-attention layer whose processor reads a ReferenceBank."""
    torch.manual_seed(seed)
    layer = Attention(query_dim=c, heads=heads, dim_head=c // heads).eval()
    bank = ReferenceBank()
    layer.set_processor(FgbgAttnProcessor("attn1", backend, bank, "read"))
    return layer, bank


def masked_reference(layer: Attention, hidden: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The former computation: keys [self, bank] for every sample, the bank keys of dropped samples masked."""
    f = hidden.shape[0] // ref.shape[0]
    context = torch.cat([hidden, ref.repeat_interleave(f, 0)], 1)
    projected = (layer.to_q(hidden), layer.to_k(context), layer.to_v(context))
    q, k, v = (x.unflatten(-1, (layer.heads, -1)).transpose(1, 2) for x in projected)
    key_keep = torch.cat(
        [torch.ones(hidden.shape[:2], dtype=torch.bool), keep.repeat_interleave(f)[:, None].expand(-1, ref.shape[1])],
        1,
    )
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_keep[:, None, None, :])
    return layer.to_out[1](layer.to_out[0](out.transpose(1, 2).flatten(2)))


@pytest.mark.parametrize("backend", ["sdpa", "xformers"])
def test_dropped_reference_equals_the_masked_softmax_and_plain_self_attention(xformers, backend):
    b, f, n, m, c = 4, 3, 6, 5, 16
    layer, bank = reader_layer(backend, c)
    g = torch.Generator().manual_seed(1)
    hidden, ref = torch.randn(b * f, n, c, generator=g), torch.randn(b, m, c, generator=g)
    keep = torch.tensor([True, False, False, True])
    with torch.no_grad():
        with bank.reading({"attn1": ref}, keep):
            ours = layer(hidden)
        bank.clear()  # the read state outlives its block (for backward's recomputation) until cleared
        plain = layer(hidden)  # no bank: plain self-attention
        with bank.reading({"attn1": ref}):
            with_bank = layer(hidden)
        old = masked_reference(layer, hidden, ref, keep)
    rows = keep.repeat_interleave(f)
    print(f"{backend}: vs masked softmax {max_diff(ours, old)}, dropped vs plain {max_diff(ours[~rows], plain[~rows])}")
    assert max_diff(ours, old) < 1e-6
    assert max_diff(ours[~rows], plain[~rows]) < 1e-6
    assert max_diff(ours[rows], with_bank[rows]) < 1e-6
    assert max_diff(with_bank[~rows], plain[~rows]) > 1e-3  # the bank does change what the dropped rows would see
    if backend == "xformers":
        assert xformers.batches == [2 * f, 2 * f, b * f, b * f]  # kept and dropped groups: one unmasked call each


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor (bytes) any op creates while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("backend", ["sdpa", "xformers"])
def test_dropped_reference_builds_no_dense_bias(xformers, backend):
    b, f, heads, d, n, m = 2, 4, 8, 8, 256, 256
    layer, bank = reader_layer(backend, heads * d, heads)
    hidden, ref = torch.randn(b * f, n, heads * d), torch.randn(b, m, heads * d)
    bias_bytes = b * f * heads * n * (n + m) * 4  # (B*F, heads, Nq, Nk) fp32: 32 MiB
    with torch.no_grad(), bank.reading({"attn1": ref}, torch.tensor([True, False])):
        with LargestAllocation() as seen:
            layer(hidden)
        with LargestAllocation() as control:  # the recorder does see a bias-sized tensor
            torch.zeros(b * f, heads, n, n + m)
    assert xformers.calls == (2 if backend == "xformers" else 0)
    assert control.largest == bias_bytes == 32 * 2**20
    print(f"largest allocation {seen.largest} B, dense bias {bias_bytes} B")
    assert seen.largest <= bias_bytes / 32, (seen.largest, bias_bytes)  # q/k/v-sized tensors only
