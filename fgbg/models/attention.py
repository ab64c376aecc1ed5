"""Attention processors: backend choice (SDPA or xformers) and the ReferenceNet bank.

diffusers lets every ``Attention`` layer delegate its computation to a *processor*
(``model.set_attn_processor({name: processor})``). We use one processor class,
``FgbgAttnProcessor``, everywhere, so the backend is chosen in one place, and two
roles on the spatial self-attention (``attn1``) layers:

- ``write`` (ReferenceNet): store the layer's normed input hidden states
  ``(B, M, C)`` into a shared ``ReferenceBank`` under the layer's module name;
- ``read`` (denoising UNet): append the bank tokens stored under the *same* module
  name, repeated over the frames of each sample, to the keys and values. Samples
  whose reference is dropped (classifier-free guidance) have those keys masked
  out of the softmax, not zeroed, so they see exactly the unconditional layer.

Layers are paired by name (``down_blocks.0.attentions.0.transformer_blocks.0.attn1``),
which is identical in ``UNet2DConditionModel`` and ``UNetMotionModel``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "xformers")


def check_backend(backend: str) -> None:
    """Raise a clear error when ``backend`` is unknown or cannot run here."""
    if backend not in BACKENDS:
        raise ValueError(f"model.attention_backend={backend!r}: expected one of {BACKENDS}")
    if backend == "xformers":
        if not torch.cuda.is_available():
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


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_keep: torch.Tensor | None, backend: str
) -> torch.Tensor:
    """Multi-head attention. q: (B, heads, Nq, d); k, v: (B, heads, Nk, d).

    key_keep: (B, Nk) bool, False for keys a query must not see (or None: all).
    Returns (B, heads, Nq, d).
    """
    if backend == "sdpa":
        mask = None if key_keep is None else key_keep[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    import xformers.ops as xops

    bias = None
    if key_keep is not None:
        b, h, nq, _ = q.shape
        nk = k.shape[2]
        # xformers wants the bias's last dimension allocated in multiples of 8: pad, then slice.
        bias = torch.zeros(b, h, nq, (nk + 7) // 8 * 8, dtype=q.dtype, device=q.device)[..., :nk]
        bias.masked_fill_(~key_keep[:, None, None, :], float("-inf"))
    out = xops.memory_efficient_attention(
        q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(), attn_bias=bias
    )
    return out.transpose(1, 2)


class ReferenceBank:
    """Reference tokens shared between ReferenceNet (writer) and the denoiser (reader).

    tokens: module name -> (B, M, C) normed inputs of ReferenceNet's ``attn1`` layers.
    keep:   (B,) bool, False where the reference is dropped for that sample.
    ``mode`` is "write" while ReferenceNet runs, "read" while the denoiser runs
    with a reference, None otherwise (the reader then behaves as plain attention).
    """

    def __init__(self) -> None:
        self.tokens: dict[str, torch.Tensor] = {}
        self.keep: torch.Tensor | None = None
        self.mode: str | None = None

    @contextmanager
    def writing(self) -> Iterator[dict[str, torch.Tensor]]:
        """Collect tokens into a fresh dict, yielded (filled once the block exits)."""
        self.tokens, self.mode = {}, "write"
        try:
            yield self.tokens
        finally:
            self.mode = None

    @contextmanager
    def reading(self, tokens: dict[str, torch.Tensor] | None, keep: torch.Tensor | None = None) -> Iterator[None]:
        """Let the denoiser read ``tokens`` (None: no reference at all) during the block."""
        self.tokens, self.keep, self.mode = (tokens or {}), keep, ("read" if tokens else None)
        try:
            yield
        finally:
            self.tokens, self.keep, self.mode = {}, None, None

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
        batch = hidden_states.shape[0]
        key_keep = None
        if encoder_hidden_states is None:
            context = hidden_states
            if self.role == "write" and self.bank.mode == "write":
                self.bank.tokens[self.name] = hidden_states
            elif self.role == "read" and self.bank.mode == "read" and self.name in self.bank.tokens:
                ref = self.bank.tokens[self.name]  # (B_ref, M, C)
                if batch % ref.shape[0]:
                    raise ValueError(f"{self.name}: batch {batch} is not a multiple of the bank's {ref.shape[0]}")
                frames = batch // ref.shape[0]
                ref = ref.repeat_interleave(frames, dim=0)
                context = torch.cat([hidden_states, ref.to(hidden_states.dtype)], dim=1)
                if self.bank.keep is not None and not bool(self.bank.keep.all()):
                    keep_ref = self.bank.keep.repeat_interleave(frames)[:, None].expand(-1, ref.shape[1])
                    keep_self = torch.ones(batch, hidden_states.shape[1], dtype=torch.bool, device=ref.device)
                    key_keep = torch.cat([keep_self, keep_ref], dim=1)
        else:
            context = (
                attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            )

        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        head_dim = k.shape[-1] // heads
        q, k, v = (x.view(batch, -1, heads, head_dim).transpose(1, 2) for x in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = attention(q, k, v, key_keep, self.backend)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


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
