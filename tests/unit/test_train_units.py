"""Trainer pieces that need no process group: schedules, shard layout, EMA, checkpoint discovery."""
import io
import json
import logging
import math
import sys

import pytest
import torch

from vjepa_scale.config import load_config
from vjepa_scale.models import JEPA
from vjepa_scale.train.ema import ShardedEMA
from vjepa_scale.train.engine import build_models
from vjepa_scale.train.optim import param_groups
from vjepa_scale.train.schedules import ema_momentum, horizon, learning_rate, schedule_at, weight_decay
from vjepa_scale.train.zero_compat import partition_slice
from vjepa_scale.weights import (CKPT_SUBDIR, consolidate_shards, find_latest, list_checkpoints, resolve_checkpoint,
                                 unshard)


def test_schedules_on_scaled_horizon():
    o = load_config("vith384").optim
    H = horizon(o)
    assert H == 112_500
    assert learning_rate(o, 0) == pytest.approx(2e-4)
    assert learning_rate(o, 6_000) == pytest.approx((2e-4 + 6.25e-4) / 2)
    assert learning_rate(o, 12_000) == pytest.approx(6.25e-4)
    mid = 12_000 + (H - 12_000) // 2
    assert learning_rate(o, mid) == pytest.approx((6.25e-4 + 1e-6) / 2, rel=1e-4)
    assert learning_rate(o, H) == pytest.approx(1e-6)
    lrs = [learning_rate(o, s) for s in range(12_000, 90_001, 500)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert learning_rate(o, 90_000) > 1e-6 * 10  # training stops before the schedule ends
    assert weight_decay(o, 0) == pytest.approx(0.04) and weight_decay(o, H) == pytest.approx(0.4)
    assert weight_decay(o, H // 2) == pytest.approx(0.22)
    assert ema_momentum(o, 0) == 0.998 and ema_momentum(o, H) == 1.0
    assert ema_momentum(o, 90_000) == pytest.approx(0.998 + 0.002 * 0.8)
    s = schedule_at(o, 100)
    assert (s.lr, s.weight_decay, s.momentum) == (learning_rate(o, 100), weight_decay(o, 100), ema_momentum(o, 100))


@pytest.mark.parametrize("numel,world", [(1, 2), (7, 2), (10, 4), (96, 3), (5, 8)])
def test_partition_slice_layout_round_trips(numel, world):
    full = torch.randn(numel)
    shards = [partition_slice(full, r, world) for r in range(world)]
    part = math.ceil(numel / world)
    assert all(s.shape == (part,) and s.dtype == torch.float32 for s in shards)
    assert torch.equal(unshard(shards, (numel,)), full)
    assert torch.equal(torch.cat(shards)[numel:], torch.zeros(part * world - numel))


def _tiny_cfg(*extra):
    return load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", *extra])


def test_param_groups_no_decay_on_bias_and_1d():
    jepa = JEPA(_tiny_cfg())
    decay, no_decay = param_groups(jepa)
    names = {id(p): n for n, p in jepa.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim <= 1 or names[id(p)].endswith(".bias") for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and no_decay["wd_scale"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(jepa.parameters()))
    assert any(names[id(p)].endswith("mask_tokens") or "norm" in names[id(p)] for p in no_decay["params"])


def test_build_models_target_is_frozen_copy():
    cfg = _tiny_cfg()
    jepa, target = build_models(cfg, seed=3)
    jepa2, _ = build_models(cfg, seed=3)
    for (n, a), (_, b) in zip(jepa.encoder.named_parameters(), target.named_parameters()):
        assert torch.equal(a, b) and not b.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(jepa.parameters(), jepa2.parameters()))  # same on every rank


def test_unpartitioned_ema_matches_reference():
    """Without ZeRO partitioning the EMA works on whole tensors: compare with a plain fp32 loop."""
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3))
    target = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3)).to(torch.bfloat16)
    init = {n: p.detach().clone() for n, p in online.named_parameters()}
    ema = ShardedEMA(online, target, init, rank=0, world_size=1)
    ref = {n: v.clone() for n, v in init.items()}
    for m in (0.9, 0.5, 0.99):
        with torch.no_grad():
            for p in online.parameters():
                p.add_(torch.randn_like(p))
        ema.update(m)
        for n, p in online.named_parameters():
            ref[n] = m * ref[n] + (1 - m) * p.detach()
    full = consolidate_shards([ema.state_dict()])
    for n, t in target.named_parameters():
        assert (full[n] - ref[n]).abs().max() <= 1e-6
        assert t.dtype == torch.bfloat16 and torch.equal(t.detach(), full[n].to(torch.bfloat16))


def _fake_ckpt(run, step, complete=True):
    d = run / CKPT_SUBDIR / f"step_{step:08d}"
    d.mkdir(parents=True)
    if complete:
        (d / "meta.json").write_text(json.dumps({"step": step, "world_size": 2, "complete": True}))
    return d


def test_find_latest_skips_partial_saves(tmp_path):
    assert find_latest(tmp_path) is None
    a = _fake_ckpt(tmp_path, 10)
    b = _fake_ckpt(tmp_path, 20)
    (tmp_path / CKPT_SUBDIR / "latest").write_text(b.name)
    _fake_ckpt(tmp_path, 30, complete=False)  # died before meta.json
    (tmp_path / CKPT_SUBDIR / ".tmp_step_00000040").mkdir()
    assert find_latest(tmp_path) == b
    assert list_checkpoints(tmp_path) == [a, b]
    (tmp_path / CKPT_SUBDIR / "latest").write_text("step_00000099")  # marker names a vanished dir
    assert find_latest(tmp_path) == b
    assert resolve_checkpoint(a) == a and resolve_checkpoint(tmp_path) == b
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path / "nothing")


def test_resolve_checkpoint_takes_the_checkpoints_folder_and_the_latest_marker(tmp_path):
    """`--resume RUN/checkpoints` resolves like the run folder, `--resume RUN/checkpoints/latest` to the
    checkpoint the marker names (both used to be "no complete checkpoint")."""
    a = _fake_ckpt(tmp_path, 10)
    b = _fake_ckpt(tmp_path, 20)
    marker = tmp_path / CKPT_SUBDIR / "latest"
    marker.write_text(a.name + "\n")
    assert resolve_checkpoint(tmp_path / CKPT_SUBDIR) == b
    assert resolve_checkpoint(marker) == a
    marker.write_text("step_00000099")
    with pytest.raises(FileNotFoundError, match="names .*step_00000099', which is not a complete checkpoint"):
        resolve_checkpoint(marker)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_keeps_log_warnings_off_its_line(tmp_path, monkeypatch):
    """On a terminal the bar is drawn; a logging warning while it is (a skipped data file, a checkpoint that
    could not be removed) goes through tqdm: the bar's line is cleared first and the bar drawn again below,
    instead of the message being glued to the bar's last frame."""
    from vjepa_scale.train.metrics import RunLogger

    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    log = RunLogger(tmp_path, True, 10, progress_bar=True)
    log.progress(2, {"loss": "0.5000"})
    logging.getLogger("vjepa_scale.data").warning("data epoch 0: skipped 1 unusable file(s)")
    log.progress(3, {"loss": "0.4000"})
    log.close()
    before, after = err.getvalue().split("data epoch 0: skipped 1 unusable file(s)")
    assert "train:" in before and before.endswith("\r"), before[-200:]  # the bar's line was cleared first
    assert after.startswith("\n") and "3/10" in after
    assert not any("Tqdm" in type(h).__name__ for h in logging.getLogger().handlers)  # restored on close


def test_progress_postfix_names_and_formats():
    """The bar: tokens/s with an SI prefix (not 1.56e+03), the slowest rank's data wait, data skips labelled
    as such and the divergence guard's skipped steps as bad_steps, each only when there are any."""
    from vjepa_scale.train.metrics import progress_postfix

    m = {"loss": 0.5, "lr": 1e-4, "clips_per_s": 195.3, "tokens_per_s": 1562.4, "data_wait": 0.02,
         "data_wait_max": 0.081, "mfu": None, "skipped_steps": 0, "data_skipped": 0}
    assert progress_postfix(m) == {"loss": "0.5000", "lr": "1.00e-04", "clips/s": "195.3", "tok/s": "1.56k",
                                   "wait_max": "8%"}
    m.update(tokens_per_s=2.345e6, skipped_steps=2, data_skipped=3, mfu=0.4123)
    assert progress_postfix(m) == {"loss": "0.5000", "lr": "1.00e-04", "clips/s": "195.3", "tok/s": "2.35M",
                                   "wait_max": "8%", "mfu": "41.2%", "bad_steps": 2, "data_skipped": 3}
    assert [progress_postfix(dict(m, tokens_per_s=t))["tok/s"] for t in (266.0, 999.7, 30000.0)] == ["266", "1k", "30k"]


def test_step_window_reduces_over_ranks_with_the_slowest_ranks_wait(monkeypatch):
    """Two ranks' windows (the all-reduce stood in for): loss, per-type loss and target_std are means over
    ranks and steps; `data_wait` is the mean share of the step spent loading, which dilutes a starved rank,
    while `data_wait_max` is the slowest rank's share, named by `data_wait_max_rank`; `mem_peak_gib` is the
    largest rank's peak (CUDA only: none on CPU); `window_steps` counts the steps averaged."""
    from vjepa_scale.train import metrics
    from vjepa_scale.train.metrics import StepWindow

    stats = {"lr": 1e-3, "weight_decay": 0.04, "momentum": 0.998}
    windows = [StepWindow(torch.device("cpu"), 2, 8, 16, None, rank=r) for r in (0, 1)]
    for r, w in enumerate(windows):
        for step in range(2):
            w.add(torch.tensor(0.5 + r), wait=0.3 * r, step_time=1.0 + r, flops=1e9,
                  loss_types=torch.tensor([0.4, 0.6 + 2 * r]), target_std=torch.tensor(0.8 + 0.2 * r))
    sent = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda v: sent.append(v.clone()))
    windows[1].summary(stats, 0, None)  # rank 1's contribution
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda v: v.add_(sent[0]))
    m = windows[0].summary(stats, 3, 2.0)
    assert m["loss"] == 1.0 and (m["loss_type0"], m["loss_type1"]) == pytest.approx((0.4, 1.6))
    assert m["target_std"] == pytest.approx(0.9) and m["window_steps"] == 2 and m["step_time"] == 1.5
    # the ranks' mean share 0.6 s / 6 s; the largest: rank 1's own 0.6 s of its 4 s
    assert m["data_wait"] == pytest.approx(0.1) and m["data_wait_max"] == pytest.approx(0.15)
    assert m["data_wait_max_rank"] == 1 and "mem_peak_gib" not in m and m["eta_s"] == 4.5

    peaks = iter([2.5, 1.5])  # rank 1's, then rank 0's peak memory (as on CUDA)
    monkeypatch.setattr(metrics, "peak_memory_gib", lambda device: next(peaks))
    sent.clear()
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda v: sent.append(v.clone()))
    windows[1].summary(stats, 0, None)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda v: v.add_(sent[0]))
    assert windows[0].summary(stats, 0, None)["mem_peak_gib"] == 2.5


def test_peak_memory_is_cudas_allocator_peak_in_gib(monkeypatch):
    from vjepa_scale.train.metrics import peak_memory_gib

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 1024 ** 3)
    assert peak_memory_gib(torch.device("cuda", 0)) == 3.0 and peak_memory_gib(torch.device("cpu")) is None


def test_eta_prices_later_phases_at_their_own_cost():
    """A 4-frame phase then a 16-frame one (4x the tokens, attention quadratic in them): the steps left,
    in steps of the current phase, weigh each later step by its phase's FLOPs per step (`step_cost`);
    in the last phase they are plain steps."""
    from vjepa_scale.train.phases import plan, step_cost, steps_left

    cfg = _tiny_cfg("optim.iterations=10", "phases=[{steps: 6, frames_per_clip: 4}, {frames_per_clip: 16}]")
    phases = plan(cfg, 1)
    costs = [step_cost(p) for p in phases]
    ratio = costs[1] / costs[0]
    assert 4 < ratio < 20
    assert steps_left(phases, 2, costs) == pytest.approx(4 + 4 * ratio)
    assert steps_left(phases, 2) == 8 and steps_left(phases, 7, costs) == 3 and steps_left(phases, 10, costs) == 0
    # at phase 0's last step the step time measured is phase 0's: phase 1's steps still weigh their cost
    assert steps_left(phases, 6, costs) == pytest.approx(4 * ratio)


def test_run_banner_names_model_batch_backends_memory_mfu_and_phases():
    """The lines rank 0 prints before the first step; MFU says it is off, and how to turn it on, when the
    device's bf16 peak is unknown; a single-phase run names its phase too."""
    from vjepa_scale.attention import describe_attention_backend
    from vjepa_scale.train.memory import param_counts
    from vjepa_scale.train.metrics import run_banner
    from vjepa_scale.train.phases import plan

    cfg = _tiny_cfg("data.global_batch_size=8", "optim.grad_accum=2", "optim.iterations=5",
                    "model.activation_checkpointing=true")
    phases = plan(cfg, 2)
    lines = run_banner(phases, phases[0], 2, torch.device("cpu"), torch.float32, None)
    text = "\n".join(lines)
    n = param_counts(phases[0].cfg)
    assert lines[0].startswith("model: ViT tiny (width 96, depth 1, 3 heads") and f"{n.online / 1e3:.1f}k" in lines[0]
    assert "clip: 4 frames x 32 px = 8 tokens; 2 mask type(s): 2 block(s) (area 0.15, time 1)" in text
    assert "ranks: 2 on cpu, ZeRO stage 3, precision fp32 (train.precision: auto)" in text
    assert "batch: 2 clip(s) per rank x 2 grad accum x 2 rank(s) = 8 per step" in text
    assert "attention: auto -> bucketed (cpu: the fused varlen kernels need CUDA); kernels: torch (auto:" in text
    assert "activation checkpointing: 1 of 1 encoder and 1 of 1 predictor blocks recomputed" in text
    assert "memory estimate: " in text and " GiB per rank (weights " in text
    assert "MFU: off (no known bf16 peak for cpu; set train.device_peak_tflops to log it)" in text
    assert lines[-1] == phases[0].describe() and lines[-1].startswith("phase 0: steps 1-5, 4 frames x 32 px")
    on = run_banner(phases, phases[0], 2, torch.device("cpu"), torch.float32, 123.0)
    assert "MFU: on, against a 123 TFLOP/s bf16 peak (cpu)" in on
    assert describe_attention_backend("padded", "cpu") == "padded"
    assert describe_attention_backend("auto", "cuda", torch.float32).startswith("auto -> nested (fp32: ")


def test_run_totals_summarize_the_logged_windows():
    """The end-of-run summary weighs each window by its steps' time (a resumed run's short first window
    counts for what it is): mean clips/s and MFU, first and last logged loss, the run's skip totals."""
    from vjepa_scale.train.metrics import RunTotals

    t = RunTotals()
    t.add(3, {"step_time": 1.0, "window_steps": 1, "clips_per_s": 10.0, "mfu": 0.2, "loss": 0.9, "skipped_steps": 0})
    t.add(6, {"step_time": 0.5, "window_steps": 3, "clips_per_s": 20.0, "mfu": 0.4, "loss": 0.7, "skipped_steps": 1,
              "data_skipped": 4})
    lines = t.lines((3, 6), 75.0, 12.0, "RUN/checkpoints/step_00000006")
    assert lines == ["run summary: steps 3-6 (4 trained) in 01:15 wall (setup 00:12)",
                     "  16.0 clips/s mean over the steps' time, MFU 32.0%",  # (10 + 30 clips) / 2.5 s
                     "  loss 0.9000 at step 3 -> 0.7000 at step 6",
                     "  skipped: 1 non-finite step(s), 4 unusable data file(s) (run totals)",
                     "  final checkpoint: RUN/checkpoints/step_00000006"]
    t.add(7, {"step_time": 0.5, "window_steps": 1, "clips_per_s": 20.0, "mfu": None, "loss": 0.6})
    assert "MFU off" in t.lines((3, 7), 80.0, 12.0, None)[1]
