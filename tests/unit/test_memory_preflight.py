"""The pre-flight memory estimate (`vjepa_scale.train.memory`): ZeRO-stage sharding of the state,
activation checkpointing, and the verdict of `launch.preflight` on this machine: the vith384 recipe
(synthetic clips, CPU) is refused, the small CPU configs pass. tools/train.py refusing it before any
process group: integration/test_memory_preflight_e2e.py."""
from __future__ import annotations


import pytest
import torch

from helpers import tiny_config
from vjepa_scale.config import ConfigError, load_config
from vjepa_scale.train.launch import preflight, resolve_batch
from vjepa_scale.train.memory import (GiB, activation_bytes, available_bytes, context_fraction, estimate_memory,
                                      local_ranks, param_counts)

CPU = torch.device("cpu")


def test_param_counts_match_built_models():
    from vjepa_scale.models import JEPA

    cfg = tiny_config()
    jepa = JEPA(cfg)
    n = param_counts(cfg)
    assert n.online == sum(p.numel() for p in jepa.parameters())
    assert n.encoder == sum(p.numel() for p in jepa.encoder.parameters())


def test_zero_stages_shard_the_documented_state():
    """W=4 ranks, fp32: stage 3 shards weights, grads, optimizer, target and EMA; 2 grads, optimizer
    and EMA (the shadow follows the masters); 1 the optimizer and EMA; 0 nothing."""
    base = resolve_batch(load_config("vith384", ["data.backend=synthetic", "train.precision=fp32"]), 4)
    n = param_counts(base)
    P, E, W = n.online, n.encoder, 4
    want = {3: (P * 4 / W, P * 4 / W, P * 12 / W, E * 4 / W, E * 4 / W),
            2: (P * 4, P * 4 / W, P * 12 / W, E * 4, E * 4 / W),
            1: (P * 4, P * 4, P * 12 / W, E * 4, E * 4 / W),
            0: (P * 4, P * 4, P * 12, E * 4, E * 4)}
    for stage, expect in want.items():
        base.zero.stage = stage
        e = estimate_memory(base, W, torch.device("cuda"), n)
        got = (e.weights, e.gradients, e.optimizer, e.target, e.ema)
        assert got == tuple(int(x) for x in expect), stage
        assert e.build == 0  # only CPU devices build the fp32 models in the memory they train in
    assert estimate_memory(base, W, CPU, n).build == (P + 2 * E) * 4


def test_activation_estimate_scales_with_batch_and_checkpointing():
    cfg = resolve_batch(load_config("vith384", ["data.backend=synthetic", "data.global_batch_size=8"]), 1)
    n = param_counts(cfg)
    a8 = estimate_memory(cfg, 1, CPU, n).activations
    cfg.data.batch_size = 16
    assert estimate_memory(cfg, 1, CPU, n).activations == pytest.approx(2 * a8, rel=1e-6)
    cfg.model.activation_checkpointing = False
    assert estimate_memory(cfg, 1, CPU, n).activations > 5 * 2 * a8
    # 8 blocks of 15% of a frame leave about (0.85)^8 ~ 27% of the clip as context
    spec = cfg.mask.types[0]
    assert context_fraction(spec, 4608) == pytest.approx(0.85 ** 8)


def test_cpu_memory_is_shared_by_local_ranks(monkeypatch):
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_ranks() == 2
    one, _ = available_bytes(CPU, 1)
    two, how = available_bytes(CPU, 2)
    assert 0 < two <= one // 2 + 1 and "2 local rank(s)" in how


def test_vith384_refused_in_preflight_names_the_settings():
    cfg = load_config("vith384", ["data.backend=synthetic", "zero.stage=1", "model.activation_checkpointing=false"])
    with pytest.raises(ConfigError, match=r"needs about [\d.]+ GiB per rank .* but cpu has [\d.]+ GiB") as e:
        preflight(cfg, 1)
    msg = str(e.value)
    assert "set model.activation_checkpointing: true" in msg and "raise zero.stage (now 1) to 3" in msg
    # the check can be switched off
    cfg.train.memory_check = False
    assert preflight(cfg, 1).data.batch_size == 2400


@pytest.mark.parametrize("world", [1, 2])
def test_small_configs_pass(world):
    est_cap = 4 * GiB
    for cfg in (load_config("cpu_demo"), load_config("cpu_demo", ["model.depth=1", "data.crop_size=32"]),
                tiny_config()):
        if cfg.data.global_batch_size is None:  # tiny_config's per-rank batch gives way to a global one
            cfg.data.batch_size, cfg.data.global_batch_size = None, world * 2
        resolved = preflight(cfg, world)
        assert estimate_memory(resolved, world, CPU).total < est_cap


def test_activation_estimate_follows_the_largest_shape_and_the_token_budget():
    """Several clip shapes: every clip is counted at the largest shape; a token budget replaces the
    sampler window (clips of the smallest shape) by the budget's tokens."""
    small = ["data.backend=cpu", "data.frames_per_clip=16", "data.crop_size=256", "data.batch_size=8",
             "data.datasets=[{path: a.txt, kind: video}]"]
    big = [*small[:-1], "data.datasets=[{path: a.txt, kind: video, frames_per_clip: 64, crop_size: 384}]"]
    mixed = [*small[:-1], "data.datasets=[{path: a.txt, kind: video}, "
             "{path: b.txt, kind: video, frames_per_clip: 64, crop_size: 384}]"]
    est = {k: activation_bytes(load_config("vith384", o), 8, 2) for k, o in
           (("small", small), ("big", big), ("mixed", mixed))}
    assert est["mixed"] == est["big"] > 8 * est["small"]
    budget = resolve_batch(load_config("vith384", [*mixed, "data.tokens_per_batch=18432",
                                                   "data.global_batch_size=null"]), 1)
    assert budget.data.batch_size == 18432 // 2048  # the window: clips of the smallest shape
    assert activation_bytes(budget, budget.data.batch_size, 2) == pytest.approx(est["big"] / 8)  # one 64x384 clip


def _card(monkeypatch, gib):
    """This process sees one device of `gib` GiB (None: unknown memory)."""
    from vjepa_scale.train import memory

    monkeypatch.setattr(memory, "available_bytes",
                        lambda device, n: (None if gib is None else int(gib * GiB), f"a {gib} GiB test card"))


@pytest.mark.parametrize("gib", [40, 60, 1000, 10, None])
def test_auto_checkpointing_recomputes_the_fewest_blocks_that_fit(monkeypatch, gib):
    """`activation_checkpointing: auto`: the smallest k/depth whose estimate fits AUTO_FIT of the card,
    so one block fewer would not fit; every block when nothing smaller fits or the memory is unknown."""
    from vjepa_scale.train.memory import AUTO_FIT, resolve_checkpointing

    _card(monkeypatch, gib)
    cfg = resolve_batch(load_config("vith384", ["data.backend=synthetic", "data.global_batch_size=10"]), 1)
    assert cfg.model.activation_checkpointing == "auto"
    cuda = torch.device("cuda")
    out, note = resolve_checkpointing(cfg, 1, cuda)
    frac, depth = out.model.activation_checkpointing, 32
    assert cfg.model.activation_checkpointing == "auto"  # a copy was resolved
    assert f"auto -> {frac:g} ({round(frac * depth)} of {depth} encoder blocks" in note

    def fits(f):
        c = resolve_batch(load_config("vith384", ["data.backend=synthetic", "data.global_batch_size=10",
                                                  f"model.activation_checkpointing={f}"]), 1)
        return estimate_memory(c, 1, cuda).total <= AUTO_FIT * gib * GiB
    if gib is None:
        assert frac == 1.0 and "memory unknown" in note
    elif not fits(1.0):
        assert frac == 1.0 and "even that needs about" in note
    else:
        assert fits(frac) and (frac == 0 or not fits(frac - 1 / depth))
    if gib == 1000:
        assert frac == 0.0
    if gib == 40:
        assert 0 < frac < 1  # a card between the two settings recomputes only some blocks
    assert resolve_checkpointing(out, 1, cuda) == (out, None)  # a number stays as given


def test_auto_checkpointing_is_resolved_per_phase(monkeypatch):
    """V-JEPA 2's cooldown clips (64 frames) need more recompute than its 16-frame pretraining, on the
    same card; the trainer's plan carries each phase's choice and a note for the log."""
    from vjepa_scale.train.phases import plan

    _card(monkeypatch, 24)
    phases = plan(load_config("vjepa2_vitl", ["data.backend=synthetic", "data.global_batch_size=24"]), 1)
    pre, cool = (p.cfg.model.activation_checkpointing for p in phases)
    assert pre < cool and all("activation_checkpointing: auto ->" in p.note for p in phases)
