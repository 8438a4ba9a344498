"""Attention over packed variable-length sequences.

Packed layout: all sequences concatenated along dim 0, `q_THD` of shape (total, heads, head_dim);
`cu_seqlens` int32 (S+1,) prefix sums starting at 0; `max_seqlen` a host-side int. No token attends
across a sequence boundary. `resolve_attention_backend` picks the implementation (models resolve
their configured name once per device type and dtype, then pass the result to `packed_attention`):

- `cudnn`        cuDNN SDPA on ragged (THD) tensors through nvidia-cudnn-frontend (CUDA, fp16/bf16;
                 `pip install .[cudnn]`); forward/backward graphs cached per bucketed shape (`attention_cudnn`)
- `flash_attn`   flash_attn_varlen_func (CUDA, when flash-attn is installed)
- `torch_varlen` torch.nn.attention.varlen.varlen_attn (CUDA, torch >= 2.10)
- `nested`       SDPA on nested jagged tensors (no padding FLOPs on CUDA's fused kernels)
- `bucketed`     sequences sorted by length and grouped; one SDPA call per group, padded only to
                 the group's longest (a key-padding mask where lengths differ)
- `padded`       pad to (S, max_seqlen), SDPA with a key-padding mask (the reference's behaviour)

`auto` takes, on CUDA at fp16/bf16: cudnn > flash_attn > torch_varlen > nested > padded. cuDNN's
Hopper SDPA kernels outrun FlashAttention-2 (the flash-attn package and torch's varlen_attn both
run FA2 kernels; flash-attn pads head dim 80 to 96), and all three skip padding entirely; nested
jagged SDPA also skips padding but pays per-call nested-tensor overhead; padded computes
S x max_seqlen^2 scores. At fp32 on CUDA (no fused varlen kernel) it takes nested. On CPU it takes
`bucketed`: measured on the cpu_demo and ViT-tiny (128 px, 8 frames) context lengths, nested SDPA
is 5-30x slower than padding (jagged SDPA falls back to a per-sequence math path on CPU) while
per-sequence calls win once lengths spread and padding wins for short sequences; `bucketed`
chooses between these per batch with a cost model (see `bucket_plan`).

`dense_attention` handles full-length rectangular batches (the target encoder) with plain SDPA; a
packed batch whose sequences all have one length (the predictor's context + targets) takes the same
path, since a (S, L) batch is exact there. `sdpa` picks SDPA's kernel (`auto`: torch's choice; or
one of `SDPA_BACKENDS`, e.g. `cudnn`, which must then support the call).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vjepa_scale.attention_cudnn import cudnn_varlen_attention

BACKENDS = ("cudnn", "flash_attn", "torch_varlen", "nested", "bucketed", "padded")
FUSED_BACKENDS = ("cudnn", "flash_attn", "torch_varlen")  # CUDA kernels taking fp16/bf16 only
SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


@dataclass
class Packed:
    """Where a packed token set sits: sequence bounds and each token's position in its clip.

    Per-forward caches (shared by every layer of one forward) live here: the int64 offsets, the
    host-side lengths and bucket plan of `bucketed`, the per-token sequence ids of `cudnn`.
    """

    cu_seqlens: torch.Tensor  # int32 (S+1,)
    max_seqlen: int  # host-side
    token_ids: Optional[torch.Tensor] = None  # int64 (total,), raster position n within its clip
    offsets: Optional[torch.Tensor] = field(default=None, repr=False)  # int64 twin of cu_seqlens
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    # Mixed shapes: token_ids are rows of the concatenated position tables of these grids (MaskBatch.grids)
    grids: Optional[list] = None

    def __post_init__(self):
        # One int64 copy per forward: nested tensors key their ragged dim on this object, so
        # activation recompute must see the same one.
        if self.offsets is None:
            self.offsets = self.cu_seqlens.to(torch.int64)

    def cached(self, key, build):
        """`build()` once per Packed (so once per forward, not per layer)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def host_lengths(self) -> list[int]:
        """Sequence lengths as Python ints (a device sync on CUDA; free on CPU)."""
        return self.cached("lengths", lambda: (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist())

    def token_positions(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's sequence id and position within it, int64 (T,) each (`token_positions`)."""
        return self.cached(("positions", T), lambda: token_positions(self.offsets, T))


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


@functools.cache
def _has_cudnn_frontend() -> bool:
    """nvidia-cudnn-frontend importable and torch built with cuDNN (the frontend uses torch's)."""
    if importlib.util.find_spec("cudnn") is None or not torch.backends.cudnn.is_available():
        return False
    try:
        import cudnn

        return hasattr(cudnn, "pygraph")
    except (ImportError, OSError):
        return False


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on `device`, in `auto`'s order of preference for it."""
    if torch.device(device).type != "cuda":
        return ["bucketed", "padded", "nested"]
    out = []
    if _has_cudnn_frontend():
        out.append("cudnn")
    if _has_flash_attn():
        out.append("flash_attn")
    if _has_torch_varlen():
        out.append("torch_varlen")
    return out + ["nested", "padded", "bucketed"]


_NEEDS = {"cudnn": "CUDA and the nvidia-cudnn-frontend package (`pip install .[cudnn]`)",
          "flash_attn": "CUDA and the flash-attn package (`pip install flash-attn --no-build-isolation`)",
          "torch_varlen": "CUDA and torch >= 2.10"}


def resolve_attention_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """Map a configured backend (`auto` or a name) to one that can run here, or raise."""
    avail = available_backends(device)
    if name == "auto":
        if dtype == torch.float32:  # fused varlen kernels take only fp16/bf16
            avail = [b for b in avail if b not in FUSED_BACKENDS]
        return avail[0]
    if name not in BACKENDS:
        raise ValueError(f"model.attention_backend: unknown backend '{name}' (choose from auto, {', '.join(BACKENDS)})")
    if name not in avail:
        need = f"; it needs {_NEEDS[name]}" if name in _NEEDS else ""
        raise RuntimeError(f"model.attention_backend: '{name}' is not available on {device}{need} "
                           f"(available: {avail})")
    if name == "cudnn" and dtype not in (None, torch.float16, torch.bfloat16):
        raise RuntimeError(f"model.attention_backend: 'cudnn' takes fp16/bf16 tensors, got {dtype} "
                           f"(train in bf16, or pick another backend)")
    return name


def describe_attention_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """`resolve_attention_backend`'s choice for the run's banner, with the reason for `auto`'s pick:
    `auto -> bucketed (cpu: the fused varlen kernels need CUDA)`."""
    chosen = resolve_attention_backend(name, device, dtype)
    if name != "auto":
        return chosen
    device = torch.device(device)
    if device.type != "cuda":
        why = f"{device.type}: the fused varlen kernels need CUDA"
    elif dtype == torch.float32:
        why = "fp32: the fused varlen kernels take fp16/bf16 only"
    else:
        missing = [b for b in FUSED_BACKENDS if b not in available_backends(device)]
        why = f"preferred: {' > '.join(BACKENDS[:4])}" + (f"; not available: {', '.join(missing)}" if missing else "")
    return f"auto -> {chosen} ({why})"


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
    if backend == "cudnn":
        return cudnn_varlen_attention(q_THD, k_THD, v_THD, packed)
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q_THD, k_THD, v_THD, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    if backend == "torch_varlen":
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q_THD, k_THD, v_THD, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    if backend == "nested":
        return _nested_attention(q_THD, k_THD, v_THD, packed.offsets, max_seqlen)
    if backend == "bucketed":
        return bucketed_attention(q_THD, k_THD, v_THD, packed)
    return _padded_packed(q_THD, k_THD, v_THD, packed)


def token_positions(offsets: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each packed token's sequence id and position within it, int64 (T,) each; `offsets` (S+1,)
    the sequence bounds (prefix sums from 0)."""
    lengths = offsets[1:] - offsets[:-1]
    seq_id = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths, output_size=T)
    return seq_id, torch.arange(T, device=offsets.device) - offsets[seq_id].long()


def padded_layout(cu_seqlens: torch.Tensor, max_seqlen: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot, mask) of the padded (S, max_seqlen) grid: each packed token's row-major slot (T,) and
    the key-padding mask (S, 1, 1, L). Layers of one forward share it (`Packed.cached`)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    valid_SL = torch.arange(max_seqlen, device=cu_seqlens.device)[None, :] < lengths[:, None]  # (S, L)
    seq_id, pos = token_positions(cu_seqlens, T)
    # keys only: padded queries see valid keys and are dropped
    return seq_id * max_seqlen + pos, valid_SL[:, None, None, :]


def _padded_sdpa(q_THD, k_THD, v_THD, slot_T: torch.Tensor, mask_S11L: torch.Tensor, S: int, L: int) -> torch.Tensor:
    """Scatter the packed tokens into an (S, L) grid at `slot_T`, SDPA with the key-padding mask,
    gather back to (T, H, Dh)."""
    _, H, Dh = q_THD.shape

    def pad(x_THD):
        out = x_THD.new_zeros(S * L, H, Dh).index_copy(0, slot_T, x_THD)
        return out.view(S, L, H, Dh).transpose(1, 2)  # (S, H, L, Dh)

    o = F.scaled_dot_product_attention(pad(q_THD), pad(k_THD), pad(v_THD), attn_mask=mask_S11L)
    return o.transpose(1, 2).reshape(S * L, H, Dh).index_select(0, slot_T)


def padded_attention(q_THD, k_THD, v_THD, cu_seqlens: torch.Tensor, max_seqlen: int,
                     layout: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Reference path: scatter into (S, max_seqlen) with a key-padding mask, SDPA, gather back."""
    slot, mask = layout if layout is not None else padded_layout(cu_seqlens, max_seqlen, q_THD.shape[0])
    return _padded_sdpa(q_THD, k_THD, v_THD, slot, mask, cu_seqlens.numel() - 1, max_seqlen)


def _padded_packed(q_THD, k_THD, v_THD, packed: Packed) -> torch.Tensor:
    """`padded_attention` with the layout built once per `Packed` (per forward), not per layer."""
    T = q_THD.shape[0]
    layout = packed.cached(("padded", T), lambda: padded_layout(packed.cu_seqlens, packed.max_seqlen, T))
    return padded_attention(q_THD, k_THD, v_THD, packed.cu_seqlens, packed.max_seqlen, layout)


def _nested_attention(q_THD, k_THD, v_THD, offsets: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """SDPA over nested jagged tensors: each sequence attends only to itself, no padding."""

    def nest(x_THD):
        nt = torch.nested.nested_tensor_from_jagged(x_THD.contiguous(), offsets, max_seqlen=max_seqlen)  # (S, j, H, Dh)
        return nt.transpose(1, 2)  # (S, H, j, Dh)

    o = F.scaled_dot_product_attention(nest(q_THD), nest(k_THD), nest(v_THD))
    return o.transpose(1, 2).values()


# ---------------------------------------------------------------------------------------------
# bucketed: length-sorted groups, each padded only to its own longest sequence
# ---------------------------------------------------------------------------------------------

# One SDPA call (forward + backward, with its gathers) costs about as much as this many
# score elements (query x key x head x head-dim products): on the 2-core CPU machine a call costs
# ~0.1 ms of overhead and a score element ~0.3 ns (tools/bench.py --suite attention).
SDPA_CALL_COST = 3e5


def bucket_plan(lengths: list[int], width: int, call_cost: float = SDPA_CALL_COST) -> list[list[int]]:
    """Group sequence indices for `bucketed`: sorted by length (longest first), cut into
    contiguous groups minimising  sum over groups of  call_cost + n * L_max^2 * width  (width =
    heads x head_dim), by dynamic programming over the cut points. One group is the padded path,
    one group per length the per-sequence path; empty sequences are left out."""
    order = sorted((i for i, L in enumerate(lengths) if L > 0), key=lambda i: -lengths[i])
    Ls = [lengths[i] for i in order]
    alpha = call_cost / max(width, 1)  # a call in units of L^2
    best, cut = [0.0] + [math.inf] * len(Ls), [0] * (len(Ls) + 1)
    for j in range(1, len(Ls) + 1):
        for i in range(j):  # group Ls[i:j], padded to Ls[i]
            c = best[i] + alpha + (j - i) * Ls[i] * Ls[i]
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], len(Ls)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


@dataclass
class _Bucket:
    n: int  # sequences
    length: int  # the group's longest
    tokens: int  # real tokens
    slot: Optional[torch.Tensor]  # int64 (tokens,): row of each token in the (n * length) padded grid; None if all equal
    mask: Optional[torch.Tensor]  # bool (n, 1, 1, length) key-padding mask; None if all equal


def _bucket_layout(lengths: list[int], width: int, device: torch.device):
    """(perm, inv, buckets): the token permutation into group order (None if identity) and each
    group; None when one group holds every sequence (that is the padded path)."""
    groups = bucket_plan(lengths, width, SDPA_CALL_COST)
    if len(groups) == 1 and len(groups[0]) == len(lengths):
        return None
    starts = [0]
    for L in lengths[:-1]:
        starts.append(starts[-1] + L)
    perm = torch.cat([torch.arange(starts[i], starts[i] + lengths[i]) for g in groups for i in g])
    buckets = []
    for g in groups:
        ls = torch.tensor([lengths[i] for i in g])
        n, Lm, tokens = len(g), int(ls[0]), int(ls.sum())
        if tokens == n * Lm:
            buckets.append(_Bucket(n, Lm, tokens, None, None))
            continue
        offsets = torch.zeros(n + 1, dtype=torch.int64)
        offsets[1:] = ls.cumsum(0)
        slot, mask = padded_layout(offsets, Lm, tokens)
        buckets.append(_Bucket(n, Lm, tokens, slot.to(device), mask.to(device)))
    if torch.equal(perm, torch.arange(perm.numel())):
        return None, None, buckets
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return perm.to(device), inv.to(device), buckets


def bucketed_attention(q_THD, k_THD, v_THD, packed: Packed) -> torch.Tensor:
    """Sequences grouped by `bucket_plan`; one SDPA per group (no mask where its lengths are equal)."""
    T, H, Dh = q_THD.shape
    lengths = packed.host_lengths()
    layout = packed.cached(("bucketed", H * Dh, q_THD.device), lambda: _bucket_layout(lengths, H * Dh, q_THD.device))
    if layout is None:  # one group of all: the padded path
        return _padded_packed(q_THD, k_THD, v_THD, packed)
    perm, inv, buckets = layout
    if perm is not None:
        q_THD, k_THD, v_THD = (x.index_select(0, perm) for x in (q_THD, k_THD, v_THD))
    sizes = [b.tokens for b in buckets]
    outs = []
    for b, q, k, v in zip(buckets, q_THD.split(sizes), k_THD.split(sizes), v_THD.split(sizes)):
        if b.slot is None:
            o = F.scaled_dot_product_attention(*(x.view(b.n, b.length, H, Dh).transpose(1, 2) for x in (q, k, v)))
            outs.append(o.transpose(1, 2).reshape(b.tokens, H, Dh))
        else:
            outs.append(_padded_sdpa(q, k, v, b.slot, b.mask, b.n, b.length))
    o_THD = torch.cat(outs)
    return o_THD if inv is None else o_THD.index_select(0, inv)


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
