"""Attention over packed variable-length sequences.

Packed layout: all sequences concatenated along dim 0, `q_THD` of shape (total, heads, head_dim);
`cu_seqlens` int32 (S+1,) prefix sums starting at 0; `max_seqlen` a host-side int. No token attends
across a sequence boundary. `resolve_attention_backend` picks the implementation (models resolve
their configured name once per device type and dtype, then pass the result to `packed_attention`):

- `cudnn`        cuDNN SDPA on ragged (THD) tensors through nvidia-cudnn-frontend (CUDA, fp16/bf16;
                 `pip install .[cudnn]`); forward/backward graphs cached per bucketed shape
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

import collections
import contextlib
import functools
import importlib.util
import math
import threading
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

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
          "flash_attn": "CUDA and the flash-attn package (`pip install .[flash]`)",
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


def padded_layout(cu_seqlens: torch.Tensor, max_seqlen: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot, mask) of the padded (S, max_seqlen) grid: each packed token's row-major slot (T,) and
    the key-padding mask (S, 1, 1, L). Layers of one forward share it (`Packed.cached`)."""
    S = cu_seqlens.numel() - 1
    device = cu_seqlens.device
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    valid_SL = torch.arange(max_seqlen, device=device)[None, :] < lengths[:, None]  # (S, L)
    seq_id = torch.repeat_interleave(torch.arange(S, device=device), lengths, output_size=T)
    slot = seq_id * max_seqlen + (torch.arange(T, device=device) - cu_seqlens[:-1].long()[seq_id])
    return slot, valid_SL[:, None, None, :]  # keys only; padded queries see valid keys and are dropped


def padded_attention(q_THD, k_THD, v_THD, cu_seqlens: torch.Tensor, max_seqlen: int,
                     layout: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Reference path: scatter into (S, max_seqlen) with a key-padding mask, SDPA, gather back."""
    S = cu_seqlens.numel() - 1
    T, H, Dh = q_THD.shape
    slot, mask = layout if layout is not None else padded_layout(cu_seqlens, max_seqlen, T)

    def pad(x_THD):
        out = x_THD.new_zeros(S * max_seqlen, H, Dh)
        out = out.index_copy(0, slot, x_THD)
        return out.view(S, max_seqlen, H, Dh).transpose(1, 2)  # (S, H, L, Dh)

    o = F.scaled_dot_product_attention(pad(q_THD), pad(k_THD), pad(v_THD), attn_mask=mask)
    return o.transpose(1, 2).reshape(S * max_seqlen, H, Dh).index_select(0, slot)


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
        seq = torch.repeat_interleave(torch.arange(n), ls)
        slot = seq * Lm + torch.arange(tokens) - (ls.cumsum(0) - ls)[seq]
        mask = (torch.arange(Lm)[None, :] < ls[:, None])[:, None, None, :]
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
            continue

        def pad(x_THD, b=b):
            out = x_THD.new_zeros(b.n * b.length, H, Dh).index_copy(0, b.slot, x_THD)
            return out.view(b.n, b.length, H, Dh).transpose(1, 2)  # (n, H, L, Dh)

        o = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=b.mask)
        outs.append(o.transpose(1, 2).reshape(b.n * b.length, H, Dh).index_select(0, b.slot))
    o_THD = torch.cat(outs)
    return o_THD if inv is None else o_THD.index_select(0, inv)


# ---------------------------------------------------------------------------------------------
# cudnn: cuDNN SDPA graphs on ragged (THD) tensors through nvidia-cudnn-frontend
# ---------------------------------------------------------------------------------------------

CUDNN_GRAPH_CACHE_SIZE = 64  # forward + backward graphs kept (least recently used evicted)


def bucket_seqlen(n: int) -> int:
    """Round a length (max_seqlen, or a total token count) up to its graph-cache bucket: a multiple
    of 64 up to 1024, then 8 steps per power of two (never more than 12.5% above `n`). A graph built
    for a bucket serves every call up to it: cuDNN reads the real lengths from the ragged offsets
    and per-sequence lengths, the bucket only sizes the descriptors (and the backward's dQ
    accumulator), so a training run builds a few dozen graphs, not one per step."""
    if n <= 1024:
        return max(64, -(-n // 64) * 64)
    step = 1 << (n.bit_length() - 4)  # n in [2^k, 2^(k+1)): steps of 2^(k-3)
    return -(-n // step) * step


class _LRU:
    """A bounded least-recently-used map (thread-safe builds) with hit/miss counters."""

    def __init__(self, maxsize: int):
        self.maxsize, self.hits, self.misses = maxsize, 0, 0
        self._d: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key, build):
        with self._lock:
            if key in self._d:
                self.hits += 1
                self._d.move_to_end(key)
                return self._d[key]
            self.misses += 1
            value = self._d[key] = build()
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.hits = self.misses = 0


_CUDNN_GRAPHS = _LRU(CUDNN_GRAPH_CACHE_SIZE)
_cudnn_tls = threading.local()


def cudnn_graph_cache() -> _LRU:
    """The process-wide cuDNN graph cache (size, hits, misses, `clear()`)."""
    return _CUDNN_GRAPHS


class _U:  # tensor uids inside our cuDNN graphs
    Q, K, V, O, STATS, DO, DQ, DK, DV = 1, 2, 3, 4, 5, 6, 7, 8, 9
    LEN = 10  # int32 (B, 1, 1, 1) sequence lengths (q and kv alike: self-attention)
    R_Q, R_K, R_V, R_O, R_STATS, R_DQ, R_DK, R_DV = 11, 12, 13, 14, 15, 16, 17, 18


def _cudnn_handle(device: torch.device):
    """This thread's cuDNN handle for `device`, on torch's current stream."""
    import cudnn

    handles = getattr(_cudnn_tls, "handles", None)
    if handles is None:
        handles = _cudnn_tls.handles = {}
    if device not in handles:
        with torch.cuda.device(device):
            handles[device] = cudnn.create_handle()
    cudnn.set_stream(handle=handles[device], stream=torch.cuda.current_stream(device).cuda_stream)
    return handles[device]


def _build_cudnn_graph(backward: bool, handle, dtype: torch.dtype, B: int, H: int, Dh: int, S: int,
                       strides: dict, total_bucket: int):
    """`describe_cudnn_graph`, then its execution plans built on `handle`'s device; -> (graph,
    workspace bytes)."""
    import cudnn

    g = describe_cudnn_graph(backward, handle, dtype, B, H, Dh, S, strides, total_bucket)
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return g, g.get_workspace_size()


def describe_cudnn_graph(backward: bool, handle, dtype: torch.dtype, B: int, H: int, Dh: int, S: int,
                         strides: dict, total_bucket: int):
    """The cuDNN SDPA operation graph (no mask, scale 1/sqrt(Dh)) on ragged tensors, validated
    (this much needs no GPU).

    Forward: q, k, v -> o, stats (log-sum-exp, ragged (T, H, 1) fp32). Backward: q, k, v, o, dO and
    stats in the padded (B, H, S, 1) layout (the backend takes no ragged stats in bprop on some
    architectures) -> dq, dk, dv packed contiguous. `strides` maps uid -> (T, H, D) strides."""
    import cudnn

    io = {torch.float16: cudnn.data_type.HALF, torch.bfloat16: cudnn.data_type.BFLOAT16}[dtype]
    f32, i32, i64 = cudnn.data_type.FLOAT, cudnn.data_type.INT32, cudnn.data_type.INT64
    g = cudnn.pygraph(handle=handle, io_data_type=io, intermediate_data_type=f32, compute_data_type=f32)

    def col(name, uid, rows, dt):
        return g.tensor(name=name, dim=[rows, 1, 1, 1], stride=[1, 1, 1, 1], data_type=dt, uid=uid)

    def thd(name, uid, ragged_uid=None, ragged=None):
        st, sh, sd = strides[uid]
        t = g.tensor(name=name, dim=[B, H, S, Dh], stride=[S * st, sh, st, sd], data_type=io, uid=uid)
        t.set_ragged_offset(ragged if ragged is not None else col(f"ragged_{name}", ragged_uid, B + 1, i64))
        return t

    def output(t, name, uid, ragged_uid):  # packed contiguous (T, H, Dh)
        t.set_uid(uid).set_output(True).set_data_type(io)
        t.set_dim([B, H, S, Dh]).set_stride([S * H * Dh, Dh, H * Dh, 1])
        t.set_ragged_offset(col(f"ragged_{name}", ragged_uid, B + 1, i64))

    seq_len = col("seq_len", _U.LEN, B, i32)
    q, k, v = thd("q", _U.Q, _U.R_Q), thd("k", _U.K, _U.R_K), thd("v", _U.V, _U.R_V)
    scale = 1.0 / math.sqrt(Dh)
    if not backward:
        o, stats = g.sdpa(name="sdpa", q=q, k=k, v=v, generate_stats=True, attn_scale=scale,
                          use_padding_mask=True, seq_len_q=seq_len, seq_len_kv=seq_len)
        output(o, "o", _U.O, _U.R_O)
        stats.set_uid(_U.STATS).set_output(True).set_data_type(f32)
        stats.set_dim([B, H, S, 1]).set_stride([S * H, 1, H, 1])
        stats.set_ragged_offset(col("ragged_stats", _U.R_STATS, B + 1, i64))
    else:
        o = thd("o", _U.O, _U.R_O)
        do = thd("dO", _U.DO, ragged=o.ragged_offset)  # dO is laid out like o: one offset column
        stats = g.tensor(name="stats", dim=[B, H, S, 1], stride=[H * S, S, 1, 1], data_type=f32, uid=_U.STATS)
        dq, dk, dv = g.sdpa_backward(name="sdpa_backward", q=q, k=k, v=v, o=o, dO=do, stats=stats,
                                     attn_scale=scale, use_padding_mask=True, seq_len_q=seq_len,
                                     seq_len_kv=seq_len, max_total_seq_len_q=total_bucket,
                                     max_total_seq_len_kv=total_bucket)
        output(dq, "dq", _U.DQ, _U.R_DQ)
        output(dk, "dk", _U.DK, _U.R_DK)
        output(dv, "dv", _U.DV, _U.R_DV)
    g.validate()
    g.build_operation_graph()
    return g


def _cudnn_run(backward: bool, tensors: dict, packed: Packed, S: int, T: int):
    """Look up (or build) the graph for these tensors' shape bucket and execute it on `tensors`
    (uid -> tensor; outputs preallocated); adds the lengths and ragged offsets."""
    q = tensors[_U.Q]
    _, H, Dh = q.shape
    B = packed.cu_seqlens.numel() - 1
    strides = {uid: tuple(t.stride()) for uid, t in tensors.items() if t.dim() == 3}
    total_bucket = bucket_seqlen(T) if backward else 0
    handle = _cudnn_handle(q.device)
    # per handle, so per thread (autograd's backward and checkpoint recompute run in another thread): a
    # plan runs with the handle it was built on
    key = (backward, q.dtype, q.device, B, H, Dh, S, total_bucket, tuple(sorted(strides.items())), handle)
    graph, workspace_size = _CUDNN_GRAPHS.get(
        key, lambda: _build_cudnn_graph(backward, handle, q.dtype, B, H, Dh, S, strides, total_bucket))
    cu64 = packed.offsets.view(-1, 1, 1, 1)  # int64 (B+1, 1, 1, 1) token offsets
    pack = dict(tensors)
    pack[_U.LEN] = packed.cached("cudnn_len", lambda: (packed.cu_seqlens[1:] - packed.cu_seqlens[:-1])
                                 .to(torch.int32).view(-1, 1, 1, 1))
    ragged = {_U.Q: _U.R_Q, _U.K: _U.R_K, _U.V: _U.R_V, _U.O: _U.R_O, _U.DQ: _U.R_DQ,
              _U.DK: _U.R_DK, _U.DV: _U.R_DV}
    for uid, r_uid in ragged.items():
        if uid in tensors:  # ragged offsets count elements: token offset x token stride
            pack[r_uid] = cu64 * tensors[uid].stride(0)
    if not backward:
        pack[_U.R_STATS] = cu64 * H
    workspace = torch.empty(max(workspace_size, 1), dtype=torch.uint8, device=q.device)
    graph.execute(pack, workspace, handle=handle)


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """cuDNN wants a dense last dim and a 16-byte aligned base."""
    return x if x.stride(-1) == 1 and x.data_ptr() % 16 == 0 else x.clone(memory_format=torch.contiguous_format)


class _CudnnVarlen(torch.autograd.Function):
    """Packed self-attention through cuDNN graphs: forward saves the log-sum-exp for backward."""

    @staticmethod
    def forward(ctx, q_THD, k_THD, v_THD, packed: Packed):
        q_THD, k_THD, v_THD = _aligned(q_THD), _aligned(k_THD), _aligned(v_THD)
        T, H, Dh = q_THD.shape
        S = bucket_seqlen(packed.max_seqlen)
        o_THD = torch.empty(T, H, Dh, dtype=q_THD.dtype, device=q_THD.device)
        stats_TH1 = torch.empty(T, H, 1, dtype=torch.float32, device=q_THD.device)
        _cudnn_run(False, {_U.Q: q_THD, _U.K: k_THD, _U.V: v_THD, _U.O: o_THD, _U.STATS: stats_TH1},
                   packed, S, T)
        ctx.save_for_backward(q_THD, k_THD, v_THD, o_THD, stats_TH1)
        ctx.packed, ctx.S = packed, S
        return o_THD

    @staticmethod
    def backward(ctx, do_THD):
        q_THD, k_THD, v_THD, o_THD, stats_TH1 = ctx.saved_tensors
        packed, S = ctx.packed, ctx.S
        T, H, Dh = q_THD.shape
        B = packed.cu_seqlens.numel() - 1
        # ragged (T, H, 1) stats -> padded (B, H, S, 1), on the device (no host sync)
        seq_id, pos = packed.cached(("cudnn_pos", T), lambda: _token_positions(packed, T))
        stats_BHS1 = stats_TH1.new_zeros(B, H, S, 1)
        stats_BHS1[seq_id, :, pos] = stats_TH1
        do_THD = do_THD.contiguous()  # laid out like o (packed contiguous)
        grads = [torch.empty(T, H, Dh, dtype=q_THD.dtype, device=q_THD.device) for _ in range(3)]
        _cudnn_run(True, {_U.Q: q_THD, _U.K: k_THD, _U.V: v_THD, _U.O: o_THD, _U.DO: do_THD,
                          _U.STATS: stats_BHS1, _U.DQ: grads[0], _U.DK: grads[1], _U.DV: grads[2]},
                   packed, S, T)
        return grads[0], grads[1], grads[2], None


def _token_positions(packed: Packed, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each packed token's sequence id and position within it, int64 (T,) each."""
    lengths = packed.offsets[1:] - packed.offsets[:-1]
    seq_id = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=T)
    return seq_id, torch.arange(T, device=lengths.device) - packed.offsets[seq_id]


def cudnn_varlen_attention(q_THD, k_THD, v_THD, packed: Packed) -> torch.Tensor:
    """Packed self-attention on cuDNN (CUDA, fp16/bf16, head dim a multiple of 8)."""
    if q_THD.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"model.attention_backend: 'cudnn' takes fp16/bf16 tensors, got {q_THD.dtype}")
    return _CudnnVarlen.apply(q_THD, k_THD, v_THD, packed)


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
