"""The training step core (`vjepa_scale.train.step`): StepCore on a plain module against a hand-written
step, gradient accumulation, the per-mask-type (reference-style) path against the packed one, and
`MaskBatch.for_type` against packing one mask type alone."""
import copy

import pytest
import torch

from helpers import tiny_config
from vjepa_scale.data.batch import Batch
from vjepa_scale.masks import MultiBlockMasker, pack_masks
from vjepa_scale.models import JEPA, compute_targets, make_target_encoder
from vjepa_scale.train.ema import ShardedEMA
from vjepa_scale.train.step import StepCore, TorchEngine


def _setup(truncate="none", backend="padded", B=3):
    cfg = tiny_config(batch_size=B, backend=backend)
    cfg.mask.truncate = truncate
    torch.manual_seed(0)
    jepa = JEPA(cfg)
    target = make_target_encoder(jepa.encoder)
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    g = torch.Generator().manual_seed(1)
    batches = [Batch(torch.randn(B, 3, 8, 64, 64, generator=g), torch.zeros(B, dtype=torch.long), masker(B, step=s),
                     s, list(range(B))) for s in range(2)]
    return cfg, jepa, target, batches


def _core(jepa, target, clip=1.0, accum=1, **kw):
    opt = torch.optim.AdamW(jepa.parameters(), lr=1e-3, weight_decay=0.05)
    ema = ShardedEMA(jepa.encoder, target, {n: p.detach().clone() for n, p in target.named_parameters()}, 0, 1)
    return StepCore(TorchEngine(jepa, opt, clip, accum), target, ema, torch.device("cpu"), **kw)


def test_step_core_equals_hand_written_step():
    """One StepCore step == target forward, loss, backward, clip, AdamW, fp32 EMA written out here."""
    cfg, jepa, target, (b, _) = _setup()
    ref, ref_target = copy.deepcopy(jepa), copy.deepcopy(target)
    core = _core(jepa, target, clip=0.05, global_norm=False)
    loss = core.train_step([b], 0.9, 0)

    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.05)
    with torch.no_grad():
        tg = compute_targets(ref_target, b.video, b.masks)
    want = ref(b.video, b.masks, tg)
    want.backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    assert norm > 0.05  # the clip was active
    opt.step()
    assert float(loss) == float(want.detach())
    # for the log: each mask type's loss (their mean is the loss) and the spread of the target features
    core_stats = core.last_stats
    types = core_stats["loss_types"]
    assert types.shape == (2,) and float(types.mean()) == float(loss) and float(types[0]) != float(types[1])
    assert float(core_stats["target_std"]) == pytest.approx(float(tg.std(dim=0, correction=0).mean()), rel=1e-6)
    assert 0.5 < float(core_stats["target_std"]) < 1.5  # layer-normed features of a random encoder: about 1
    for p, q in zip(jepa.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    for t, t0, o in zip(target.parameters(), ref_target.parameters(), ref.encoder.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o, rtol=0, atol=3e-7)  # lerp vs this rounding
    assert max((t - t0).abs().max().item() for t, t0 in zip(target.parameters(), ref_target.parameters())) > 1e-6


def test_grad_accumulation_averages_micro_batches():
    """grad_accum=2 over two micro-batches == one step on the mean of their losses; one optimizer step."""
    cfg, jepa, target, batches = _setup()
    ref, ref_target = copy.deepcopy(jepa), copy.deepcopy(target)
    core = _core(jepa, target, clip=0.0, accum=2, global_norm=False)
    losses = [core.micro_step(b, 0) for b in batches]
    assert core.engine.micro_steps == 2
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.05)
    total = 0
    for b in batches:
        with torch.no_grad():
            tg = compute_targets(ref_target, b.video, b.masks)
        total = total + ref(b.video, b.masks, tg) / 2
    total.backward()
    opt.step()
    assert float(total.detach()) == pytest.approx(float(sum(losses) / 2), rel=1e-6)
    for p, q in zip(jepa.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


@pytest.mark.parametrize("truncate", ["batch_min", "none"])
def test_per_type_passes_equal_packed_pass(truncate):
    """The reference-style path (one encoder + one predictor call per mask type, padded attention) gives
    the packed path's loss and gradients within fp32 rounding, with and without truncation."""
    cfg, jepa, target, (b, _) = _setup(truncate)
    if truncate == "batch_min":
        for m in range(2):
            assert len(set(b.masks.ctx_lengths[3 * m:3 * m + 3])) == 1
    tg = compute_targets(target, b.video, b.masks)
    grads = []
    for per_type in (False, True):
        jepa.zero_grad()
        loss = jepa(b.video, b.masks, tg, per_type=per_type)
        loss.backward()
        grads.append((float(loss), [p.grad.clone() for p in jepa.parameters()]))
    (l0, g0), (l1, g1) = grads
    assert l1 == pytest.approx(l0, rel=1e-5)
    for a, c in zip(g0, g1):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
    # a global per-type norm is applied per type too; each path gives the same per-type losses
    norm = torch.tensor([5.0, 7.0])
    (l0, t0), (l1, t1) = (jepa(b.video, b.masks, tg, norm, per_type=p, with_types=True) for p in (False, True))
    assert float(l1) == pytest.approx(float(l0), rel=1e-5) and float(l0) == float(t0.mean())
    torch.testing.assert_close(t1, t0, rtol=1e-5, atol=0)


def test_for_type_equals_packing_one_type():
    cfg = tiny_config(batch_size=3)
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    ctx, tgt = masker.sample(3, step=4)
    full = pack_masks(ctx, tgt, cfg.grid)
    for m in range(2):
        sub, alone = full.for_type(m), pack_masks([ctx[m]], [tgt[m]], cfg.grid)
        for f in ("ctx_idx", "ctx_token_ids", "ctx_cu_seqlens", "tgt_idx", "tgt_token_ids", "pred_cu_seqlens",
                  "pred_token_ids", "pred_ctx_slot", "pred_tgt_slot"):
            assert torch.equal(getattr(sub, f), getattr(alone, f)), (m, f)
        for f in ("ctx_max_seqlen", "pred_max_seqlen", "tgt_type_bounds", "ctx_lengths", "tgt_lengths", "num_types"):
            assert getattr(sub, f) == getattr(alone, f), (m, f)
        assert torch.equal(sub.tgt_type, torch.full_like(alone.tgt_type, m))  # keeps its mask token


def test_guard_drops_a_nan_step_of_a_plain_torch_optimizer():
    """A plain torch optimizer has no overflow check (what the bench's torch row steps): the guard skips
    its update itself, so a NaN batch leaves weights, Adam state and EMA target as they were, and the
    next finite step trains."""
    from vjepa_scale.config import OptimConfig
    from vjepa_scale.train.guard import DivergenceGuard

    cfg, jepa, target, (b, b2) = _setup()
    guard = DivergenceGuard(3, OptimConfig())
    core = _core(jepa, target, guard=guard)
    core.train_step([b], 0.9, 0)
    before = copy.deepcopy((jepa.state_dict(), target.state_dict()))
    nan = Batch(torch.full_like(b2.video, float("nan")), b2.label, b2.masks, b2.step, b2.index)
    loss = core.train_step([nan], 0.9, 1)
    assert not torch.isfinite(loss) and guard.skipped_steps == 1
    assert all(torch.equal(v, before[0][k]) for k, v in jepa.state_dict().items())
    assert all(torch.equal(v, before[1][k]) for k, v in target.state_dict().items())
    assert torch.isfinite(core.train_step([b2], 0.9, 2))
    assert any(not torch.equal(v, before[0][k]) for k, v in jepa.state_dict().items())
