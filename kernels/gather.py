"""Masked token gather: packed tokens from (B, N, D) at flat indices, plus position embeddings.

`idx` holds flat indices `b * N + n` into the (B*N) token rows, in packed sequence order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from vjepa_scale.kernels.backend import use_triton


@dataclass(frozen=True)
class GatherLaunch:
    """Launch settings of the Triton gather kernels on a GPU (defaults: tuned on an H100,
    `tools/tune_kernels.py`). The CPU interpreter always uses one large tile (~2 ms per program)."""

    tile: int = 4096  # elements per program
    max_block_d: int = 256  # column tile of the split-row kernels (gather fwd/bwd)
    warps8_from: int = 8192  # tiles of at least this many elements get 8 warps, smaller ones 4

    def __post_init__(self):
        for name in ("tile", "max_block_d"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"GatherLaunch.{name} must be a power of two, got {v}")


@dataclass(frozen=True)
class ScatterMap:
    """The gather backward's map from token rows back to packed rows, a function of `idx` alone.

    order (T,) int64: packed positions sorted by the row they gathered (stable); rowptr (R+1,):
    where row r's sources start in `order` (R = B*N rows). The data workers build it beside the
    masks (`MaskBatch.ctx_scatter`), so the Triton backward does not sort on the device (about a
    dozen small launches per call, host-bound); without one the backward builds it itself.
    """

    order: torch.Tensor
    rowptr: torch.Tensor

    @property
    def rows(self) -> int:
        return self.rowptr.numel() - 1

    def to(self, device, non_blocking: bool = True) -> "ScatterMap":
        return ScatterMap(self.order.to(device, non_blocking=non_blocking),
                          self.rowptr.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "ScatterMap":
        return ScatterMap(self.order.pin_memory(), self.rowptr.pin_memory())

    def check(self, idx: torch.Tensor, rows: int, op: str) -> None:
        """Host-side shape checks (no sync): the map must come from indices like `idx` into `rows` rows."""
        if self.rows != rows or self.order.numel() != idx.numel() or self.order.device != idx.device:
            raise ValueError(f"{op}: scatter map for {self.order.numel()} indices into {self.rows} rows on "
                             f"{self.order.device}, but idx has {idx.numel()} into {rows} rows on {idx.device}")


def scatter_map(idx: torch.Tensor, rows: int) -> ScatterMap:
    """The `ScatterMap` of flat indices `idx` into `rows` token rows (one stable sort + a search)."""
    # 32-bit keys halve the radix-sort passes on CUDA (8 -> 4; it was a third of the backward's time).
    keys = idx.to(torch.int32) if rows < 2**31 else idx.long()
    sorted_idx, order = torch.sort(keys, stable=True)
    # First packed position of each row (bincount would need a host sync for its size on CUDA).
    rowptr = torch.searchsorted(sorted_idx, torch.arange(rows + 1, device=idx.device, dtype=keys.dtype))
    return ScatterMap(order, rowptr)


def masked_gather_reference(x_BND: torch.Tensor, idx: torch.Tensor,
                            pos_ND: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[i] = x.view(B*N, D)[idx[i]] + pos[idx[i] % N]  -> (total, D). Differentiable."""
    B, N, D = x_BND.shape
    idx = idx.long()
    out = x_BND.reshape(B * N, D).index_select(0, idx)
    if pos_ND is not None:
        out = out + pos_ND.index_select(0, idx % N).to(out.dtype)
    return out


def layernorm_gather_reference(h_BND: torch.Tensor, idx: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm without affine of the rows at `idx` -> (total, D) (target features)."""
    B, N, D = h_BND.shape
    rows = h_BND.reshape(B * N, D).index_select(0, idx.long())
    return F.layer_norm(rows, (D,), eps=eps)


def masked_gather(x_BND: torch.Tensor, idx: torch.Tensor, pos_ND: Optional[torch.Tensor] = None,
                  backend: str = "auto", launch: Optional[GatherLaunch] = None,
                  scatter: Optional[ScatterMap] = None) -> torch.Tensor:
    """Dispatch: fused Triton kernel (with its scatter backward) on CUDA, torch reference elsewhere.

    backend: "auto" | "triton" | "torch" (see `vjepa_scale.kernels.backend.use_triton`).
    launch: the Triton kernels' settings (default `GatherLaunch()`); unused by the torch reference.
    scatter: `scatter_map(idx, B*N)` built ahead (by the data workers); unused by the torch reference.
    """
    if use_triton(backend, (x_BND, idx, pos_ND), "masked_gather"):
        from vjepa_scale.kernels.gather_triton import masked_gather_triton

        return masked_gather_triton(x_BND, idx, pos_ND, launch or GatherLaunch(), scatter)
    return masked_gather_reference(x_BND, idx, pos_ND)


def layernorm_gather(h_BND: torch.Tensor, idx: torch.Tensor, eps: float = 1e-5,
                     backend: str = "auto", launch: Optional[GatherLaunch] = None,
                     scatter: Optional[ScatterMap] = None) -> torch.Tensor:
    """Dispatch for the target-side LayerNorm + gather (Triton on CUDA, torch reference elsewhere).

    launch: the Triton kernels' settings (default `GatherLaunch()`; the full-row kernels use no
    column tile); unused by the torch reference. scatter: as for `masked_gather` (only a backward
    uses it; the training targets take none).
    """
    if use_triton(backend, (h_BND, idx), "layernorm_gather"):
        from vjepa_scale.kernels.gather_triton import layernorm_gather_triton

        return layernorm_gather_triton(h_BND, idx, eps, launch or GatherLaunch(), scatter)
    return layernorm_gather_reference(h_BND, idx, eps)
