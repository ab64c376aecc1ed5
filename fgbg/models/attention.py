"""Attention processors: backend choice (SDPA or xformers) and the ReferenceNet bank.

diffusers lets every ``Attention`` layer delegate its computation to a *processor*
(``model.set_attn_processor({name: processor})``). We use one processor class,
``FgbgAttnProcessor``, everywhere, so the backend is chosen in one place, and two
roles on the spatial self-attention (``attn1``) layers:

- ``write`` (ReferenceNet): store the layer's normed input hidden states
  ``(B, M, C)`` into a shared ``ReferenceBank`` under the layer's module name;
- ``read`` (denoising UNet): append the bank tokens stored under the *same* module
  name, repeated over the frames of each sample, to the keys and values. Samples
  whose reference is dropped (classifier-free guidance) are attended in a separate
  call over their own tokens only, which is exactly the unconditional layer (what a
  softmax with the bank keys masked out computes) without ever building a mask.

Layers are paired by name (``down_blocks.0.attentions.0.transformer_blocks.0.attn1``),
which is identical in ``UNet2DConditionModel`` and ``UNetMotionModel``.

Tensor layout inside this module is xformers' (and diffusers' dispatcher's)
``(batch, tokens, heads, head_dim)``: the projections reshape to it without a copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "xformers")
# xformers' memory_efficient_attention launches a CUDA grid whose batch dimension may not pass 65,535
# (open xformers issue); the motion modules' temporal attention has batch B*h*w (4,096 per clip at a
# 64x64 latent), so larger batches are split into chunks of at most this many.
XFORMERS_MAX_BATCH = 65_535


def _cuda_available() -> bool:
    """Whether a CUDA GPU is usable (one place, so tests can patch it without patching torch)."""
    return torch.cuda.is_available()


def check_backend(backend: str) -> None:
    """Raise a clear error when ``backend`` is unknown or cannot run here."""
    if backend not in BACKENDS:
        raise ValueError(f"model.attention_backend={backend!r}: expected one of {BACKENDS}")
    if backend == "xformers":
        if not _cuda_available():
            raise RuntimeError(
                "model.attention_backend='xformers' needs a CUDA GPU (xformers kernels do not run on CPU); "
                "use model.attention_backend=sdpa here"
            )
        try:
            import xformers.ops  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                "model.attention_backend='xformers' but xformers is not installed: pip install -e '.[xformers]'"
            ) from e


# Why not diffusers.models.attention_dispatch.dispatch_attention_fn (diffusers 0.42.1, same layout, has an
# "xformers" backend): it decides at diffusers' import time whether xformers is usable (package metadata,
# ``_CAN_USE_XFORMERS_ATTN``) and binds ``xformers.ops`` then, so the backend cannot be chosen per model nor
# tested on CPU with a stand-in; it does not split batches past 65,535; and a key mask becomes a dense
# (B, heads, Nq, Nk) bias there too. Our needs (two backends, no mask) fit in the few lines below.
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Multi-head attention without a mask. q: (B, Nq, heads, d); k, v: (B, Nk, heads, d). Returns (B, Nq, heads, d)."""
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    import xformers.ops as xops

    if q.shape[0] <= XFORMERS_MAX_BATCH:
        return xops.memory_efficient_attention(q, k, v)
    chunks = zip(*(x.split(XFORMERS_MAX_BATCH) for x in (q, k, v)), strict=True)
    return torch.cat([xops.memory_efficient_attention(*c) for c in chunks])


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_ref: torch.Tensor,
    v_ref: torch.Tensor,
    keep: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    """Self-attention whose keys and values also hold each sample's bank tokens, unless its reference is dropped.

    q, k, v: (B*F, N, heads, d), sample-major, frame-minor (the UNet's own tokens);
    k_ref, v_ref: (B, M, heads, d), projected bank tokens, shared by the F frames of a sample;
    keep: (B,) bool, False where the reference is dropped (None: kept everywhere).
    Kept samples attend over ``[own tokens, bank tokens]`` (N + M keys), dropped ones over their own
    N tokens: one attention call per group, no mask, outputs put back in sample order. Returns (B*F, N, heads, d).
    """
    b = k_ref.shape[0]
    f = q.shape[0] // b

    def rows(x: torch.Tensor, idx: slice | torch.Tensor) -> torch.Tensor:  # the F rows of the samples idx
        return x.unflatten(0, (b, f))[idx].flatten(0, 1)

    def joined(own: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:  # (n*F, N + M, heads, d)
        # One write per element: the bank is broadcast over the frames straight into the buffer
        # (``torch.cat`` with ``repeat_interleave`` would first build the F copies, then copy them again).
        n, m = bank.shape[0], own.shape[1]
        out = own.new_empty(n, f, m + bank.shape[1], *own.shape[2:])
        out[:, :, :m] = own.unflatten(0, (n, f))
        out[:, :, m:] = bank[:, None]
        return out.flatten(0, 1)

    def with_bank(idx: slice | torch.Tensor) -> torch.Tensor:
        k_all, v_all = joined(rows(k, idx), k_ref[idx]), joined(rows(v, idx), v_ref[idx])
        return attention(rows(q, idx), k_all, v_all, backend)

    kept = None if keep is None else keep.nonzero()[:, 0]  # one host sync per layer, as any mask test would
    if kept is None or len(kept) == b:
        return with_bank(slice(None))
    if len(kept) == 0:
        return attention(q, k, v, backend)
    dropped = (~keep).nonzero()[:, 0]
    parts = [with_bank(kept), attention(rows(q, dropped), rows(k, dropped), rows(v, dropped), backend)]
    order = torch.argsort(torch.cat([kept, dropped]))
    return torch.cat([p.unflatten(0, (-1, f)) for p in parts])[order].flatten(0, 1)


class ReferenceBank:
    """Reference tokens shared between ReferenceNet (writer) and the denoiser (reader).

    tokens: module name -> (B, M, C) normed inputs of ReferenceNet's ``attn1`` layers.
    keep:   (B,) bool, False where the reference is dropped for that sample.
    ``mode`` is "write" while ReferenceNet runs, "read" while the denoiser runs
    with a reference, None otherwise (the reader then behaves as plain attention).

    The read state outlives its ``reading`` block, until the next ``reading`` / ``writing`` / ``clear``:
    activation checkpointing (``callbacks.gradient_checkpointing`` on ``denoiser.unet``) recomputes the
    denoiser's blocks during backward, after the block has exited, and the recomputation must attend to
    the same bank tokens with the same ``keep`` (the tokens are alive then anyway: the graph holds them).
    """

    def __init__(self) -> None:
        self.tokens: dict[str, torch.Tensor] = {}
        self.keep: torch.Tensor | None = None
        self.mode: str | None = None
        # Projected bank keys/values, reused while ``reuse_projections`` is on (generation only, see there):
        # module name -> (key of what they were computed from, k_ref, v_ref).
        self.projected: dict[str, tuple[tuple, torch.Tensor, torch.Tensor]] = {}
        self.reuse = False
        self.projections_computed = 0  # how many (layer, tokens) projections ran (tests count cache misses)

    @contextmanager
    def writing(self) -> Iterator[dict[str, torch.Tensor]]:
        """Collect tokens into a fresh dict, yielded (filled once the block exits)."""
        self.tokens, self.mode, self.projected = {}, "write", {}
        try:
            yield self.tokens
        finally:
            self.mode = None

    @contextmanager
    def reuse_projections(self, enabled: bool = True) -> Iterator[None]:
        """Within the block, readers reuse the keys/values they projected from the same bank tokens earlier
        (in this block or an earlier one: across sampling steps and clips), instead of projecting again.

        Only where nothing is differentiated (``torch.is_grad_enabled()`` False; with a graph the readers
        always project, so gradients reach ``to_k``/``to_v`` and the bank). An entry is used only if it was
        computed from the very same token tensor (identity and in-place version), through the same ``to_k``,
        ``to_v`` (and ``norm_k``) parameters at the same versions and storage (an optimizer step, a
        ``load_state_dict`` or ``.data`` swap all invalidate it) and with the same dtype and autocast state.
        A new reference (new tokens) therefore projects afresh; ``writing`` and ``clear`` drop all entries.
        """
        before, self.reuse = self.reuse, enabled
        try:
            yield
        finally:
            self.reuse = before

    @contextmanager
    def reading(self, tokens: dict[str, torch.Tensor] | None, keep: torch.Tensor | None = None) -> Iterator[None]:
        """Let the denoiser read ``tokens`` (None: no reference at all) in the block and in backward's
        recomputation after it (the state is kept until the next ``reading``/``writing``/``clear``)."""
        self.tokens, self.keep, self.mode = (tokens or {}), keep, ("read" if tokens else None)
        yield

    def clear(self) -> None:
        """Drop the tokens and projections (a finished training step; ``FgbgModule.on_train_batch_end``)."""
        self.tokens, self.keep, self.mode, self.projected = {}, None, None, {}

    def __deepcopy__(self, memo):  # a model copy (EMA, Lightning) shares no bank state
        return ReferenceBank()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


class FgbgAttnProcessor:
    """Attention for diffusers ``Attention`` layers with a backend choice and optional bank role.

    Handles what SD-1.5-shaped UNets, ControlNets and AnimateDiff motion modules use:
    3-D hidden states (B, N, C), self or cross attention, optional q/k norms,
    residual connection and output rescaling. Anything else raises.
    """

    def __init__(self, name: str, backend: str = "sdpa", bank: ReferenceBank | None = None, role: str | None = None):
        if role not in (None, "read", "write"):
            raise ValueError(f"role must be None, 'read' or 'write', got {role!r}")
        if role is not None and bank is None:
            raise ValueError(f"processor {name!r} with role {role!r} needs a ReferenceBank")
        self.name, self.backend, self.bank, self.role = name, backend, bank, role

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError(
                f"{self.name}: FgbgAttnProcessor supports (B, N, C) inputs without spatial/group norm, "
                f"got shape {tuple(hidden_states.shape)}"
            )
        if attention_mask is not None:
            raise ValueError(f"{self.name}: attention masks from the caller are not supported by FgbgAttnProcessor")
        residual = hidden_states
        ref = None
        if encoder_hidden_states is None:
            context = hidden_states
            if self.role == "write" and self.bank.mode == "write":
                self.bank.tokens[self.name] = hidden_states
            elif self.role == "read" and self.bank.mode == "read" and self.name in self.bank.tokens:
                ref = self.bank.tokens[self.name]  # (B_ref, M, C)
                if hidden_states.shape[0] % ref.shape[0]:
                    raise ValueError(
                        f"{self.name}: batch {hidden_states.shape[0]} is not a multiple of the bank's {ref.shape[0]}"
                    )
        else:
            context = (
                attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            )

        def project(linear, x: torch.Tensor, norm=None) -> torch.Tensor:  # (B, N, C) -> (B, N, heads, d)
            x = linear(x).unflatten(-1, (attn.heads, -1))
            return x if norm is None else norm(x)

        q = project(attn.to_q, hidden_states, attn.norm_q)
        k, v = project(attn.to_k, context, attn.norm_k), project(attn.to_v, context)
        if ref is None:
            out = attention(q, k, v, self.backend)
        else:  # bank tokens projected once per sample, not per frame (and once per reference in generation)
            k_ref, v_ref = self._bank_keys_values(attn, ref, hidden_states.dtype, project)
            out = reference_attention(q, k, v, k_ref, v_ref, self.bank.keep, self.backend)
        out = out.flatten(2).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _bank_keys_values(self, attn, tokens: torch.Tensor, dtype: torch.dtype, project) -> tuple[torch.Tensor, ...]:
        """(k_ref, v_ref), each (B_ref, M, heads, d): the bank tokens through ``to_k``/``to_v``, reused from
        ``bank.projected`` when ``bank.reuse`` is on, no graph is built and nothing they depend on has changed
        (see ``ReferenceBank.reuse_projections``)."""
        bank = self.bank
        if not bank.reuse or torch.is_grad_enabled():
            ref = tokens.to(dtype)
            return project(attn.to_k, ref, attn.norm_k), project(attn.to_v, ref)
        layers = [m for m in (attn.to_k, attn.to_v, attn.norm_k) if m is not None]
        key = (_tensor_state(tokens), dtype, _autocast_state(tokens.device.type))
        key += tuple(_tensor_state(p) for m in layers for p in m.parameters())
        hit = bank.projected.get(self.name)
        if hit is not None and _same(hit[0], key):
            return hit[1], hit[2]
        ref = tokens.to(dtype)
        k_ref, v_ref = project(attn.to_k, ref, attn.norm_k), project(attn.to_v, ref)
        bank.projected[self.name] = (key, k_ref, v_ref)
        bank.projections_computed += 1
        return k_ref, v_ref


def _tensor_state(t: torch.Tensor) -> tuple:
    """What a cached projection of ``t`` depends on: the tensor itself (compared by identity), its in-place
    version (inference tensors have none: they cannot change outside inference mode), storage and dtype."""
    version = -1 if t.is_inference() else t._version
    return (t, version, t.data_ptr(), t.dtype, tuple(t.shape))


def _autocast_state(device_type: str) -> tuple:
    enabled = torch.is_autocast_enabled(device_type)
    return (enabled, torch.get_autocast_dtype(device_type) if enabled else None)


def _same(a, b) -> bool:
    """Key items equal; tensors by identity (``==`` on tensors compares values)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


def is_spatial_self_attention(name: str) -> bool:
    """True for processor names of spatial ``attn1`` layers (not motion modules)."""
    return name.endswith("attn1.processor") and "motion_modules" not in name


def set_processors(model, backend: str, bank: ReferenceBank | None = None, role: str | None = None) -> list[str]:
    """Give every attention layer of a diffusers model an ``FgbgAttnProcessor``.

    Spatial self-attention layers get ``role`` (with ``bank``); the others none.
    Returns the module names (without ``.processor``) that got the role.
    """
    procs, with_role = {}, []
    for name in model.attn_processors:
        layer = name.removesuffix(".processor")
        if role is not None and is_spatial_self_attention(name):
            procs[name] = FgbgAttnProcessor(layer, backend, bank, role)
            with_role.append(layer)
        else:
            procs[name] = FgbgAttnProcessor(layer, backend)
    model.set_attn_processor(procs)
    return with_role
