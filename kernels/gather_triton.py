"""Triton kernels for the masked token gather (+ position embedding) and the LayerNorm gather.

Forward: one pass reads the gathered rows of x (any strides, e.g. the transposed patch-embed
output) and of the position table, adds them and writes the packed rows. Backward: a
deterministic scatter without atomics. The flat indices are sorted once (stable) into a CSR map
(`gather.ScatterMap`, built by the data workers with the masks, or here when none is given) from
each destination row `b*N+n` to the packed rows that read it; each program sums its rows'
sources in packed order in fp32 and writes every destination row once (zeros where nothing
gathered it). Overlapping index sets (the two mask types) thus accumulate exactly as a sequential
index_add would for up to two sources per row, and in a fixed order beyond that.

Rounding: results are rounded to the output dtype in fp32 with round-to-nearest-even done on the
bits (`_round_as`), so CUDA and the CPU interpreter (whose bf16 casts truncate) agree bitwise with
torch.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vjepa_scale.kernels.backend import interpreting
from vjepa_scale.kernels.gather import GatherLaunch, ScatterMap, scatter_map

# ------------------------------------------------------------------------------------------------
# Shared device helpers
# ------------------------------------------------------------------------------------------------


@triton.jit
def _round_bf16(x):
    """fp32 -> fp32 value exactly representable in bf16 (round to nearest even; NaN kept)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))


@triton.jit
def _round_as(x, DT: tl.constexpr):
    """fp32 `x` rounded to dtype DT, returned as fp32 (so the final cast is exact)."""
    if DT == tl.bfloat16:
        return _round_bf16(x)
    elif DT == tl.float16:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def _csr_sum(g_ptr, order_ptr, rowptr_ptr, rows, rmask, cols, cmask, D,
             BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """fp32 sum of the grad rows that gathered each destination row (packed order)."""
    start = tl.load(rowptr_ptr + rows, mask=rmask, other=0)
    cnt = tl.load(rowptr_ptr + rows + 1, mask=rmask, other=0) - start
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    kmax = tl.max(cnt, axis=0)
    k = kmax * 0  # a while loop (not range(kmax)) also runs in older Triton interpreters
    while k < kmax:
        has = cnt > k
        src = tl.load(order_ptr + start + k, mask=has, other=0).to(tl.int64)
        # Rows without a k-th source read row 0 (it exists: T > 0) and drop it. Masking this load
        # with `has` too breaks Triton 3.6's layout pass on sm_90 for some tiles ("mask type
        # matches ptr type", e.g. BLOCK 32x128 with D % 16 == 0).
        g = tl.load(g_ptr + src[:, None] * D + cols[None, :], mask=cmask[None, :], other=0.0)
        acc += tl.where(has[:, None], g.to(tl.float32), 0.0)
        k += 1
    return acc


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------


@triton.jit
def _gather_fwd_kernel(x_ptr, idx_ptr, pos_ptr, out_ptr, T, N, D,
                       sxb, sxn, sxd, spn, spd,
                       HAS_POS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < T
    cmask = cols < D
    m2 = rmask[:, None] & cmask[None, :]
    src = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
    b = src // N
    n = src - b * N
    c64 = cols.to(tl.int64)
    x = tl.load(x_ptr + (b * sxb + n * sxn)[:, None] + c64[None, :] * sxd, mask=m2, other=0.0)
    out_dt: tl.constexpr = out_ptr.dtype.element_ty
    if HAS_POS:
        p = tl.load(pos_ptr + (n * spn)[:, None] + c64[None, :] * spd, mask=m2, other=0.0)
        p = _round_as(p.to(tl.float32), out_dt)  # pos.to(x.dtype), as the reference does
        y = _round_as(x.to(tl.float32) + p, out_dt)
    else:
        y = x.to(tl.float32)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + c64[None, :], y.to(out_dt), mask=m2)


@triton.jit
def _gather_bwd_kernel(g_ptr, order_ptr, rowptr_ptr, gx_ptr, R, D,
                       BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < R
    cmask = cols < D
    acc = _csr_sum(g_ptr, order_ptr, rowptr_ptr, rows, rmask, cols, cmask, D, BLOCK_R, BLOCK_D)
    out_dt: tl.constexpr = gx_ptr.dtype.element_ty
    y = _round_as(acc, out_dt)
    tl.store(gx_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], y.to(out_dt),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _row_stats(x, cmask, D, eps):
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(cmask[None, :], x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    return xc, rstd


@triton.jit
def _ln_gather_fwd_kernel(h_ptr, idx_ptr, out_ptr, T, N, D, shb, shn, shd, eps,
                          BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < T
    cmask = cols < D
    m2 = rmask[:, None] & cmask[None, :]
    src = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
    b = src // N
    n = src - b * N
    c64 = cols.to(tl.int64)
    x = tl.load(h_ptr + (b * shb + n * shn)[:, None] + c64[None, :] * shd, mask=m2, other=0.0).to(tl.float32)
    xc, rstd = _row_stats(x, cmask, D, eps)
    out_dt: tl.constexpr = out_ptr.dtype.element_ty
    y = _round_as(xc * rstd[:, None], out_dt)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + c64[None, :], y.to(out_dt), mask=m2)


@triton.jit
def _ln_gather_bwd_kernel(g_ptr, order_ptr, rowptr_ptr, h_ptr, gh_ptr, R, N, D, shb, shn, shd, eps,
                          BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    # LayerNorm's backward is linear in the output grad, so the summed grad of all the packed rows
    # that read a row goes through it once: dx = rstd * (G - mean(G) - xhat * mean(G * xhat)).
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < R
    cmask = cols < D
    m2 = rmask[:, None] & cmask[None, :]
    G = _csr_sum(g_ptr, order_ptr, rowptr_ptr, rows, rmask, cols, cmask, D, BLOCK_R, BLOCK_D)
    r64 = rows.to(tl.int64)
    b = r64 // N
    n = r64 - b * N
    c64 = cols.to(tl.int64)
    x = tl.load(h_ptr + (b * shb + n * shn)[:, None] + c64[None, :] * shd, mask=m2, other=0.0).to(tl.float32)
    xc, rstd = _row_stats(x, cmask, D, eps)
    xhat = xc * rstd[:, None]
    mg = tl.sum(G, axis=1) / D
    mgx = tl.sum(G * xhat, axis=1) / D
    dx = rstd[:, None] * (G - mg[:, None] - xhat * mgx[:, None])
    out_dt: tl.constexpr = gh_ptr.dtype.element_ty
    tl.store(gh_ptr + r64[:, None] * D + c64[None, :], _round_as(dx, out_dt).to(out_dt), mask=m2)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------

_INTERP_TILE = 1 << 16  # elements per program in the interpreter (~2 ms per program)


def _tiles(rows: int, D: int, full_row: bool, launch: GatherLaunch = GatherLaunch()) -> tuple[int, int]:
    """(BLOCK rows, BLOCK_D) of a launch over `rows` rows of width D."""
    tile = _INTERP_TILE if interpreting() else launch.tile
    block_d = triton.next_power_of_2(D) if full_row else min(launch.max_block_d, triton.next_power_of_2(D))
    block_r = max(1, min(tile // block_d, triton.next_power_of_2(max(rows, 1))))
    return block_r, block_d


def _warps(block_r: int, block_d: int, launch: GatherLaunch = GatherLaunch()) -> int:
    return 8 if block_r * block_d >= launch.warps8_from else 4


def _check(x_BND: torch.Tensor, idx: torch.Tensor, op: str, scatter: Optional[ScatterMap] = None) -> None:
    if x_BND.dim() != 3:
        raise ValueError(f"{op}: expected tokens of shape (B, N, D), got {tuple(x_BND.shape)}")
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: idx must be 1-D int32/int64 flat indices b*N+n, got {idx.dtype} {tuple(idx.shape)}")
    if idx.device != x_BND.device:
        raise ValueError(f"{op}: idx on {idx.device} but tokens on {x_BND.device}")
    if not idx.is_cuda and idx.numel():  # cheap here; on CUDA it would cost a host sync
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= x_BND.shape[0] * x_BND.shape[1]:
            raise IndexError(f"{op}: indices must lie in [0, {x_BND.shape[0] * x_BND.shape[1]}), got [{lo}, {hi}]")
    if scatter is not None:
        scatter.check(idx, x_BND.shape[0] * x_BND.shape[1], op)


def _unit_stride_rows(x_BND: torch.Tensor) -> torch.Tensor:
    """On CUDA, make rows unit-stride (e.g. the patch embedding's (B, D, N) output seen as (B, N, D)):
    gathering strided rows reads a 32-byte sector per element, far costlier than one transposing copy.
    The interpreter keeps the strides, so the kernels' stride handling stays tested."""
    return x_BND.contiguous() if x_BND.is_cuda and x_BND.stride(2) != 1 else x_BND


def gather_fwd(x_BND: torch.Tensor, idx: torch.Tensor, pos_ND: Optional[torch.Tensor],
               launch: GatherLaunch) -> torch.Tensor:
    B, N, D = x_BND.shape
    T = idx.numel()
    out = torch.empty(T, D, dtype=x_BND.dtype, device=x_BND.device)
    if T == 0 or D == 0:
        return out
    if pos_ND is not None and tuple(pos_ND.shape) != (N, D):
        raise ValueError(f"masked_gather: pos must have shape (N, D) = {(N, D)}, got {tuple(pos_ND.shape)}")
    idx = idx.contiguous()
    x_BND = _unit_stride_rows(x_BND)
    br, bd = _tiles(T, D, False, launch)
    pos = pos_ND if pos_ND is not None else x_BND
    spn, spd = (pos_ND.stride(0), pos_ND.stride(1)) if pos_ND is not None else (0, 0)
    grid = (triton.cdiv(T, br), triton.cdiv(D, bd))
    _gather_fwd_kernel[grid](x_BND, idx, pos, out, T, N, D, *x_BND.stride(), spn, spd,
                             HAS_POS=pos_ND is not None, BLOCK_T=br, BLOCK_D=bd,
                             num_warps=_warps(br, bd, launch))
    return out


def gather_bwd(g_TD: torch.Tensor, idx: torch.Tensor, B: int, N: int, launch: GatherLaunch,
               scatter: Optional[ScatterMap] = None) -> torch.Tensor:
    """grad of the tokens: (B, N, D), row b*N+n = sum of g rows whose idx is b*N+n (through
    `scatter`, built here when not given)."""
    T, D = g_TD.shape
    R = B * N
    gx = torch.empty(B, N, D, dtype=g_TD.dtype, device=g_TD.device)
    if R == 0 or D == 0:
        return gx
    if T == 0:
        return gx.zero_()
    smap = scatter or scatter_map(idx, R)
    br, bd = _tiles(R, D, False, launch)
    grid = (triton.cdiv(R, br), triton.cdiv(D, bd))
    _gather_bwd_kernel[grid](g_TD.contiguous(), smap.order, smap.rowptr, gx, R, D, BLOCK_R=br, BLOCK_D=bd,
                             num_warps=_warps(br, bd, launch))
    return gx


def ln_gather_fwd(h_BND: torch.Tensor, idx: torch.Tensor, eps: float, launch: GatherLaunch) -> torch.Tensor:
    B, N, D = h_BND.shape
    T = idx.numel()
    out = torch.empty(T, D, dtype=h_BND.dtype, device=h_BND.device)
    if T == 0 or D == 0:
        return out
    h_BND = _unit_stride_rows(h_BND)
    br, bd = _tiles(T, D, True, launch)
    _ln_gather_fwd_kernel[(triton.cdiv(T, br),)](h_BND, idx.contiguous(), out, T, N, D, *h_BND.stride(),
                                                 float(eps), BLOCK_T=br, BLOCK_D=bd,
                                                 num_warps=_warps(br, bd, launch))
    return out


def ln_gather_bwd(g_TD: torch.Tensor, idx: torch.Tensor, h_BND: torch.Tensor, eps: float,
                  launch: GatherLaunch, scatter: Optional[ScatterMap] = None) -> torch.Tensor:
    B, N, D = h_BND.shape
    R = B * N
    gh = torch.empty(B, N, D, dtype=h_BND.dtype, device=h_BND.device)
    if R == 0 or D == 0:
        return gh
    if idx.numel() == 0:
        return gh.zero_()
    smap = scatter or scatter_map(idx, R)
    h_BND = _unit_stride_rows(h_BND)
    br, bd = _tiles(R, D, True, launch)
    _ln_gather_bwd_kernel[(triton.cdiv(R, br),)](g_TD.contiguous(), smap.order, smap.rowptr, h_BND, gh, R, N, D,
                                                 *h_BND.stride(), float(eps), BLOCK_R=br, BLOCK_D=bd,
                                                 num_warps=_warps(br, bd, launch))
    return gh


# ------------------------------------------------------------------------------------------------
# Autograd wrappers
# ------------------------------------------------------------------------------------------------


class MaskedGather(torch.autograd.Function):
    """out[i] = x.view(B*N, D)[idx[i]] + pos[idx[i] % N]; grads for x (and pos if it needs one)."""

    @staticmethod
    def forward(ctx, x_BND, idx, pos_ND, launch, scatter):
        ctx.save_for_backward(idx)
        ctx.shape = x_BND.shape
        ctx.pos_dtype = None if pos_ND is None else pos_ND.dtype
        ctx.launch, ctx.scatter = launch, scatter
        return gather_fwd(x_BND, idx, pos_ND, launch)

    @staticmethod
    def backward(ctx, g_TD):
        (idx,) = ctx.saved_tensors
        B, N, D = ctx.shape
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]
        gx = gather_bwd(g_TD, idx, B, N, ctx.launch, ctx.scatter) if need else None
        gpos = None
        if ctx.needs_input_grad[2]:  # pos row n collects every gathered (b, n): sum the token grads over b
            gpos = gx.sum(0, dtype=torch.float32).to(ctx.pos_dtype)
        return (gx if ctx.needs_input_grad[0] else None), None, gpos, None, None


class LayerNormGather(torch.autograd.Function):
    """LayerNorm (no affine) of h.view(B*N, D)[idx]; grad for h."""

    @staticmethod
    def forward(ctx, h_BND, idx, eps, launch, scatter):
        ctx.save_for_backward(h_BND, idx)
        ctx.eps = eps
        ctx.launch, ctx.scatter = launch, scatter
        return ln_gather_fwd(h_BND, idx, eps, launch)

    @staticmethod
    def backward(ctx, g_TD):
        h_BND, idx = ctx.saved_tensors
        return ln_gather_bwd(g_TD, idx, h_BND, ctx.eps, ctx.launch, ctx.scatter), None, None, None, None


def masked_gather_triton(x_BND: torch.Tensor, idx: torch.Tensor, pos_ND: Optional[torch.Tensor] = None,
                         launch: GatherLaunch = GatherLaunch(), scatter: Optional[ScatterMap] = None) -> torch.Tensor:
    _check(x_BND, idx, "masked_gather", scatter)
    if pos_ND is not None and pos_ND.device != x_BND.device:
        raise ValueError(f"masked_gather: pos on {pos_ND.device} but tokens on {x_BND.device}")
    return MaskedGather.apply(x_BND, idx, pos_ND, launch, scatter)


def layernorm_gather_triton(h_BND: torch.Tensor, idx: torch.Tensor, eps: float = 1e-5,
                            launch: GatherLaunch = GatherLaunch(), scatter: Optional[ScatterMap] = None) -> torch.Tensor:
    _check(h_BND, idx, "layernorm_gather", scatter)
    return LayerNormGather.apply(h_BND, idx, eps, launch, scatter)
