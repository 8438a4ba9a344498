"""Position encodings: fixed 3D sin-cos tables (V-JEPA 1) and 3D RoPE (V-JEPA 2 / HF `vjepa2`)."""
from __future__ import annotations

import math

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): [sin(pos*w_i), cos(pos*w_i)], w_i = 10000^(-i/(dim/2))."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.double()[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Fixed table (T*H*W, dim) in (t, h, w) raster order; 2*ceil(dim/6) dims per axis, [t, h, w]."""
    T, H, W = grid
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    d_axis = int(math.ceil(dim / 6) * 2)
    emb = torch.cat([sincos_1d(d_axis, t.flatten()), sincos_1d(d_axis, h.flatten()),
                     sincos_1d(d_axis, w.flatten())], dim=1)
    return emb[:, :dim].float()


def interpolate_sincos(table_ND: torch.Tensor, src_grid: tuple[int, int, int],
                       dst_grid: tuple[int, int, int]) -> torch.Tensor:
    """Resample a (T*H*W, D) table to another grid (trilinear), as the reference does for new sizes."""
    if tuple(src_grid) == tuple(dst_grid):
        return table_ND
    D = table_ND.shape[1]
    x = table_ND.reshape(1, *src_grid, D).permute(0, 4, 1, 2, 3)
    x = F.interpolate(x, size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return x.permute(0, 2, 3, 4, 1).reshape(-1, D)


def grid_coords(token_ids: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Raster token ids within one clip -> (t, h, w) coordinates."""
    _, H, W = grid
    t = token_ids // (H * W)
    rem = token_ids - t * (H * W)
    h = rem // W
    return t, h, rem - h * W


class Rope3D:
    """3D rotary embedding with the exact layout of Hugging Face `vjepa2` (and V-JEPA 2).

    The head dim is split into three equal even chunks (t, h, w) of 2*((head_dim//3)//2) dims; any
    remainder passes through. Within a chunk of size d, pairs (2i, 2i+1) rotate, and element j uses
    frequency w_(j mod d/2), w_k = 10000^(-k/(d/2)): the sin/cos table is the d/2 frequencies
    repeated twice, which is what the released weights were trained with.

    The cos/sin tables of a whole grid are built once per (grid, device, dtype) and then indexed by
    token ids; `grid` is the default (the model's), a forward on another clip size passes its own.
    """

    def __init__(self, head_dim: int, grid: tuple[int, int, int]):
        self.head_dim = head_dim
        self.grid = tuple(grid)
        self.chunk = 2 * ((head_dim // 3) // 2)
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def full(self, device: torch.device, dtype: torch.dtype,
             grid: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of every token of `grid` in raster order: (N, 1, head_dim) each (cached)."""
        grid = self.grid if grid is None else tuple(grid)
        key = (grid, torch.device(device), dtype)
        if key not in self._tables:
            ids = torch.arange(grid[0] * grid[1] * grid[2], device=device)
            self._tables[key] = self._build(ids, grid, dtype)
        return self._tables[key]

    def tables(self, token_ids: torch.Tensor, dtype: torch.dtype,
               grid: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """token_ids (T,) -> cos, sin of shape (T, 1, head_dim) (broadcast over heads)."""
        cos, sin = self.full(token_ids.device, dtype, grid)
        return cos.index_select(0, token_ids), sin.index_select(0, token_ids)

    def _build(self, token_ids: torch.Tensor, grid: tuple[int, int, int],
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.chunk
        omega = torch.arange(d // 2, device=token_ids.device, dtype=torch.float32) / (d / 2.0)
        omega = 1.0 / 10000 ** omega
        parts_cos, parts_sin = [], []
        for coord in grid_coords(token_ids, grid):
            freq = coord.float()[..., None] * omega  # (..., d/2)
            freq = freq.repeat(*([1] * (freq.dim() - 1)), 2)  # (..., d): frequencies duplicated
            parts_cos.append(freq.cos())
            parts_sin.append(freq.sin())
        rest = self.head_dim - 3 * d
        if rest:
            shape = (*token_ids.shape, rest)
            parts_cos.append(torch.ones(shape, device=token_ids.device))
            parts_sin.append(torch.zeros(shape, device=token_ids.device))
        cos = torch.cat(parts_cos, dim=-1).unsqueeze(-2).to(dtype)
        sin = torch.cat(parts_sin, dim=-1).unsqueeze(-2).to(dtype)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., H, Dh): x*cos + rot(x)*sin with pairwise rotation rot(x)_(2i, 2i+1) = (-x_(2i+1), x_(2i))."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    rot = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return x * cos + rot * sin


class Positions(nn.Module):
    """The position scheme of one transformer, built for its default `grid`.

    `sincos`: a fixed additive table (V-JEPA 1), resampled for another grid; `rope`: 3D rotary
    tables (V-JEPA 2) applied inside attention. Exactly one of `additive` / `rotary` returns tables.
    """

    def __init__(self, scheme: str, width: int, head_dim: int, grid: tuple[int, int, int]):
        super().__init__()
        self.grid = tuple(grid)
        if scheme == "sincos":
            self.register_buffer("table", sincos_3d(width, self.grid), persistent=False)
            self.rope = None
        else:
            self.table = None
            self.rope = Rope3D(head_dim, self.grid)
        self._additive: dict[tuple, torch.Tensor] = {}

    def additive(self, grid: tuple[int, int, int], dtype: torch.dtype) -> Optional[torch.Tensor]:
        """(T*H*W, width) table for `grid` in `dtype`, or None under RoPE. Resampled and cast once per
        (grid, dtype, device) and reused (the key holds the table's storage, so `.to()` rebuilds)."""
        if self.table is None:
            return None
        key = self._table_key(tuple(grid), dtype)
        if key not in self._additive:
            self._additive[key] = interpolate_sincos(self.table, self.grid, grid).to(dtype)
        return self._additive[key]

    def _table_key(self, *what) -> tuple:
        """Cache key of a table derived from `self.table`: (its storage, its version, *what). Entries of
        another storage or version (after `.to()` or an in-place change) are dropped here."""
        key = (self.table.data_ptr(), self.table._version, self.table.device, *what)
        if key not in self._additive:
            self._additive = {k: v for k, v in self._additive.items() if k[:2] == key[:2]}
        return key

    def rotary(self, token_ids: Optional[torch.Tensor], grid: tuple[int, int, int], device: torch.device,
               dtype: torch.dtype) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """cos, sin (T, 1, head_dim) at `token_ids` (None: every token of `grid`), or None under sin-cos."""
        if self.rope is None:
            return None
        if token_ids is None:
            return self.rope.full(device, dtype, grid)
        return self.rope.tables(token_ids, dtype, grid)

    # Mixed-shape batches: `pos_ids` index the concatenation of the tables of `grids` (in order),
    # so one gather serves tokens of every grid (see `vjepa_scale.masks`, `MaskBatch.grids`).

    def additive_multi(self, grids: list[tuple[int, int, int]], dtype: torch.dtype) -> Optional[torch.Tensor]:
        """(sum_g N_g, width): the sin-cos tables of `grids` concatenated, or None under RoPE (cached)."""
        if self.table is None:
            return None
        if len(grids) == 1:
            return self.additive(grids[0], dtype)
        key = self._table_key("multi", tuple(map(tuple, grids)), dtype)
        if key not in self._additive:
            self._additive[key] = torch.cat([self.additive(g, dtype) for g in grids])
        return self._additive[key]

    def rotary_multi(self, pos_ids: torch.Tensor, grids: list[tuple[int, int, int]], device: torch.device,
                     dtype: torch.dtype) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """cos, sin (T, 1, head_dim) at `pos_ids` into the RoPE tables of `grids`, or None under sin-cos."""
        if self.rope is None:
            return None
        if len(grids) == 1:
            return self.rotary(pos_ids, grids[0], device, dtype)
        key = ("multi", tuple(map(tuple, grids)), torch.device(device), dtype)
        if key not in self.rope._tables:
            full = [self.rope.full(device, dtype, g) for g in grids]
            self.rope._tables[key] = (torch.cat([c for c, _ in full]), torch.cat([s for _, s in full]))
        cos, sin = self.rope._tables[key]
        return cos.index_select(0, pos_ids), sin.index_select(0, pos_ids)
