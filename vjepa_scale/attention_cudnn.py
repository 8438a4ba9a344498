"""The `cudnn` packed-attention backend: cuDNN SDPA graphs on ragged (THD) tensors through
nvidia-cudnn-frontend (CUDA, fp16/bf16; `pip install .[cudnn]`).

Forward and backward graphs are built per shape bucket (`bucket_seqlen`) and kept in one bounded
process-wide cache (`cudnn_graph_cache`); `describe_cudnn_graph` validates a graph without a GPU.
`vjepa_scale.attention` dispatches here (`packed_attention(..., "cudnn")`).
"""
from __future__ import annotations

import collections
import math
import threading
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vjepa_scale.attention import Packed

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
        seq_id, pos = packed.token_positions(T)
        stats_BHS1 = stats_TH1.new_zeros(B, H, S, 1)
        stats_BHS1[seq_id, :, pos] = stats_TH1
        do_THD = do_THD.contiguous()  # laid out like o (packed contiguous)
        grads = [torch.empty(T, H, Dh, dtype=q_THD.dtype, device=q_THD.device) for _ in range(3)]
        _cudnn_run(True, {_U.Q: q_THD, _U.K: k_THD, _U.V: v_THD, _U.O: o_THD, _U.DO: do_THD,
                          _U.STATS: stats_BHS1, _U.DQ: grads[0], _U.DK: grads[1], _U.DV: grads[2]},
                   packed, S, T)
        return grads[0], grads[1], grads[2], None


def cudnn_varlen_attention(q_THD, k_THD, v_THD, packed: Packed) -> torch.Tensor:
    """Packed self-attention on cuDNN (CUDA, fp16/bf16, head dim a multiple of 8)."""
    if q_THD.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"model.attention_backend: 'cudnn' takes fp16/bf16 tensors, got {q_THD.dtype}")
    return _CudnnVarlen.apply(q_THD, k_THD, v_THD, packed)
