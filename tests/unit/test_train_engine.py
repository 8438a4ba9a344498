"""The Trainer in one process (1 rank, gloo, real DeepSpeed engines): schedules reach the optimizer,
the ZeRO-1/2 EMA path, and the analytic FLOPs against torch's FLOP counter."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import require, single_process_group, tiny_config
from vjepa_scale.config import MaskConfig, MaskSpec, load_config
from vjepa_scale.flops import train_flops
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.models import JEPA, compute_targets, make_target_encoder
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.launch import preflight
from vjepa_scale.train.metrics import read_metrics
from vjepa_scale.train.schedules import ema_momentum, learning_rate, weight_decay

require("deepspeed")
STEPS = 4


def _trainer(tmp_path, *opts) -> Trainer:
    env = single_process_group()
    cfg = load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2",
                                   f"optim.iterations={STEPS}", "train.precision=fp32", "train.progress_bar=false",
                                   f"train.checkpoint_every={STEPS}", *opts])
    return Trainer(preflight(cfg, env.world_size), tmp_path / "run", env=env)


def test_lr_and_wd_reach_deepspeed_optimizer_each_step(tmp_path):
    """At every step DeepSpeed's optimizer holds the scheduled LR and WD (decay group: wd, no_decay: 0),
    and the fp32 masters move by exactly AdamW with those values."""
    tr = _trainer(tmp_path, "optim.warmup=2", "optim.start_lr=0.01", "optim.lr=0.05", "optim.final_lr=0.001",
                  "optim.weight_decay=0.5", "optim.final_weight_decay=2.0")
    o = tr.cfg.optim
    ds_opt = tr.engine.optimizer
    assert ds_opt is not tr.optimizer and ds_opt.param_groups is tr.optimizer.param_groups  # DS steps our AdamW
    names = [g["name"] for g in ds_opt.param_groups]
    assert sorted(names) == ["decay", "no_decay"]

    def masters():  # fp32 master partitions, per param group
        return [[p.detach().clone() for p in g["params"]] for g in ds_opt.param_groups]

    before = masters()
    seen = []

    def check(trainer, stats):
        nonlocal before
        step = trainer.step - 1  # the optimizer step just taken
        lr, wd = learning_rate(o, step), weight_decay(o, step)
        seen.append((lr, wd))
        beta1, beta2 = o.betas
        for g, old in zip(ds_opt.param_groups, before):
            want_wd = wd if g["name"] == "decay" else 0.0
            assert g["lr"] == lr and g["weight_decay"] == want_wd, (step, g["name"])
            for p, p0 in zip(g["params"], old):
                st = tr.optimizer.state[p]
                n = float(st["step"])
                denom = (st["exp_avg_sq"].sqrt() / (1 - beta2 ** n) ** 0.5) + o.eps
                expect = p0 * (1 - lr * want_wd) - (lr / (1 - beta1 ** n)) * st["exp_avg"] / denom
                assert (p.detach() - expect).abs().max() <= 1e-6, (step, g["name"])
                if want_wd:  # the decay term is far above the tolerance: a wrong wd would be caught
                    assert (p0 * lr * want_wd).abs().max() > 1e-4
        before = masters()

    tr.fit(on_step=check)
    assert len(seen) == STEPS and len({lr for lr, _ in seen}) == STEPS and len({wd for _, wd in seen}) == STEPS
    assert seen[0][0] == 0.01 and seen[2][0] == 0.05  # warmup start, then the peak after 2 warmup steps


def test_resume_restores_each_generator_from_the_checkpoint(tmp_path):
    """A real save (end of fit) and resume: the resumed Trainer's torch / numpy / python generators
    continue from the states saved, not from its own seeding. Training draws nothing from them, so the
    test draws at every step (the saved states are then not the seeded ones) and again between the save
    and the resume."""
    def draws():
        return torch.rand(3), np.random.rand(3), random.random()

    def same(a, b):
        return [torch.equal(a[0], b[0]), np.array_equal(a[1], b[1]), a[2] == b[2]]

    tr = _trainer(tmp_path, "optim.iterations=2")
    tr.fit(on_step=lambda trainer, stats: draws())  # the draws of the last step come before its save
    assert (tmp_path / "run" / "checkpoints" / "step_00000002").is_dir()
    after_save = draws()  # fit ends with the save: these are the draws the checkpoint's states give
    draws()  # moved on between the save and the resume
    env = single_process_group()
    cfg = load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2",
                                   "optim.iterations=2", "train.precision=fp32", "train.progress_bar=false"])
    resumed = Trainer(preflight(cfg, env.world_size), tmp_path / "run", resume="auto", env=env)
    assert resumed.step == 2
    assert same(draws(), after_save) == [True, True, True]


def test_resume_with_changed_betas_and_eps_uses_the_new_ones(tmp_path):
    """A checkpoint's optimizer state keeps its moments, but the resumed run's optim.betas / optim.eps
    (and each group's weight decay) are the ones of its own config, as the resume note says."""
    _trainer(tmp_path).fit()
    env = single_process_group()
    cfg = load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2",
                                   f"optim.iterations={STEPS + 1}", "train.precision=fp32", "train.progress_bar=false",
                                   "optim.betas=[0.5, 0.6]", "optim.eps=0.1"])
    tr = Trainer(preflight(cfg, env.world_size), tmp_path / "run", resume="auto", env=env)
    assert tr.step == STEPS and any("optim.betas" in n for n in tr.notes)
    groups = tr.engine.optimizer.param_groups
    assert [(g["betas"], g["eps"]) for g in groups] == [((0.5, 0.6), 0.1)] * 2
    assert all(float(tr.optimizer.state[p]["step"]) == STEPS for g in groups for p in g["params"])  # moments kept
    tr.fit()
    assert tr.step == STEPS + 1 and [(g["betas"], g["eps"]) for g in groups] == [((0.5, 0.6), 0.1)] * 2
    # The resumed run's first record (step 5, the run's end) averages 1 step, the first run's 4 (steps 1-4):
    # `window_steps` says so. samples_seen is global (2 clips per step); the per-type losses average to the
    # loss; on the CPU no mem_peak_gib.
    recs = read_metrics(tmp_path / "run")
    assert [(r["step"], r["window_steps"], r["samples_seen"]) for r in recs] == [(4, 4, 8), (5, 1, 10)]
    for r in recs:
        assert r["loss_type0"] + r["loss_type1"] == pytest.approx(2 * r["loss"], rel=1e-5) and r["target_std"] > 0
        assert r["data_wait_max"] == pytest.approx(r["data_wait"], rel=1e-5) and r["data_wait_max_rank"] == 0
        assert "mem_peak_gib" not in r


@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_ema_matches_reference(tmp_path, stage):
    """ZeRO-1/2 (replicated parameters, EMA shadow over this rank's master fragments, all of them on one
    rank): after k steps the target equals the fp32 EMA m * shadow + (1 - m) * online computed here
    from the online weights of each step. Two ranks: tests/integration/test_ema_fragments.py."""
    tr = _trainer(tmp_path, f"zero.stage={stage}", "optim.ema=[0.5,0.7]")
    assert tr.ema.layout == "fragments"
    online = dict(tr.engine.module.encoder.named_parameters())
    start = {n: p.detach().clone() for n, p in tr.target.module.named_parameters()}
    ref = {n: v.clone() for n, v in start.items()}

    def update(trainer, stats):
        m = ema_momentum(trainer.cfg.optim, trainer.step - 1)
        for n in ref:
            ref[n] = m * ref[n] + (1 - m) * online[n].detach()

    tr.fit(on_step=update)
    assert tr.step == STEPS
    target = dict(tr.target.module.named_parameters())
    shadows = dict(zip(tr.ema.names, tr.ema.shadows))
    for n in ref:
        assert (shadows[n].view(ref[n].shape) - ref[n]).abs().max() <= 1e-6, n
        assert torch.equal(target[n].detach(), shadows[n].view(ref[n].shape)), n  # fp32 target = shadow
    assert max((ref[n] - start[n]).abs().max().item() for n in ref) > 1e-4  # the EMA moved
    assert max((ref[n] - online[n].detach()).abs().max().item() for n in ref) > 1e-5  # and is not a copy


def test_train_flops_match_flop_counter():
    """`train_flops` against torch's FlopCounterMode over a real micro-step (target forward, encoder +
    predictor forward and backward). Attention runs through math SDPA on rectangular batches (one mask
    type, `truncate: batch_min`), which the counter sees as matmuls. Neither side counts softmax, LN,
    GELU or the loss. The encoder's patch embedding is charged its forward and its weight gradient only
    (the video needs no gradient), so the counter equals the analytic total exactly."""
    torch.manual_seed(0)
    cfg = tiny_config(batch_size=3, sdpa_backend="math")
    cfg.mask = MaskConfig(types=[MaskSpec(num_blocks=2, spatial_scale=(0.3, 0.3))], truncate="batch_min")
    cfg.validate()
    model = JEPA(cfg).train()
    target = make_target_encoder(model.encoder)
    masks = MultiBlockMasker(cfg.mask, cfg.grid)(cfg.data.batch_size, step=0)
    assert len(set(masks.ctx_lengths)) == 1 and len(set(masks.tgt_lengths)) == 1  # rectangular: dense SDPA
    video = torch.randn(cfg.data.batch_size, 3, cfg.data.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.no_grad():
            targets = compute_targets(target, video, masks)
        model(video, masks, targets).backward()
    f = train_flops(cfg, masks)
    assert counter.get_total_flops() == f["total"]
    ops = counter.get_flop_counts()["Global"]
    assert ops[torch.ops.aten.bmm] == f["attention"]  # the attention matmuls (QK^T, AV and their grads)


def test_auto_checkpointing_follows_each_phase(tmp_path, monkeypatch, capsys):
    """`activation_checkpointing: auto` with a card that holds phase 0's small clips without recompute but
    not phase 1's larger ones: the engine's stacks switch at the boundary, and the log says why."""
    from vjepa_scale.train import memory
    from vjepa_scale.train.phases import plan

    phased = ["model.activation_checkpointing=auto", "phases=[{steps: 2, crop_size: 32}, {crop_size: 64}]"]
    base = load_config("cpu_demo", ["model.depth=4", "data.global_batch_size=2", "train.precision=fp32", *phased])
    monkeypatch.setattr(memory, "available_bytes", lambda d, n: (1 << 50, "huge"))
    small, large = (p.cfg for p in plan(base, 1))
    need = [memory.estimate_memory(c, 1, torch.device("cpu")).total for c in (small, large)]
    assert need[0] < need[1]
    card = int(need[0] / memory.AUTO_FIT) + 1  # phase 0 fits as it is, phase 1 does not
    monkeypatch.setattr(memory, "available_bytes", lambda d, n: (card, "the test card"))
    tr = _trainer(tmp_path, "model.depth=4", *phased)
    seen = []
    tr.fit(on_step=lambda t, s: seen.append(list(t.engine.module.encoder.transformer.checkpointed)))
    assert seen[0] == seen[1] == [False] * 4 and any(seen[2]) and seen[2] == seen[3]
    log = capsys.readouterr().out
    assert "auto -> 0 (0 of 4 encoder blocks" in log and "the test card" in log
    assert log.count("activation_checkpointing: auto ->") == 2  # a note per phase (the banner names attention's auto)


def test_init_from_is_logged_with_its_source_and_what_it_loaded(tmp_path, capsys):
    """`train.init_from` says in the run's log (rank 0) where the weights came from and which parts the
    source held; a resume, whose checkpoint replaces them, does not claim it."""
    from helpers import official_layout

    cfg = load_config("cpu_demo", ["model.depth=1", "model.pos_embed=rope"])
    torch.manual_seed(3)
    model = JEPA(cfg)
    enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict())
    src = tmp_path / "weights.pt"
    torch.save({"encoder": enc, "predictor": pred}, src)
    tr = _trainer(tmp_path, "model.pos_embed=rope", f"train.init_from={src}")
    tr.fit()
    log = capsys.readouterr().out
    assert (f"train.init_from: loaded online encoder, predictor from {src}; not in it: the EMA target, which "
            f"starts as a copy of the online encoder") in log
    assert log.count("train.init_from") == 1
    resumed = Trainer(tr.cfg, tmp_path / "run", resume="auto", env=tr.env)
    assert not any("train.init_from" in n for n in resumed.notes)
    from vjepa_scale.weights import check_init_source, load_init_state

    latest = tmp_path / "run" / "checkpoints" / "latest"  # as `--resume` takes it (was: "not a torch checkpoint")
    check_init_source(latest, tr.cfg)
    assert load_init_state(latest, tr.cfg)["target_encoder"] is not None
    (tmp_path / "latest").write_bytes(src.read_bytes())  # an official file that is called `latest`
    check_init_source(tmp_path / "latest", tr.cfg)


def test_init_from_a_run_passes_over_its_damaged_newest_checkpoint(tmp_path, capsys):
    """`train.init_from: RUN` whose newest save was damaged after it was committed (a truncated EMA shard)
    loads the one before with a warning naming the file, as `--resume RUN` does; that damaged checkpoint
    named directly is a config error naming the file."""
    from vjepa_scale.config import ConfigError
    from vjepa_scale.weights.run import list_checkpoints

    src = _trainer(tmp_path / "src", "train.checkpoint_every=1")
    src.fit()
    *_, before, newest = list_checkpoints(tmp_path / "src" / "run")
    ema = newest / "ema" / "rank00000.pt"
    ema.write_bytes(ema.read_bytes()[:1000])
    tr = _trainer(tmp_path, f"train.init_from={tmp_path / 'src' / 'run'}")
    notes = "\n".join(tr.notes)
    assert f"warning: checkpoint {newest.name} cannot be loaded ({ema} is damaged" in notes, notes
    assert f"loading {before.name}" in notes and f"train.init_from: loaded online encoder, predictor, EMA target " \
                                                 f"from {before}" in notes, notes
    with pytest.raises(ConfigError, match=rf"train.init_from: {ema} is damaged"):
        _trainer(tmp_path / "direct", f"train.init_from={newest}")
