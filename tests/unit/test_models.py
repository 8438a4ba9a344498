"""Encoder, predictor and objective: packing equals per-sequence compute, sizes, gradients, errors."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from vjepa_scale.config import Config, ConfigError, DataConfig, MaskConfig, MaskSpec, ModelConfig
from vjepa_scale.masks import MultiBlockMasker, pack_masks
from vjepa_scale.models import JEPA, Predictor, VisionTransformer3D, compute_targets, make_target_encoder
from vjepa_scale.models.pos_embed import Rope3D, interpolate_sincos, sincos_3d
from vjepa_scale.models.vit import Packed, checkpoint_plan, set_activation_checkpointing


def _setup(pos_embed, backend="auto", seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config(pos_embed=pos_embed, backend=backend)
    model = JEPA(cfg).eval()
    # Non-zero mask tokens so the test sees which mask type each sequence uses.
    with torch.no_grad():
        model.predictor.mask_tokens.normal_()
    video = torch.randn(cfg.data.batch_size, 3, cfg.data.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    ctx, tgt = MultiBlockMasker(cfg.mask, cfg.grid).sample(cfg.data.batch_size, step=3)
    return cfg, model, video, ctx, tgt


def _alone(ctx, tgt, m, b):
    """The same layout with every sequence but (m, b) emptied: that sequence computed alone."""
    keep = lambda lists: [[x if (i, j) == (m, b) else x[:0] for j, x in enumerate(row)] for i, row in enumerate(lists)]
    return keep(ctx), keep(tgt)


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
@pytest.mark.parametrize("backend", ["nested", "padded"])
def test_packed_equals_each_sequence_alone(pos_embed, backend):
    cfg, model, video, ctx, tgt = _setup(pos_embed, backend)
    masks = pack_masks(ctx, tgt, cfg.grid)
    with torch.no_grad():
        enc_packed = model.encoder(video, masks.ctx_idx, Packed(masks.ctx_cu_seqlens, masks.ctx_max_seqlen,
                                                                 masks.ctx_token_ids))
        pred_packed = model.predictor(enc_packed, masks)
        B = cfg.data.batch_size
        for m in range(len(ctx)):
            for b in range(B):
                s = m * B + b
                one = pack_masks(*_alone(ctx, tgt, m, b), cfg.grid)
                enc_one = model.encoder(video, one.ctx_idx, Packed(one.ctx_cu_seqlens, one.ctx_max_seqlen,
                                                                    one.ctx_token_ids))
                pred_one = model.predictor(enc_one, one)
                c0, c1 = masks.ctx_cu_seqlens[s].item(), masks.ctx_cu_seqlens[s + 1].item()
                t0 = sum(masks.tgt_lengths[:s])
                t1 = t0 + masks.tgt_lengths[s]
                assert (enc_packed[c0:c1] - enc_one).abs().max() <= 1e-5
                assert (pred_packed[t0:t1] - pred_one).abs().max() <= 1e-5


def test_cross_sequence_attention_would_be_detected():
    """The packing test is sensitive: merging two sequences into one changes the outputs."""
    cfg, model, video, ctx, tgt = _setup("sincos")
    masks = pack_masks(ctx, tgt, cfg.grid)
    cu = masks.ctx_cu_seqlens
    merged = torch.cat([cu[:1], cu[2:]])  # sequences 0 and 1 become one
    with torch.no_grad():
        a = model.encoder(video, masks.ctx_idx, Packed(cu, masks.ctx_max_seqlen, masks.ctx_token_ids))
        b = model.encoder(video, masks.ctx_idx, Packed(merged, int((merged[1:] - merged[:-1]).max()),
                                                        masks.ctx_token_ids))
    assert (a[: cu[2]] - b[: cu[2]]).abs().max() > 1e-3


def test_sincos_matches_reference_formula():
    D, grid = 30, (2, 3, 4)
    table = sincos_3d(D, grid)
    assert table.shape == (24, 30)
    d = 10  # 2 * ceil(30 / 6)
    n = 1 * 12 + 2 * 4 + 3  # t=1, h=2, w=3
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
    expect = torch.cat([torch.cat([(p * omega).sin(), (p * omega).cos()]) for p in (1.0, 2.0, 3.0)])
    torch.testing.assert_close(table[n], expect.float())
    assert interpolate_sincos(table, grid, grid) is table
    assert interpolate_sincos(table, grid, (4, 6, 8)).shape == (4 * 6 * 8, D)


def test_rope_tables_built_once_per_grid_and_indexed():
    rope = Rope3D(64, (4, 4, 4))  # chunks of 20 dims for t, h, w; 4 pass-through dims
    full_cos, full_sin = rope.full(torch.device("cpu"), torch.float32)
    assert full_cos.shape == (64, 1, 64) and rope.full(torch.device("cpu"), torch.float32)[0] is full_cos  # cached
    ids = torch.tensor([17, 0, 63, 17])
    cos, sin = rope.tables(ids, torch.float32)
    assert torch.equal(cos, full_cos[ids]) and torch.equal(sin, full_sin[ids])
    omega = 1.0 / 10000 ** (torch.arange(10, dtype=torch.float64) / 10)
    t, h, w = 1, 0, 1  # token 17 on a 4x4x4 grid
    expect = torch.cat([torch.cos(p * omega).repeat(2) for p in (t, h, w)] + [torch.ones(4, dtype=torch.float64)])
    torch.testing.assert_close(cos[0, 0], expect.float())
    torch.testing.assert_close(sin[0, 0, :20], torch.sin(t * omega).repeat(2).float())
    other = rope.tables(torch.tensor([17]), torch.bfloat16, grid=(2, 8, 8))[0]  # t=0, h=2, w=1 there
    assert other.dtype == torch.bfloat16
    assert rope.full(torch.device("cpu"), torch.bfloat16, (2, 8, 8))[0].shape == (128, 1, 64)
    assert torch.equal(other[0, 0, :20], torch.ones(20, dtype=torch.bfloat16))
    assert not torch.equal(other[0, 0, 20:40], torch.ones(20, dtype=torch.bfloat16))


@pytest.mark.parametrize("size,expected", [("large", 304e6), ("huge", 632e6)])
def test_parameter_counts(size, expected):
    with torch.device("meta"):
        enc = VisionTransformer3D(ModelConfig(size=size), (8, 24, 24))
    n = sum(p.numel() for p in enc.parameters())
    assert abs(n - expected) / expected < 0.01, n


def test_predictor_parameter_count():
    with torch.device("meta"):
        pred = Predictor(ModelConfig(size="huge"), 1280, (8, 24, 24), num_mask_types=2)
    n = sum(p.numel() for p in pred.parameters())
    assert abs(n - 22e6) / 22e6 < 0.03, n
    assert len(pred.transformer.blocks) == 12 and pred.dims.width == 384


def test_named_sizes():
    sizes = {"tiny": (192, 12, 3, 4.0), "small": (384, 12, 6, 4.0), "base": (768, 12, 12, 4.0),
             "large": (1024, 24, 16, 4.0), "huge": (1280, 32, 16, 4.0), "giant": (1408, 40, 16, 48 / 11)}
    for size, (w, d, h, r) in sizes.items():
        with torch.device("meta"):
            full = VisionTransformer3D(ModelConfig(size=size), (2, 2, 2))
            enc = VisionTransformer3D(ModelConfig(size=size, depth=1), (2, 2, 2))
        assert (full.dims.width, full.dims.depth, full.dims.num_heads) == (w, d, h)
        assert len(full.transformer.blocks) == d
        assert len(enc.transformer.blocks) == 1 and enc.transformer.blocks[0].attn.head_dim == w // h
        assert enc.transformer.blocks[0].attn.qkv.out_features == 3 * w
        assert enc.transformer.blocks[0].mlp.fc1.out_features == int(w * r)  # giant: 6144


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_gradients_reach_encoder_and_predictor_not_target(pos_embed):
    cfg, model, video, ctx, tgt = _setup(pos_embed)
    model.train()
    target = make_target_encoder(model.encoder)
    masks = pack_masks(ctx, tgt, cfg.grid)
    targets = compute_targets(target, video, masks)
    loss = model(video, masks, targets)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    assert not targets.requires_grad


def test_loss_matches_formula():
    from vjepa_scale.models import jepa_loss

    pred, tgt = torch.randn(10, 4), torch.randn(10, 4)
    bounds = [0, 6, 10]
    expect = 0.5 * ((pred[:6] - tgt[:6]).abs().mean() + (pred[6:] - tgt[6:]).abs().mean())
    torch.testing.assert_close(jepa_loss(pred, tgt, bounds, 1.0), expect)
    expect2 = 0.5 * (((pred[:6] - tgt[:6]).abs() ** 2).mean() / 2 + ((pred[6:] - tgt[6:]).abs() ** 2).mean() / 2)
    torch.testing.assert_close(jepa_loss(pred, tgt, bounds, 2.0), expect2)


def test_loss_with_global_type_norm_averages_to_the_global_mean():
    """Two ranks holding unequal token counts: with type_norm = global per-type counts / 2, the mean
    of their losses is the per-type token mean over both (not the mean of per-rank means)."""
    from vjepa_scale.models import jepa_loss

    g = torch.Generator().manual_seed(0)
    pred, tgt = torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g)
    r0, r1 = [0, 3, 10], [0, 6, 10]  # rank 0: 3 + 7 tokens, rank 1: 6 + 4 (its rows 10..19)
    norm = torch.tensor([(3 + 6) / 2, (7 + 4) / 2])
    p0, t0, p1, t1 = pred[:10], tgt[:10], pred[10:], tgt[10:]
    got = (jepa_loss(p0, t0, r0, 1.0, norm) + jepa_loss(p1, t1, r1, 1.0, norm)) / 2
    d = (pred - tgt).abs()
    type0 = torch.cat([d[0:3], d[10:16]]).mean()
    type1 = torch.cat([d[3:10], d[16:20]]).mean()
    torch.testing.assert_close(got, (type0 + type1) / 2)
    assert not torch.allclose(got, (jepa_loss(p0, t0, r0) + jepa_loss(p1, t1, r1)) / 2)
    torch.testing.assert_close(jepa_loss(p0, t0, r0, 1.0, torch.tensor([3.0, 7.0])), jepa_loss(p0, t0, r0))


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_activation_checkpointing_same_gradients(fraction):
    """Every block (1.0) or half of each stack (0.5) recomputed: the same gradients, and the recomputed
    blocks really run their forward a second time in the backward."""
    cfg, model, video, ctx, tgt = _setup("sincos")
    masks = pack_masks(ctx, tgt, cfg.grid)
    targets = compute_targets(make_target_encoder(model.encoder), video, masks)
    calls = []
    for i, blk in enumerate(model.encoder.transformer.blocks):
        blk.register_forward_pre_hook(lambda *_, i=i: calls.append(i))  # a recompute stops early: no post-hook
    model.train()
    model(video, masks, targets).backward()
    g1 = {n: p.grad.clone() for n, p in model.named_parameters()}
    depth = len(model.encoder.transformer.blocks)
    assert calls == list(range(depth))
    model.zero_grad()
    calls.clear()
    set_activation_checkpointing(model, fraction)
    assert sum(model.predictor.transformer.checkpointed) == round(fraction * cfg.model.pred_depth)
    model(video, masks, targets).backward()
    assert len(calls) == depth + round(fraction * depth)  # the recomputed blocks ran twice
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g1[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("depth,fraction,want", [
    (4, 0.0, [False] * 4), (4, 1.0, [True] * 4), (4, 0.5, [False, True, False, True]),
    (32, 0.25, [i % 4 == 3 for i in range(32)]), (12, 1 / 3, [i % 3 == 2 for i in range(12)]),
])
def test_checkpoint_plan_spreads_blocks_evenly(depth, fraction, want):
    assert checkpoint_plan(depth, fraction) == want


def _cfg(**kw):
    model = kw.pop("model", {})
    data = kw.pop("data", {})
    return Config(model=ModelConfig(**model), data=DataConfig(backend="synthetic", **data), **kw)


@pytest.mark.parametrize("cfg,needle", [
    (dict(model=dict(size="enormous")), "model.size"),
    (dict(model=dict(size="tiny", num_heads=5)), "model.num_heads"),
    (dict(model=dict(pred_num_heads=5)), "model.pred_num_heads"),
    (dict(data=dict(crop_size=200)), "data.crop_size"),
    (dict(data=dict(frames_per_clip=15)), "data.frames_per_clip"),
    (dict(mask=MaskConfig(types=[MaskSpec(spatial_scale=(0.0, 0.1))])), "mask.types[0].spatial_scale"),
])
def test_invalid_settings_name_the_key(cfg, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        _cfg(**cfg).validate()


def test_mask_leaving_no_context_names_the_mask():
    cfg = MaskConfig(types=[MaskSpec(num_blocks=1, spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0))])
    with pytest.raises(ConfigError, match=r"mask.types\[0\].*no context"):
        MultiBlockMasker(cfg, (4, 8, 8))(2, step=0)


def test_sincos_table_cache_follows_the_table():
    """Cached per-grid and multi-grid tables are reused while the table is unchanged, and all of them
    (multi-grid entries too) are dropped and rebuilt after the table changes in place."""
    from vjepa_scale.models.pos_embed import Positions

    pos = Positions("sincos", 48, 12, (4, 4, 4))
    a, b = (2, 4, 4), (4, 6, 6)
    one, multi = pos.additive(a, torch.float32), pos.additive_multi([a, b], torch.float32)
    assert pos.additive(a, torch.float32) is one and pos.additive_multi([a, b], torch.float32) is multi
    with torch.no_grad():
        pos.table.mul_(2.0)
    two = pos.additive(b, torch.float32)
    assert len(pos._additive) == 1  # every entry of the old version went, "multi" ones included
    torch.testing.assert_close(pos.additive_multi([a, b], torch.float32), 2 * multi)
    torch.testing.assert_close(two, 2 * multi[32:])


@pytest.mark.parametrize("mask_tokens", ["per_type", "shared"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_mask_token_gradient_sums_thousands_of_rows_accurately_in_bf16(device, mask_tokens):
    """DeepSpeed's bf16 engine keeps the predictor in bf16: each mask token's gradient sums one row per
    target token of its type (~10^4). It must match the fp32 sum to bf16 rounding (index_select's
    backward added the rows one by one in bf16 on CUDA, where the sum stalls far below the true value)."""
    cfg = ModelConfig(size="tiny", depth=1, pred_depth=1, pred_width=32, pred_num_heads=2, attention_backend="padded",
                      mask_tokens=mask_tokens)
    cfg.validate()
    grid = (8, 16, 16)
    masks = MultiBlockMasker(MaskConfig(), grid)(8, step=0).to(device)
    assert masks.tgt_type.numel() > 10_000
    torch.manual_seed(0)
    pred = Predictor(cfg, 192, grid, num_mask_types=2).to(device)
    ctx = torch.randn(masks.ctx_idx.numel(), 192, device=device)
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = Predictor(cfg, 192, grid, num_mask_types=2).to(device, dtype)
        model.load_state_dict(pred.state_dict())
        out = model(ctx.to(dtype), masks)
        out.float().sum().backward()
        grads[dtype] = model.mask_tokens.grad.float()
    ref = grads[torch.float32]
    assert ref.abs().max() > 1.0  # many rows summed
    assert (grads[torch.bfloat16] - ref).norm() <= 0.03 * ref.norm()


def test_shared_mask_token_serves_every_mask_type():
    """model.mask_tokens=shared: one (1, W) token; a target gets the same prediction whatever its mask type,
    and the token's gradient is the sum of what a per-type predictor's tokens get from each type."""
    torch.manual_seed(0)
    shared_cfg, per_type_cfg = tiny_config("rope", mask_tokens="shared"), tiny_config("rope")
    shared = JEPA(shared_cfg).predictor
    assert tuple(shared.mask_tokens.shape) == (1, shared_cfg.model.pred_width)
    with torch.no_grad():
        shared.mask_tokens.normal_()
    per_type = JEPA(per_type_cfg).predictor
    state = dict(shared.state_dict(), mask_tokens=shared.mask_tokens.detach().expand(2, -1).clone())
    per_type.load_state_dict(state)

    B = shared_cfg.data.batch_size
    ctx, tgt = MultiBlockMasker(shared_cfg.mask, shared_cfg.grid).sample(B, step=1)
    same_ctx, same_tgt = [ctx[0], ctx[0]], [tgt[0], tgt[0]]  # both mask types: the same context and targets
    masks = pack_masks(same_ctx, same_tgt, shared_cfg.grid)
    ctx_TD = torch.randn(masks.ctx_idx.numel() // 2, 192).repeat(2, 1)  # packed mask-type major
    out = shared(ctx_TD, masks)
    b = masks.tgt_type_bounds
    assert torch.equal(out[b[0]:b[1]], out[b[1]:b[2]])
    with torch.no_grad():
        kept = per_type.mask_tokens[1].clone()
        per_type.mask_tokens[1].add_(1.0)  # per type: the type-1 copy now predicts otherwise
        assert not torch.allclose(per_type(ctx_TD, masks)[b[1]:b[2]], out[b[1]:b[2]])
        per_type.mask_tokens[1].copy_(kept)  # exactly (x + 1 - 1 is not x in fp32)

    masks = pack_masks(ctx, tgt, shared_cfg.grid)
    ctx_TD = torch.randn(masks.ctx_idx.numel(), 192)
    weights = torch.randn(masks.tgt_idx.numel(), 192)
    (shared(ctx_TD, masks) * weights).sum().backward()
    (per_type(ctx_TD, masks) * weights).sum().backward()
    g = per_type.mask_tokens.grad
    assert g[0].abs().min() > 0 and g[1].abs().min() > 0  # both types contribute
    # one sum over both types' targets against two sums added: fp32 summation order (~1e-6 at |g| ~ 0.05)
    torch.testing.assert_close(shared.mask_tokens.grad, (g[0] + g[1])[None], rtol=1e-4, atol=1e-5)
