"""Multi-block 3D masks and their packing into variable-length sequences.

For each mask type the union of `num_blocks` spatio-temporal blocks is the target; the context is
its complement. The block shape is drawn once per micro-step (same on every rank), the block
positions per global sample slot: slot `first_slot + b` of the micro-step, where rank r's first
slot is r x (its batch rows). Everything is a pure function of (seed, step, slot), so a resumed
run draws the same masks, and so does a run on another number of ranks with the same micro-batch
over all ranks (`data.global_batch_size` set): a sample's mask does not depend on the world size.
`truncate: batch_min` cuts every sample of a rank's batch to that batch's shortest, so it does
depend on how the slots are split over ranks (not world-size invariant).

`MaskBatch` holds the packed layout built on the CPU: sequences ordered mask-type major
(s = m * B + b), int32 `cu_seqlens` and host-side `max_seqlen` for the context, the targets, and
the predictor's concatenated [context ; targets] sequences, and the context gather's backward map
(`ctx_scatter`). The data loaders draw one per batch
(`vjepa_scale.data.batch.make_batch`).

Mixed shapes: every sample has its own token grid (`sample_grids`, (T', H', W') in tokens) and its
tokens sit at `sample_offsets[b]` in the concatenation of all samples' tokens, so a flat index is
`sample_offsets[b] + n` (uniform batches: `b * N`, as before). Masks are drawn per sample on its own
grid; the block shape is a function of (seed, step, mask type, grid) (the same draws, scaled to each
grid), so samples of one shape share it. A mixed batch also carries `*_pos_ids`: each token's row in
the concatenation of the per-grid position tables of `grids` (the batch's distinct grids in order),
which the models index (sin-cos table or RoPE cos/sin per grid, cached per grid); uniform batches
leave them None and the token ids serve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

import numpy as np
import torch

from vjepa_scale.config import ConfigError, MaskConfig, MaskSpec
from vjepa_scale.kernels.gather import ScatterMap, scatter_map

MAX_TRIES = 50


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed & ((1 << 63) - 1))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + float(torch.rand(1, generator=g)) * (hi - lo)


def sample_block_shape(spec: MaskSpec, grid: tuple[int, int, int], g: torch.Generator) -> tuple[int, int, int]:
    """(t, h, w) of one block: temporal/spatial scale and aspect ratio drawn uniformly (one draw)."""
    T, H, W = grid
    t = max(1, int(T * _uniform(g, *spec.temporal_scale)))
    keep = int(H * W * _uniform(g, *spec.spatial_scale))
    ar = _uniform(g, *spec.aspect_ratio)
    h = min(H, max(1, int(round(math.sqrt(keep * ar)))))
    w = min(W, max(1, int(round(math.sqrt(keep / ar)))))
    return t, h, w


def sample_context(spec: MaskSpec, grid: tuple[int, int, int], shape: tuple[int, int, int],
                   g: torch.Generator, where: str = "mask") -> tuple[torch.Tensor, torch.Tensor]:
    """One sample: sorted context ids and target ids (its complement) within the clip's N tokens."""
    T, H, W = grid
    t, h, w = shape
    for _ in range(MAX_TRIES):
        keep = torch.ones(T, H, W, dtype=torch.bool)
        starts = torch.stack([torch.randint(0, T - t + 1, (spec.num_blocks,), generator=g),
                              torch.randint(0, H - h + 1, (spec.num_blocks,), generator=g),
                              torch.randint(0, W - w + 1, (spec.num_blocks,), generator=g)], 1).tolist()
        for s0, s1, s2 in starts:
            keep[s0:s0 + t, s1:s1 + h, s2:s2 + w] = False
        if spec.max_temporal_keep < 1.0:
            keep[max(1, int(T * spec.max_temporal_keep)):] = False
        keep = keep.flatten()
        ctx = keep.nonzero().squeeze(1)
        if ctx.numel() > 0:
            tgt = (~keep).nonzero().squeeze(1)
            if spec.max_keep is not None:
                ctx = ctx[:spec.max_keep]
            return ctx, tgt
    raise ConfigError(f"{where}: blocks of shape {shape} on grid {grid} left no context in {MAX_TRIES} "
                      f"tries; lower num_blocks ({spec.num_blocks}) or spatial_scale/temporal_scale")


@dataclass
class MaskBatch:
    """Packed context/target index sets of one batch (all tensors on one device)."""

    grid: tuple[int, int, int]
    batch_size: int
    num_types: int
    ctx_idx: torch.Tensor  # int64 (T_ctx,), flat b*N+n
    ctx_token_ids: torch.Tensor  # int64 (T_ctx,), n
    ctx_cu_seqlens: torch.Tensor  # int32 (S+1,)
    ctx_max_seqlen: int
    tgt_idx: torch.Tensor  # int64 (T_tgt,)
    tgt_token_ids: torch.Tensor  # int64 (T_tgt,)
    tgt_type: torch.Tensor  # int64 (T_tgt,), mask type of each target token
    tgt_type_bounds: list[int]  # host-side token offsets of each mask type's targets (M+1,)
    pred_cu_seqlens: torch.Tensor  # int32 (S+1,), [context ; targets] per sequence
    pred_max_seqlen: int
    pred_token_ids: torch.Tensor  # int64 (T_ctx+T_tgt,)
    pred_ctx_slot: torch.Tensor  # int64 (T_ctx,), row of each context token in the predictor input
    pred_tgt_slot: torch.Tensor  # int64 (T_tgt,)
    ctx_lengths: list[int]  # host-side, per sequence (for FLOP counts and stats)
    tgt_lengths: list[int]
    # Mixed shapes (see the module docstring); None on a uniform batch (every sample on `grid`).
    sample_grids: Optional[list[tuple[int, int, int]]] = None  # (B,) host-side
    sample_offsets: Optional[list[int]] = None  # (B+1,) host-side token offsets in the concatenation
    grids: Optional[list[tuple[int, int, int]]] = None  # distinct grids; position tables concatenated
    ctx_pos_ids: Optional[torch.Tensor] = None  # int64 (T_ctx,), row in the concatenated tables
    tgt_pos_ids: Optional[torch.Tensor] = None  # int64 (T_tgt,)
    pred_pos_ids: Optional[torch.Tensor] = None  # int64 (T_ctx+T_tgt,)
    # The context gather's backward map (`kernels.scatter_map(ctx_idx, total_tokens)`), built with the
    # masks so the device does not sort; None (built on demand) for derived batches (`for_type`).
    ctx_scatter: Optional[ScatterMap] = None

    @property
    def mixed(self) -> bool:
        """True when the samples' grids differ (the packed mixed-shape layout)."""
        return self.sample_grids is not None

    @property
    def pos_grids(self) -> list[tuple[int, int, int]]:
        """The grids whose concatenated position tables `ctx_pos` / `tgt_pos` / `pred_pos` index (a
        uniform batch: its one grid, so the token ids serve)."""
        return self.grids if self.mixed else [self.grid]

    @property
    def ctx_pos(self) -> torch.Tensor:
        return self.ctx_pos_ids if self.mixed else self.ctx_token_ids

    @property
    def tgt_pos(self) -> torch.Tensor:
        return self.tgt_pos_ids if self.mixed else self.tgt_token_ids

    @property
    def pred_pos(self) -> torch.Tensor:
        return self.pred_pos_ids if self.mixed else self.pred_token_ids

    @property
    def num_tokens(self) -> int:
        """Tokens of one clip (uniform batches; a mixed batch raises: use `sample_tokens`)."""
        if self.mixed:
            raise ValueError("MaskBatch.num_tokens: the samples of a mixed batch differ in size (sample_tokens)")
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def sample_tokens(self) -> list[int]:
        """Full-clip tokens of each sample (B,)."""
        if not self.mixed:
            return [self.grid[0] * self.grid[1] * self.grid[2]] * self.batch_size
        return [t * h * w for t, h, w in self.sample_grids]

    @property
    def total_tokens(self) -> int:
        """Full-clip tokens of the whole batch (what the target encoder runs)."""
        return sum(self.sample_tokens)

    def to(self, device: Any, non_blocking: bool = True) -> "MaskBatch":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, (torch.Tensor, ScatterMap)) else v
        return MaskBatch(**kw)

    def for_type(self, m: int) -> "MaskBatch":
        """The sequences of mask type `m` alone (a 1-type batch; its targets keep type id m, so the
        predictor picks mask token m). Device-side slices at host-side offsets: no sync."""
        B = self.batch_size
        s0, s1 = m * B, (m + 1) * B
        c0, c1 = sum(self.ctx_lengths[:s0]), sum(self.ctx_lengths[:s1])
        t0, t1 = self.tgt_type_bounds[m], self.tgt_type_bounds[m + 1]
        p0 = c0 + t0  # predictor rows of earlier sequences: their context and targets
        ctx_len, tgt_len = self.ctx_lengths[s0:s1], self.tgt_lengths[s0:s1]
        mixed = {}
        if self.mixed:
            mixed = dict(sample_grids=self.sample_grids, sample_offsets=self.sample_offsets, grids=self.grids,
                         ctx_pos_ids=self.ctx_pos_ids[c0:c1], tgt_pos_ids=self.tgt_pos_ids[t0:t1],
                         pred_pos_ids=self.pred_pos_ids[p0:c1 + t1])
        return MaskBatch(
            grid=self.grid, batch_size=B, num_types=1,
            ctx_idx=self.ctx_idx[c0:c1], ctx_token_ids=self.ctx_token_ids[c0:c1],
            ctx_cu_seqlens=self.ctx_cu_seqlens[s0:s1 + 1] - c0, ctx_max_seqlen=max(ctx_len),
            tgt_idx=self.tgt_idx[t0:t1], tgt_token_ids=self.tgt_token_ids[t0:t1], tgt_type=self.tgt_type[t0:t1],
            tgt_type_bounds=[0, t1 - t0],
            pred_cu_seqlens=self.pred_cu_seqlens[s0:s1 + 1] - p0,
            pred_max_seqlen=max(a + b for a, b in zip(ctx_len, tgt_len)),
            pred_token_ids=self.pred_token_ids[p0:c1 + t1], pred_ctx_slot=self.pred_ctx_slot[c0:c1] - p0,
            pred_tgt_slot=self.pred_tgt_slot[t0:t1] - p0, ctx_lengths=ctx_len, tgt_lengths=tgt_len, **mixed)

    def pin_memory(self) -> "MaskBatch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, (torch.Tensor, ScatterMap)):
                kw[k] = v.pin_memory()
        return MaskBatch(**kw)


def _cu(lengths: Sequence[int]) -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    if lengths:
        out[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    return out


def pack_masks(ctx: list[list[torch.Tensor]], tgt: list[list[torch.Tensor]],
               grid: tuple[int, int, int], sample_grids: Optional[Sequence[tuple[int, int, int]]] = None) -> MaskBatch:
    """ctx[m][b], tgt[m][b]: sorted token ids of sample b under mask type m -> MaskBatch.

    sample_grids: each sample's grid when they differ (the mixed layout); None: all on `grid`."""
    M, B = len(ctx), len(ctx[0])
    N = grid[0] * grid[1] * grid[2]
    if sample_grids is not None and len({tuple(g) for g in sample_grids}) == 1:
        grid, sample_grids = tuple(sample_grids[0]), None
        N = grid[0] * grid[1] * grid[2]
    ctx_seq = [c for per_type in ctx for c in per_type]
    tgt_seq = [t for per_type in tgt for t in per_type]
    sample = torch.arange(B).repeat(M)  # sample of each sequence
    ctx_len = [int(c.numel()) for c in ctx_seq]
    tgt_len = [int(t.numel()) for t in tgt_seq]
    ctx_ids = torch.cat(ctx_seq).long()
    tgt_ids = torch.cat(tgt_seq).long()
    ctx_sample = torch.repeat_interleave(sample, torch.tensor(ctx_len))
    tgt_sample = torch.repeat_interleave(sample, torch.tensor(tgt_len))
    ctx_cu, tgt_cu = _cu(ctx_len), _cu(tgt_len)
    S = M * B
    ctx_seq_id = torch.repeat_interleave(torch.arange(S), torch.tensor(ctx_len))
    tgt_seq_id = torch.repeat_interleave(torch.arange(S), torch.tensor(tgt_len))
    # In sequence s the predictor sees [ctx_s ; tgt_s]; rows before it hold tgt_cu[s] earlier targets.
    mixed = {}
    if sample_grids is None:
        ctx_flat, tgt_flat = ctx_sample * N + ctx_ids, tgt_sample * N + tgt_ids
    else:
        sample_grids = [tuple(g) for g in sample_grids]
        sizes = [t * h * w for t, h, w in sample_grids]
        offsets = [0] + np.cumsum(sizes).tolist()
        grids = list(dict.fromkeys(sample_grids))  # distinct, in order of first appearance
        table_base = dict(zip(grids, [0] + np.cumsum([t * h * w for t, h, w in grids]).tolist()))
        off_B = torch.tensor(offsets[:-1], dtype=torch.int64)
        tab_B = torch.tensor([table_base[g] for g in sample_grids], dtype=torch.int64)
        ctx_flat, tgt_flat = off_B[ctx_sample] + ctx_ids, off_B[tgt_sample] + tgt_ids
        ctx_pos, tgt_pos = tab_B[ctx_sample] + ctx_ids, tab_B[tgt_sample] + tgt_ids
        mixed = dict(sample_grids=sample_grids, sample_offsets=offsets, grids=grids,
                     ctx_pos_ids=ctx_pos, tgt_pos_ids=tgt_pos)
        grid = max(grids, key=lambda g: g[0] * g[1] * g[2])  # the largest (display only)
    ctx_slot = torch.arange(ctx_ids.numel()) + tgt_cu.long()[ctx_seq_id]
    tgt_slot = torch.arange(tgt_ids.numel()) + ctx_cu.long()[tgt_seq_id + 1]
    pred_ids = torch.empty(ctx_ids.numel() + tgt_ids.numel(), dtype=torch.int64)
    pred_ids[ctx_slot] = ctx_ids
    pred_ids[tgt_slot] = tgt_ids
    if mixed:
        pred_pos = torch.empty_like(pred_ids)
        pred_pos[ctx_slot] = mixed["ctx_pos_ids"]
        pred_pos[tgt_slot] = mixed["tgt_pos_ids"]
        mixed["pred_pos_ids"] = pred_pos
    per_type_tgt = [sum(tgt_len[m * B:(m + 1) * B]) for m in range(M)]
    rows = B * N if sample_grids is None else mixed["sample_offsets"][-1]
    return MaskBatch(
        grid=tuple(grid), batch_size=B, num_types=M,
        ctx_idx=ctx_flat, ctx_token_ids=ctx_ids, ctx_cu_seqlens=ctx_cu,
        ctx_max_seqlen=max(ctx_len),
        tgt_idx=tgt_flat, tgt_token_ids=tgt_ids,
        tgt_type=torch.repeat_interleave(torch.arange(M), torch.tensor(per_type_tgt)),
        tgt_type_bounds=[0] + np.cumsum(per_type_tgt).tolist(),
        pred_cu_seqlens=ctx_cu + tgt_cu, pred_max_seqlen=max(a + b for a, b in zip(ctx_len, tgt_len)),
        pred_token_ids=pred_ids, pred_ctx_slot=ctx_slot, pred_tgt_slot=tgt_slot,
        ctx_lengths=ctx_len, tgt_lengths=tgt_len, **mixed, ctx_scatter=scatter_map(ctx_flat, rows),
    )


class MultiBlockMasker:
    """Draws the masks of one batch as a pure function of (seed, step, global slot, grid)."""

    def __init__(self, cfg: MaskConfig, grid: tuple[int, int, int]):
        cfg.validate()
        self.cfg = cfg
        self.grid = tuple(grid)

    def sample(self, batch_size: int, step: int, first_slot: int = 0,
               grids: Optional[Sequence[tuple[int, int, int]]] = None,
               slots: Optional[Sequence[int]] = None) -> tuple[list, list]:
        """ctx[m][b], tgt[m][b] token-id lists of slots first_slot .. first_slot + batch_size - 1 (or
        `slots`) of micro-step `step`, each on its grid (`grids`, default the masker's), truncated if
        `truncate: batch_min`. The block shape of a grid reuses the step's shape draws (key (seed,
        step, type)), so one grid's samples share a shape and a uniform batch draws what it always did."""
        slots = list(range(first_slot, first_slot + batch_size)) if slots is None else list(slots)
        grids = [self.grid] * len(slots) if grids is None else [tuple(g) for g in grids]
        if len(grids) != len(slots):
            raise ValueError(f"MultiBlockMasker: {len(grids)} grids for {len(slots)} samples")
        ctx_all, tgt_all = [], []
        for m, spec in enumerate(self.cfg.types):
            shapes = {g: sample_block_shape(spec, g, _generator(self.cfg.seed, step, m, 0xB10C))  # same on every rank
                      for g in dict.fromkeys(grids)}
            pairs = [sample_context(spec, g, shapes[g], _generator(self.cfg.seed, step, m, slot, 0x9051),
                                    f"mask.types[{m}]")
                     for slot, g in zip(slots, grids)]
            ctx, tgt = [p[0] for p in pairs], [p[1] for p in pairs]
            if self.cfg.truncate == "batch_min":
                kc, kt = min(c.numel() for c in ctx), min(t.numel() for t in tgt)
                ctx, tgt = [c[:kc] for c in ctx], [t[:kt] for t in tgt]
            ctx_all.append(ctx)
            tgt_all.append(tgt)
        return ctx_all, tgt_all

    def __call__(self, batch_size: int, step: int, first_slot: int = 0,
                 grids: Optional[Sequence[tuple[int, int, int]]] = None,
                 slots: Optional[Sequence[int]] = None) -> MaskBatch:
        """The packed MaskBatch of `sample`; with `grids` that differ, the mixed-shape layout."""
        ctx, tgt = self.sample(batch_size, step, first_slot, grids, slots)
        if grids is None:
            return pack_masks(ctx, tgt, self.grid)
        return pack_masks(ctx, tgt, tuple(grids[0]), grids)
