"""Attention over packed variable-length sequences.

Packed layout: all sequences concatenated along dim 0, `q_THD` of shape (total, heads, head_dim);
`cu_seqlens` int32 (S+1,) prefix sums starting at 0; `max_seqlen` a host-side int. No token attends
across a sequence boundary. `resolve_attention_backend` picks the implementation (models resolve
their configured name once per device type and dtype, then pass the result to `packed_attention`):

- `flash_attn`   flash_attn_varlen_func (CUDA, when flash-attn is installed)
- `torch_varlen` torch.nn.attention.varlen.varlen_attn (CUDA, torch >= 2.10)
- `nested`       SDPA on nested jagged tensors (CPU and CUDA; no padding FLOPs on fused kernels)
- `padded`       pad to (S, max_seqlen), SDPA with a key-padding mask (the reference's behaviour)

`dense_attention` handles full-length rectangular batches (the target encoder) with plain SDPA; a
packed batch whose sequences all have one length (the predictor's context + targets) takes the same
path, since a (S, L) batch is exact there. `sdpa` picks SDPA's kernel (`auto`: torch's choice; or
one of `SDPA_BACKENDS`, e.g. `cudnn`, which must then support the call).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = ("flash_attn", "torch_varlen", "nested", "padded")
SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


@dataclass
class Packed:
    """Where a packed token set sits: sequence bounds and each token's position in its clip."""

    cu_seqlens: torch.Tensor  # int32 (S+1,)
    max_seqlen: int  # host-side
    token_ids: Optional[torch.Tensor] = None  # int64 (total,), raster position n within its clip
    offsets: Optional[torch.Tensor] = field(default=None, repr=False)  # int64 twin of cu_seqlens

    def __post_init__(self):
        # One int64 copy per forward: nested tensors key their ragged dim on this object, so
        # activation recompute must see the same one.
        if self.offsets is None:
            self.offsets = self.cu_seqlens.to(torch.int64)


@functools.cache
def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def _has_torch_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on `device`, best first."""
    cuda = torch.device(device).type == "cuda"
    out = []
    if cuda and _has_flash_attn():
        out.append("flash_attn")
    if cuda and _has_torch_varlen():
        out.append("torch_varlen")
    out += ["nested", "padded"]
    return out


def resolve_attention_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """Map a configured backend (`auto` or a name) to one that can run here, or raise."""
    avail = available_backends(device)
    if name == "auto":
        if dtype == torch.float32:  # flash kernels take only fp16/bf16
            avail = [b for b in avail if b not in ("flash_attn", "torch_varlen")]
        return avail[0]
    if name not in BACKENDS:
        raise ValueError(f"model.attention_backend: unknown backend '{name}' (choose from auto, {', '.join(BACKENDS)})")
    if name not in avail:
        raise RuntimeError(f"model.attention_backend: '{name}' is not available on {device} "
                           f"(available: {avail})")
    return name


def varlen_attention(q_THD: torch.Tensor, k_THD: torch.Tensor, v_THD: torch.Tensor,
                     cu_seqlens: torch.Tensor, max_seqlen: int, backend: str = "auto") -> torch.Tensor:
    """Self-attention within each packed sequence; returns (total, heads, head_dim). `backend` as
    configured (`auto` or a name), resolved here for this call."""
    backend = resolve_attention_backend(backend, q_THD.device, q_THD.dtype)
    return packed_attention(q_THD, k_THD, v_THD, Packed(cu_seqlens, max_seqlen), backend)


def packed_attention(q_THD: torch.Tensor, k_THD: torch.Tensor, v_THD: torch.Tensor, packed: Packed,
                     backend: str, sdpa: str = "auto") -> torch.Tensor:
    """`varlen_attention` on a `Packed` layout (reuses its int64 offsets across layers); `backend` is
    an already-resolved name (`resolve_attention_backend`)."""
    cu_seqlens, max_seqlen = packed.cu_seqlens, packed.max_seqlen
    T, H, Dh = q_THD.shape
    if T == 0:
        return torch.empty_like(q_THD)
    S = cu_seqlens.numel() - 1
    if T == S * max_seqlen:  # lengths <= max_seqlen summing to S * max_seqlen: all equal, no padding
        def rect(x_THD):
            return x_THD.view(S, max_seqlen, H, Dh)

        return dense_attention(rect(q_THD), rect(k_THD), rect(v_THD), sdpa).reshape(T, H, Dh)
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q_THD, k_THD, v_THD, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    if backend == "torch_varlen":
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q_THD, k_THD, v_THD, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    if backend == "nested":
        return _nested_attention(q_THD, k_THD, v_THD, packed.offsets, max_seqlen)
    return padded_attention(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen)


def padded_attention(q_THD, k_THD, v_THD, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Reference path: scatter into (S, max_seqlen) with a key-padding mask, SDPA, gather back."""
    S = cu_seqlens.numel() - 1
    T, H, Dh = q_THD.shape
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    pos = torch.arange(max_seqlen, device=q_THD.device)
    valid_SL = pos[None, :] < lengths[:, None]  # (S, L)
    # Row-major slot of each packed token inside the padded (S, L) grid.
    seq_id = torch.repeat_interleave(torch.arange(S, device=q_THD.device), lengths, output_size=T)
    slot = seq_id * max_seqlen + (torch.arange(T, device=q_THD.device) - cu_seqlens[:-1].long()[seq_id])

    def pad(x_THD):
        out = x_THD.new_zeros(S * max_seqlen, H, Dh)
        out = out.index_copy(0, slot, x_THD)
        return out.view(S, max_seqlen, H, Dh).transpose(1, 2)  # (S, H, L, Dh)

    mask = valid_SL[:, None, None, :]  # keys only; padded queries see valid keys and are dropped
    o = F.scaled_dot_product_attention(pad(q_THD), pad(k_THD), pad(v_THD), attn_mask=mask)
    return o.transpose(1, 2).reshape(S * max_seqlen, H, Dh).index_select(0, slot)


def _nested_attention(q_THD, k_THD, v_THD, offsets: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """SDPA over nested jagged tensors: each sequence attends only to itself, no padding."""

    def nest(x_THD):
        nt = torch.nested.nested_tensor_from_jagged(x_THD.contiguous(), offsets, max_seqlen=max_seqlen)  # (S, j, H, Dh)
        return nt.transpose(1, 2)  # (S, H, j, Dh)

    o = F.scaled_dot_product_attention(nest(q_THD), nest(k_THD), nest(v_THD))
    return o.transpose(1, 2).values()


_SDPA_KERNELS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def _sdpa_context(sdpa: str):
    """Context restricting SDPA to the named kernel (`auto`: no restriction)."""
    if sdpa == "auto":
        return contextlib.nullcontext()
    if sdpa not in _SDPA_KERNELS:
        raise ValueError(f"model.sdpa_backend: unknown SDPA kernel '{sdpa}' (choose from {', '.join(SDPA_BACKENDS)})")
    return sdpa_kernel([_SDPA_KERNELS[sdpa]])


def dense_attention(q_BNHD: torch.Tensor, k_BNHD: torch.Tensor, v_BNHD: torch.Tensor,
                    sdpa: str = "auto") -> torch.Tensor:
    """Full-length attention for rectangular batches (B, N, H, Dh) -> (B, N, H, Dh)."""
    with _sdpa_context(sdpa):
        o = F.scaled_dot_product_attention(q_BNHD.transpose(1, 2), k_BNHD.transpose(1, 2), v_BNHD.transpose(1, 2))
    return o.transpose(1, 2)
