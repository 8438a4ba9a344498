"""Multi-block masks: reference statistics at 384 px, packing layout, reproducibility, truncation."""
from __future__ import annotations

import numpy as np
import torch

from vjepa_scale.config import MaskConfig, MaskSpec
from vjepa_scale.masks import MultiBlockMasker

GRID_384 = (8, 24, 24)


def test_context_fractions_at_384():
    masker = MultiBlockMasker(MaskConfig(), GRID_384)  # default = the reference's two mask types
    B, N = 10, 8 * 24 * 24
    frac = [[], []]
    for step in range(40):
        mb = masker(B, step)
        for m in range(2):
            frac[m] += [n / N for n in mb.ctx_lengths[m * B:(m + 1) * B]]
    assert abs(100 * np.mean(frac[0]) - 38.9) <= 2.0, np.mean(frac[0])
    assert abs(100 * np.mean(frac[1]) - 19.3) <= 2.0, np.mean(frac[1])
    assert np.std(frac[0]) > 0.02  # lengths really vary per sample


def test_context_and_target_partition_each_clip():
    masker = MultiBlockMasker(MaskConfig(), GRID_384)
    ctx, tgt = masker.sample(4, step=1)
    for m in range(2):
        for c, t in zip(ctx[m], tgt[m]):
            both = torch.cat([c, t]).sort().values
            assert torch.equal(both, torch.arange(8 * 24 * 24))
            assert torch.all(c[1:] > c[:-1])


def test_packed_layout():
    masker = MultiBlockMasker(MaskConfig(), (4, 6, 6))
    B, N = 3, 4 * 6 * 6
    ctx, tgt = masker.sample(B, step=0)
    mb = masker(B, step=0)
    assert mb.ctx_cu_seqlens.dtype == torch.int32 and mb.pred_cu_seqlens.dtype == torch.int32
    assert isinstance(mb.ctx_max_seqlen, int) and mb.ctx_max_seqlen == max(mb.ctx_lengths)
    for m in range(2):
        for b in range(B):
            s = m * B + b
            a, e = mb.ctx_cu_seqlens[s].item(), mb.ctx_cu_seqlens[s + 1].item()
            assert torch.equal(mb.ctx_idx[a:e], b * N + ctx[m][b])
            a = sum(mb.tgt_lengths[:s])
            e = a + mb.tgt_lengths[s]
            assert torch.equal(mb.tgt_idx[a:e], b * N + tgt[m][b])
            assert torch.all(mb.tgt_type[a:e] == m)
            # predictor rows: [ctx_s ; tgt_s] starting at pred_cu_seqlens[s]
            p0 = mb.pred_cu_seqlens[s].item()
            nc = len(ctx[m][b])
            assert torch.equal(mb.pred_token_ids[p0:p0 + nc], ctx[m][b])
            assert torch.equal(mb.pred_token_ids[p0 + nc:mb.pred_cu_seqlens[s + 1].item()], tgt[m][b])
    assert mb.tgt_type_bounds[-1] == mb.tgt_idx.numel()
    assert sorted(torch.cat([mb.pred_ctx_slot, mb.pred_tgt_slot]).tolist()) == list(range(mb.pred_token_ids.numel()))


def test_reproducible_per_step_and_slot():
    masker = MultiBlockMasker(MaskConfig(), GRID_384)
    a, b = masker(4, step=7, first_slot=0), masker(4, step=7, first_slot=0)
    assert torch.equal(a.ctx_idx, b.ctx_idx) and torch.equal(a.tgt_idx, b.tgt_idx)
    assert not torch.equal(a.ctx_idx, masker(4, step=8, first_slot=0).ctx_idx)
    other_rank = masker(4, step=7, first_slot=4)
    assert not torch.equal(a.ctx_idx, other_rank.ctx_idx)


def test_masks_do_not_depend_on_how_slots_are_split_over_ranks():
    """Slots 0-5 of a micro-step drawn by one rank == slots 0-1, 2-3, 4-5 drawn by three ranks."""
    masker = MultiBlockMasker(MaskConfig(), GRID_384)
    ctx1, tgt1 = masker.sample(6, step=3, first_slot=0)
    parts = [masker.sample(2, step=3, first_slot=s) for s in (0, 2, 4)]
    for m in range(2):
        assert all(torch.equal(x, y) for x, y in zip(ctx1[m], [c for p in parts for c in p[0][m]]))
        assert all(torch.equal(x, y) for x, y in zip(tgt1[m], [t for p in parts for t in p[1][m]]))


def test_block_shape_shared_across_batch_and_ranks():
    # One block per clip, no overlap possible: target size = block size, so equal within a step.
    cfg = MaskConfig(types=[MaskSpec(num_blocks=1, spatial_scale=(0.1, 0.4))])
    masker = MultiBlockMasker(cfg, GRID_384)
    for step in range(3):
        sizes = {n for r in (0, 1) for n in masker(5, step, first_slot=5 * r).tgt_lengths}
        assert len(sizes) == 1


def test_truncate_batch_min_equal_lengths():
    masker = MultiBlockMasker(MaskConfig(truncate="batch_min"), GRID_384)
    mb = masker(6, step=2)
    for m in range(2):
        assert len(set(mb.ctx_lengths[m * 6:(m + 1) * 6])) == 1
        assert len(set(mb.tgt_lengths[m * 6:(m + 1) * 6])) == 1
    full = MultiBlockMasker(MaskConfig(), GRID_384)(6, step=2)
    assert sum(mb.ctx_lengths) < sum(full.ctx_lengths)


def test_max_keep_and_temporal_keep():
    cfg = MaskConfig(types=[MaskSpec(num_blocks=2, spatial_scale=(0.2, 0.2), max_keep=50,
                                     max_temporal_keep=0.5)])
    ctx, tgt = MultiBlockMasker(cfg, (8, 12, 12)).sample(3, step=0)
    for c in ctx[0]:
        assert 0 < len(c) <= 50
        assert int(c.max()) < 4 * 144  # only the first half of the time steps



def test_context_scatter_map_is_built_with_the_masks():
    """`ctx_scatter` lists, for every token row of the batch, the packed context positions that gathered
    it, in packed order (uniform and mixed-shape batches); batches derived per mask type carry none."""
    masker = MultiBlockMasker(MaskConfig(), (4, 6, 6))
    uniform = masker(3, step=2)
    mixed = masker(3, step=2, grids=[(4, 6, 6), (2, 4, 4), (4, 6, 6)])
    for masks, rows in ((uniform, 3 * 144), (mixed, 2 * 144 + 32)):
        smap = masks.ctx_scatter
        assert smap.rows == rows and smap.order.numel() == masks.ctx_idx.numel()
        for r in range(rows):
            got = smap.order[smap.rowptr[r]:smap.rowptr[r + 1]].tolist()
            assert got == (masks.ctx_idx == r).nonzero().squeeze(1).tolist()
        moved = masks.to("cpu")
        assert torch.equal(moved.ctx_scatter.order, smap.order)
    assert uniform.for_type(1).ctx_scatter is None
