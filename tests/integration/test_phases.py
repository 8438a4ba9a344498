"""Runs made of phases (config.phases, train.phases) and V-JEPA 2's cooldown start, on CPU (gloo).

One 2-rank ZeRO-3 run of tools/train.py (cpu_demo, depth 1, synthetic clips) with two phases:
  phase 0 "warm": steps 1-3, 64 px x 4 frames, global batch 8, wsd LR (warmup 2, constant);
  phase 1 "cool": steps 4-6, 96 px x 8 frames, global batch 4, wsd LR (linear cooldown over 3 steps),
                  constant WD and EMA;
recorded batch by batch (record_training.py --what batches, beside this file), saving every 2 steps and at the phase
end. A second run resumes from the step-2 checkpoint (inside phase 0) and crosses the boundary; it
must end bitwise equal to the first. Then a 1-rank Trainer starts a cooldown from the first run
(`train.init_from`, without and then with `train.init_from_optimizer`: two Trainers, one after the
other, in one spawned process).
"""
import json
import os
from pathlib import Path

import pytest
import torch

from helpers import assert_ok, free_port, launch, require, train_args
from vjepa_scale.config import load_config
from vjepa_scale.train.metrics import read_metrics
from vjepa_scale.train.phases import plan, step_cost
from vjepa_scale.weights import consolidate_shards, list_checkpoints, load_consolidated

require("deepspeed")
RECORD = Path(__file__).with_name("record_training.py")
PHASES = ("phases=[{name: warm, steps: 3, crop_size: 64, frames_per_clip: 4, optim: {lr_schedule: wsd, warmup: 2}},"
          " {name: cool, crop_size: 96, frames_per_clip: 8, global_batch_size: 4,"
          "  optim: {lr_schedule: wsd, warmup: 0, cooldown: 3, ipe_scale: 1.0, wd_schedule: constant,"
          "          ema_schedule: constant}}]")
OPTS = ["model.depth=1", "optim.iterations=6", "optim.ema=[0.5,0.7]", "train.log_every=1", "train.keep_last=10",
        "train.checkpoint_every=2", PHASES]
LR, FINAL_LR, START_LR = 2e-3, 1e-5, 2e-4  # cpu_demo's optim

pytestmark = pytest.mark.slow


def _launch(run_dir, record_dir, resume=None):
    return launch(RECORD, "--record-dir", str(record_dir), "--what", "batches",
                  *train_args(run_dir, *OPTS, resume=resume), nproc=2)


def _records(record_dir) -> list[dict]:
    recs = [json.loads(line) for f in sorted(Path(record_dir).glob("rank*.jsonl")) for line in f.read_text().splitlines()]
    return sorted(recs, key=lambda r: (r["micro"], r["rank"]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("phases")
    straight, resumed = base / "straight", base / "resumed"
    r = _launch(straight, base / "rec_straight")
    assert_ok(r)
    ckpt = list_checkpoints(straight)[0]
    assert ckpt.name == "step_00000002"
    rr = _launch(resumed, base / "rec_resumed", resume=ckpt)
    assert_ok(rr)
    return {"straight": straight, "resumed": resumed, "rec_straight": _records(base / "rec_straight"),
            "rec_resumed": _records(base / "rec_resumed"), "log": r.stdout + r.stderr}


def test_phase_boundary_changes_clip_batch_grid_and_schedule(runs):
    recs = runs["rec_straight"]
    assert [(r["step"], r["rank"]) for r in recs] == [(s, k) for s in range(1, 7) for k in (0, 1)]
    for r in recs:
        if r["step"] <= 3:  # per rank: 8 clips / 2 ranks, 4 frames x 64 px, grid 2x4x4
            assert (r["video"], r["grid"]) == ([4, 3, 4, 64, 64], [2, 4, 4]), r
        else:  # 4 clips / 2 ranks, 8 frames x 96 px, grid 4x6x6
            assert (r["video"], r["grid"]) == ([2, 3, 8, 96, 96], [4, 6, 6]), r
    # the sample stream continues in global samples: 3 x 8 clips, then 3 x 4 more, none repeated
    seen = [i for r in recs for i in r["index"]]
    assert len(seen) == 3 * 8 + 3 * 4 == len(set(seen))
    m = {x["step"]: x for x in read_metrics(runs["straight"])}
    assert sorted(m) == list(range(1, 7)) and all(torch.isfinite(torch.tensor(x["loss"])) for x in m.values())
    assert [m[s]["phase"] for s in range(1, 7)] == [0, 0, 0, 1, 1, 1]
    for s in range(1, 7):  # tokens per clip follow the phase's grid
        assert m[s]["tokens_per_s"] == pytest.approx(m[s]["clips_per_s"] * (32 if s <= 3 else 144), rel=1e-5)
    # step k's record holds the schedule of optimizer step k-1; each phase is its own piece
    lrs = [m[s]["lr"] for s in range(1, 7)]
    cool = [LR + (FINAL_LR - LR) * i / 3 for i in range(3)]
    assert lrs == pytest.approx([START_LR, (START_LR + LR) / 2, LR] + cool)
    assert [m[s]["ema_momentum"] for s in range(4, 7)] == [0.5] * 3  # constant EMA in phase 1
    assert [m[s]["weight_decay"] for s in range(4, 7)] == pytest.approx([0.04] * 3)  # constant WD
    assert m[2]["ema_momentum"] > 0.5  # phase 0 keeps the linear ramp
    # the ETA prices phase 1's steps (8 frames x 96 px) at their FLOPs per step, not at phase 0's speed
    costs = [step_cost(p) for p in plan(load_config(runs["straight"] / "config.yaml"), 2)]
    assert costs[1] > 2 * costs[0]
    assert m[1]["eta_s"] == pytest.approx(m[1]["step_time"] * (2 + 3 * costs[1] / costs[0]), rel=1e-4)
    assert m[3]["eta_s"] == pytest.approx(m[3]["step_time"] * 3 * costs[1] / costs[0], rel=1e-4)  # phase 0's end
    assert m[4]["eta_s"] == pytest.approx(m[4]["step_time"] * 2, rel=1e-4)
    assert "phase 1 (cool): steps 4-6" in runs["log"]


def test_checkpoints_record_phase_and_data_position(runs):
    metas = {p.name: json.loads((p / "meta.json").read_text()) for p in list_checkpoints(runs["straight"])}
    assert sorted(metas) == [f"step_0000000{s}" for s in (2, 3, 4, 6)]  # every 2 steps and at the phase end
    got = {n: (m["phase"], m["phase_step"], m["samples_seen"], m["global_batch_size"]) for n, m in metas.items()}
    assert got == {"step_00000002": (0, 2, 16, 8), "step_00000003": (1, 0, 24, 4),
                   "step_00000004": (1, 1, 28, 4), "step_00000006": (1, 3, 36, 4)}


def test_resume_across_the_boundary_is_exact(runs):
    a, b = runs["rec_straight"], runs["rec_resumed"]
    assert [r for r in a if r["step"] >= 3] == b  # the same batches (shapes, indices) from step 3 on
    la = {r["step"]: r["loss"] for r in read_metrics(runs["straight"])}
    lb = {r["step"]: r["loss"] for r in read_metrics(runs["resumed"])}
    assert {s: lb[s] for s in range(3, 7)} == {s: la[s] for s in range(3, 7)}
    for which in ("online", "target"):
        x, y = load_consolidated(runs["straight"], which), load_consolidated(runs["resumed"], which)
        assert x["step"] == y["step"] == 6
        for part in ("encoder", "predictor"):
            assert x[part].keys() == y[part].keys()
            assert all(torch.equal(x[part][k], y[part][k]) for k in x[part]), (which, part)


# --------------------------------------------------------------------------------------------------
# Cooldown from another run's checkpoint
# --------------------------------------------------------------------------------------------------

COOL = ["model.depth=1", "data.crop_size=96", "data.frames_per_clip=8", "data.global_batch_size=2",
        "optim.iterations=2", "optim.ipe_scale=1.0", "optim.lr_schedule=wsd", "optim.warmup=0", "optim.cooldown=2",
        "optim.wd_schedule=constant", "optim.ema_schedule=constant", "optim.ema=[0.9,0.9]", "train.log_every=1",
        "train.checkpoint_every=100"]


def _adam_moments(trainer) -> float:
    state = trainer.engine.optimizer.optimizer.state
    return float(sum(s["exp_avg"].abs().sum() for s in state.values() if "exp_avg" in s))


def _cool_worker(_, base: str, port: str, src: str) -> None:
    """Each cooldown (without, then with the optimizer state) by its own Trainer: its start state goes to
    base/cool_{with_optimizer}.pt, its run to base/cool_{with_optimizer}."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed

    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.train.launch import preflight

    for with_optimizer in (False, True):
        cfg = preflight(load_config("cpu_demo", [*COOL, f"train.init_from={src}",
                                                 f"train.init_from_optimizer={str(with_optimizer).lower()}"]), 1)
        tr = Trainer(cfg, Path(base) / f"cool_{with_optimizer}")
        named = list(tr.engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters([p for _, p in named]):
            params = {n: p.detach().clone() for n, p in named}
        start = {"step": tr.step, "sample_offset": tr.sample_offset, "schedule": tr.schedule(0), "params": params,
                 "ema": consolidate_shards([tr.ema.state_dict()]), "moments": _adam_moments(tr)}
        tr.fit()
        torch.save(start, Path(base) / f"cool_{with_optimizer}.pt")
        del tr, named, params, start
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def cooldowns(runs, tmp_path_factory) -> dict:
    """with_optimizer -> {"start": the cooldown Trainer's state before its first step, "run": its run dir},
    from the first run's latest checkpoint (step 6)."""
    base = tmp_path_factory.mktemp("cool")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"DS_ACCELERATOR": "cpu", "DS_SKIP_SHM_BUILD": "1", "OMP_NUM_THREADS": "1"}.items():
            mp.setenv(k, v)
        torch.multiprocessing.spawn(_cool_worker, nprocs=1, args=(str(base), str(free_port()), str(runs["straight"])))
    return {w: {"start": torch.load(base / f"cool_{w}.pt", weights_only=False), "run": base / f"cool_{w}"}
            for w in (False, True)}


@pytest.mark.parametrize("with_optimizer", [False, True])
def test_cooldown_starts_from_another_runs_weights_and_ema(runs, cooldowns, with_optimizer):
    src = runs["straight"]  # a run dir: its latest checkpoint, step 6
    res = cooldowns[with_optimizer]
    start = res["start"]
    online, target = load_consolidated(src, "online"), load_consolidated(src, "target")
    assert online["step"] == 6
    for part in ("encoder", "predictor"):
        for k, v in online[part].items():
            assert torch.equal(start["params"][f"{part}.{k}"], v), (part, k)
    # the EMA target is the source's EMA, not a fresh copy of its online encoder
    assert start["ema"].keys() == target["encoder"].keys()
    assert all(torch.equal(start["ema"][k], target["encoder"][k]) for k in start["ema"])
    assert any(not torch.equal(target["encoder"][k], online["encoder"][k]) for k in target["encoder"])
    # step, schedules and data position restart: wsd with no warmup starts at the peak LR
    assert start["step"] == 0 and start["sample_offset"] == 0
    assert (start["schedule"].lr, start["schedule"].momentum) == (LR, 0.9)
    assert (start["moments"] > 0) == with_optimizer  # Adam moments only with train.init_from_optimizer
    m = read_metrics(res["run"])
    assert [r["step"] for r in m] == [1, 2] and m[0]["lr"] == LR and m[1]["lr"] == pytest.approx((LR + FINAL_LR) / 2)
