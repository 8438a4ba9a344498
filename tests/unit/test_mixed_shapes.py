"""Mixed shapes in one packed batch: clips of different lengths and sizes and images (clips of one
tubelet) through encoder, predictor and target equal each sample run alone; masks per shape."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.mixed import MixedVideo
from vjepa_scale.models import JEPA, compute_targets, make_target_encoder
from vjepa_scale.models.vit import Packed

# (frames, crop) of the samples: 8 x 64 (grid 4x4x4), 4 x 96 (2x6x6), an image (one tubelet: 1x4x4)
SHAPES = [(8, 64), (4, 96), (2, 64), (8, 64), (4, 96)]


def _grid(frames, crop, cfg):
    return (frames // cfg.model.tubelet_size, crop // cfg.model.patch_size, crop // cfg.model.patch_size)


def _ctx_packed(masks):
    if masks.mixed:
        return Packed(masks.ctx_cu_seqlens, masks.ctx_max_seqlen, masks.ctx_pos_ids, grids=masks.grids)
    return Packed(masks.ctx_cu_seqlens, masks.ctx_max_seqlen, masks.ctx_token_ids)


def _mixed_setup(pos_embed, backend):
    torch.manual_seed(0)
    cfg = tiny_config(pos_embed=pos_embed, backend=backend)
    model = JEPA(cfg).eval()
    with torch.no_grad():
        model.predictor.mask_tokens.normal_()
    target = make_target_encoder(model.encoder)
    clips = [torch.randn(3, f, c, c) for f, c in SHAPES]
    clips[2] = clips[2][:, :1].expand(3, 2, 64, 64).clone()  # an image repeated to one tubelet
    video, order = MixedVideo.from_clips(clips)
    slots = [10 + i for i in order]
    grids = [_grid(*SHAPES[i], cfg) for i in order]
    return cfg, model, target, clips, video, order, slots, grids


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
@pytest.mark.parametrize("backend", ["bucketed", "padded", "nested"])
def test_mixed_packed_batch_equals_each_sample_alone(pos_embed, backend):
    cfg, model, target, clips, video, order, slots, grids = _mixed_setup(pos_embed, backend)
    assert isinstance(video, MixedVideo) and len(video.groups) == 3
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    masks = masker(len(order), step=5, grids=grids, slots=slots)
    assert masks.mixed and masks.sample_grids == grids
    B, M = len(order), masks.num_types
    with torch.no_grad():
        enc = model.encoder(video, masks.ctx_idx, _ctx_packed(masks))
        pred = model.predictor(enc, masks)
        tgt = compute_targets(target, video, masks)
        for b in range(B):
            alone_video = clips[order[b]][None]
            one = MultiBlockMasker(cfg.mask, grids[b])(1, step=5, first_slot=slots[b])
            assert not one.mixed
            enc_one = model.encoder(alone_video, one.ctx_idx, _ctx_packed(one))
            pred_one = model.predictor(enc_one, one)
            tgt_one = compute_targets(target, alone_video, one)
            for m in range(M):
                s = m * B + b
                c0, c1 = sum(masks.ctx_lengths[:s]), sum(masks.ctx_lengths[:s + 1])
                t0, t1 = sum(masks.tgt_lengths[:s]), sum(masks.tgt_lengths[:s + 1])
                oc0, oc1 = sum(one.ctx_lengths[:m]), sum(one.ctx_lengths[:m + 1])
                ot0, ot1 = sum(one.tgt_lengths[:m]), sum(one.tgt_lengths[:m + 1])
                assert (c1 - c0, t1 - t0) == (oc1 - oc0, ot1 - ot0)
                assert (enc[c0:c1] - enc_one[oc0:oc1]).abs().max() <= 1e-5
                assert (pred[t0:t1] - pred_one[ot0:ot1]).abs().max() <= 1e-5
                assert (tgt[t0:t1] - tgt_one[ot0:ot1]).abs().max() <= 1e-5


def test_mixed_loss_is_the_global_per_type_token_mean():
    """The loss of a mixed batch weighs every target token alike: per mask type, the mean over all its
    target tokens across samples (a large clip counts by its token count, not as one sample)."""
    cfg, model, target, clips, video, order, slots, grids = _mixed_setup("rope", "bucketed")
    masks = MultiBlockMasker(cfg.mask, cfg.grid)(len(order), step=1, grids=grids, slots=slots)
    with torch.no_grad():
        tgt = compute_targets(target, video, masks)
        loss = model(video, masks, tgt)
        pred = model.predict(video, masks)
    per_type = [(pred[a:b] - tgt[a:b]).abs().mean() for a, b in zip(masks.tgt_type_bounds[:-1],
                                                                    masks.tgt_type_bounds[1:])]
    assert torch.allclose(loss, torch.stack(per_type).mean(), atol=1e-6)


def test_uniform_batch_layout_unchanged():
    """All samples of one grid: the plain layout (offsets b*N, no pos ids), whatever `grids` says."""
    cfg = tiny_config()
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    a = masker(3, step=2, first_slot=3)
    b = masker(3, step=2, grids=[cfg.grid] * 3, slots=[3, 4, 5])
    assert not b.mixed and b.grid == a.grid
    for k in ("ctx_idx", "tgt_idx", "pred_token_ids", "ctx_cu_seqlens", "pred_cu_seqlens"):
        assert torch.equal(getattr(a, k), getattr(b, k))


def test_masks_keep_their_statistics_per_shape():
    """In a mixed batch each sample's masks are exactly those of a uniform batch of its shape (same
    slot), the block shape is shared by the samples of one grid, and the target share per grid stays
    near a uniform batch's on that grid."""
    cfg = tiny_config()
    g_a, g_b = (4, 4, 4), (2, 6, 6)
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    grids = [g_a, g_b] * 20
    slots = list(range(40))
    ctx, tgt = masker.sample(40, step=7, grids=grids, slots=slots)
    for g in (g_a, g_b):
        mine = [i for i in range(40) if grids[i] == g]
        u_ctx, u_tgt = MultiBlockMasker(cfg.mask, g).sample(40, step=7, first_slot=0)
        for m in range(len(cfg.mask.types)):
            for i in mine:
                assert torch.equal(ctx[m][i], u_ctx[m][i]) and torch.equal(tgt[m][i], u_tgt[m][i])
    # the packed flat indices address each sample's own token range
    masks = masker(40, step=7, grids=grids, slots=slots)
    off = masks.sample_offsets
    assert off[-1] == sum(t * h * w for t, h, w in grids) == masks.total_tokens
    B = 40
    for m in range(len(cfg.mask.types)):
        for b in range(B):
            s = m * B + b
            c0, c1 = sum(masks.ctx_lengths[:s]), sum(masks.ctx_lengths[:s + 1])
            assert torch.equal(masks.ctx_idx[c0:c1] - off[b], ctx[m][b])
            assert masks.ctx_idx[c0:c1].min() >= off[b] and masks.ctx_idx[c0:c1].max() < off[b + 1]


def test_mixed_bench_rows():
    """`tools/bench.py --suite mixed` (CPU sizes): packed, padded-to-largest and one-shape-per-step rows;
    the padded row computes more tokens for the same clips."""
    from vjepa_scale.bench import run_suite

    rows = {r["impl"]: r for r in run_suite("mixed", "cpu", True)}
    assert set(rows) == {"packed", "padded", "per_step"}
    assert rows["packed"]["computed_tokens"] == rows["per_step"]["computed_tokens"] < rows["padded"]["computed_tokens"]
    assert all(r["time_ms"] > 0 and r["tokens_per_s"] > 0 for r in rows.values())
