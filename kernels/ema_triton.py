"""Multi-tensor Triton EMA update: one launch per (master dtype, target dtype) group.

For every tensor triple, one pass reads the fp32 shadow and the master shard, writes the new
shadow `s + w * (m - s)` (w = 1 - momentum, torch's lerp formula) and the target in its own dtype
(round-to-nearest-even). The launch walks a table of (tensor, chunk) work items whose pointers live
in a device-side int64 table; tables are cached per set of tensors, so a training loop that passes
the same shards every step builds them once. Momentum is a runtime float: no recompilation.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import triton
import triton.language as tl

from vjepa_scale.kernels.backend import interpreting
from vjepa_scale.kernels.ema import EmaLaunch
from vjepa_scale.kernels.gather_triton import _round_as

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _ema_block(s_ptr, m_ptr, t_ptr, offs, n, w, TARGET: tl.constexpr, WRITE_TARGET: tl.constexpr,
               SMALL_W: tl.constexpr, MASKED: tl.constexpr):
    if MASKED:
        mask = offs < n
        s = tl.load(s_ptr + offs, mask=mask, other=0.0)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        mask = None
        s = tl.load(s_ptr + offs)
        m = tl.load(m_ptr + offs).to(tl.float32)
    d = m - s
    if SMALL_W:
        new = s + w * d
    else:
        new = m - d * (1.0 - w)
    tl.store(s_ptr + offs, new, mask=mask)
    if WRITE_TARGET:
        tl.store(t_ptr + offs, _round_as(new, TARGET).to(TARGET), mask=mask)


@triton.jit
def _ema_kernel(meta_ptr, work_ptr, w, MASTER: tl.constexpr, TARGET: tl.constexpr,
                WRITE_TARGET: tl.constexpr, SMALL_W: tl.constexpr, ALIGN_S: tl.constexpr,
                ALIGN_M: tl.constexpr, ALIGN_T: tl.constexpr,
                CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    item = tl.program_id(0)
    t = tl.load(work_ptr + 2 * item)
    start = tl.load(work_ptr + 2 * item + 1) * CHUNK
    n = tl.load(meta_ptr + 4 * t + 3)
    s_ptr = tl.load(meta_ptr + 4 * t).to(tl.pointer_type(tl.float32))
    m_ptr = tl.load(meta_ptr + 4 * t + 1).to(tl.pointer_type(MASTER))
    t_ptr = tl.load(meta_ptr + 4 * t + 2).to(tl.pointer_type(TARGET))
    # 16-byte aligned pointers (known per role for the whole launch) get 128-bit accesses.
    if ALIGN_S:
        s_ptr = tl.multiple_of(s_ptr, 16)
    if ALIGN_M:
        m_ptr = tl.multiple_of(m_ptr, 16)
    if ALIGN_T:
        t_ptr = tl.multiple_of(t_ptr, 16)
    if start + CHUNK <= n:  # full chunk: no bounds mask, so accesses stay vectorized
        for off in tl.static_range(0, CHUNK, BLOCK):
            offs = start + off + tl.arange(0, BLOCK)
            _ema_block(s_ptr, m_ptr, t_ptr, offs, n, w, TARGET, WRITE_TARGET, SMALL_W, False)
    else:
        for off in tl.static_range(0, CHUNK, BLOCK):
            offs = start + off + tl.arange(0, BLOCK)
            _ema_block(s_ptr, m_ptr, t_ptr, offs, n, w, TARGET, WRITE_TARGET, SMALL_W, True)


_CACHE: "OrderedDict[tuple, list]" = OrderedDict()
_CACHE_SIZE = 8


def _sizes(launch: EmaLaunch) -> tuple[int, int]:
    """(CHUNK, BLOCK): elements per work item and per inner step (large ones in the interpreter)."""
    return (1 << 16, 1 << 16) if interpreting() else (launch.chunk, launch.block)


def _plan(shadows, masters, targets, chunk: int) -> list:
    """Launch groups [(meta, work, MASTER, TARGET, write_target, (align_s, align_m, align_t), n_items)].

    Tensors are grouped by dtypes, whether the target is the shadow itself, and which of their
    three pointers are 16-byte aligned (ZeRO shards are views at arbitrary offsets). Cached by pointers.
    """
    key = (chunk, *((s.data_ptr(), m.data_ptr(), t.data_ptr(), s.numel(), m.dtype, t.dtype)
                    for s, m, t in zip(shadows, masters, targets)))
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    groups: dict[tuple, list] = {}
    for s, m, t in zip(shadows, masters, targets):
        if s.numel() == 0:
            continue
        write = t.data_ptr() != s.data_ptr()
        align = (s.data_ptr() % 16 == 0, m.data_ptr() % 16 == 0, (t.data_ptr() % 16 == 0) or not write)
        groups.setdefault((m.dtype, t.dtype if write else torch.float32, write, align), []).append((s, m, t))
    plan = []
    device = shadows[0].device
    for (mdt, tdt, write, align), triples in groups.items():
        meta = torch.tensor([[s.data_ptr(), m.data_ptr(), t.data_ptr(), s.numel()] for s, m, t in triples],
                            dtype=torch.int64)
        work = torch.cat([torch.stack([torch.full((triton.cdiv(s.numel(), chunk),), i, dtype=torch.int64),
                                       torch.arange(triton.cdiv(s.numel(), chunk), dtype=torch.int64)], 1)
                          for i, (s, _, _) in enumerate(triples)])
        plan.append((meta.to(device), work.contiguous().to(device), _TL_DTYPES[mdt], _TL_DTYPES[tdt],
                     write, align, work.shape[0]))
    _CACHE[key] = plan
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return plan


def _validate(shadows, masters, targets) -> None:
    if not (len(shadows) == len(masters) == len(targets)):
        raise ValueError(f"ema_update_: got {len(shadows)} shadows, {len(masters)} masters, {len(targets)} targets")
    device = shadows[0].device if shadows else None
    for i, (s, m, t) in enumerate(zip(shadows, masters, targets)):
        if s.dtype != torch.float32:
            raise ValueError(f"ema_update_: shadows[{i}] must be float32, got {s.dtype}")
        for name, x in (("masters", m), ("targets", t)):
            if x.dtype not in _TL_DTYPES:
                raise ValueError(f"ema_update_: {name}[{i}] has unsupported dtype {x.dtype}")
            if x.numel() != s.numel():
                raise ValueError(f"ema_update_: {name}[{i}] has {x.numel()} elements, shadows[{i}] {s.numel()}")
        for name, x in (("shadows", s), ("masters", m), ("targets", t)):
            if x.device != device:
                raise ValueError(f"ema_update_: {name}[{i}] on {x.device}, expected {device}")
            if not x.is_contiguous():
                raise ValueError(f"ema_update_: {name}[{i}] must be contiguous for the Triton kernel")


@torch.no_grad()
def ema_update_triton(shadows: Sequence[torch.Tensor], masters: Sequence[torch.Tensor],
                      targets: Sequence[torch.Tensor], momentum: float, launch: EmaLaunch = EmaLaunch()) -> None:
    """shadow <- lerp(shadow, master, 1 - momentum) in place; target <- shadow in its dtype."""
    shadows, masters, targets = list(shadows), list(masters), list(targets)
    _validate(shadows, masters, targets)
    if not shadows:
        return
    w = 1.0 - float(momentum)
    chunk, block = _sizes(launch)
    for meta, work, mdt, tdt, write, (al_s, al_m, al_t), n_items in _plan(shadows, masters, targets, chunk):
        _ema_kernel[(n_items,)](meta, work, w, MASTER=mdt, TARGET=tdt, WRITE_TARGET=write,
                                SMALL_W=abs(w) < 0.5, ALIGN_S=al_s, ALIGN_M=al_m,
                                ALIGN_T=al_t, CHUNK=chunk, BLOCK=block, num_warps=launch.num_warps)
