"""Divergence guard with 2 ranks: `optim.lr=1e6` stops every rank with the error and EXIT_DIVERGED (plain
rank processes: each rank's own code); a NaN batch on rank 1 alone is skipped by both ranks and the run
finishes (tools/train.py under torchrun). One rank without a launcher: the exit code of a diverged run.
In-process cases: unit/test_divergence.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import equal_tensors, launch, require, run_ranks, train_args
from vjepa_scale.train.guard import EXIT_DIVERGED
from vjepa_scale.weights import CKPT_SUBDIR, find_latest, list_checkpoints, load_consolidated

require("deepspeed")
OPTS = ["model.depth=1", "data.crop_size=32", "data.synthetic_size=64", "optim.ema=[0.5,0.7]",
        "train.log_every=1", "train.checkpoint_every=1", "train.keep_last=20"]


def _launch(run_dir, *opts, script=("tools/train.py",), nproc=2):
    return launch(*script, *train_args(run_dir, *OPTS, *opts), nproc=nproc)


def _strict_records(run_dir) -> list[dict]:
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token} in metrics.jsonl")

    return [json.loads(line, parse_constant=refuse) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _weights(ckpt) -> dict[str, torch.Tensor]:
    on, tg = load_consolidated(ckpt, "online"), load_consolidated(ckpt, "target")
    return {**{f"online.encoder.{k}": v for k, v in on["encoder"].items()},
            **{f"online.predictor.{k}": v for k, v in on["predictor"].items()},
            **{f"target.{k}": v for k, v in tg["encoder"].items()}}



def test_divergence_exits_with_its_own_code(tmp_path):
    """One rank without a launcher (torchrun reports its own code, not the rank's): a NaN batch in
    step 2 with train.max_bad_steps=1 stops the run with EXIT_DIVERGED (3), not the generic 1."""
    run = tmp_path / "run"
    r = _launch(run, "optim.iterations=4", "train.max_bad_steps=1", nproc=None,
                script=("tests/integration/nan_batch_at_step.py", "--nan-micro-step", "1", "--nan-rank", "0"))
    out = r.stdout + r.stderr
    assert r.returncode == EXIT_DIVERGED == 3, (r.returncode, out[-3000:])
    assert "training diverged at step 2" in out
    assert ("warning: step 2: the loss was inf/NaN (on some rank); its update and the EMA update were skipped (1 bad "
            "step(s) in a row, the run stops at train.max_bad_steps=1; 1 skipped in all)") in out
    assert [int(c.name.split("_")[1]) for c in list_checkpoints(run)] == [1]


@pytest.mark.slow
def test_two_rank_divergence_stops_with_error(tmp_path):
    """optim.lr=1e6 without warmup: the first steps are finite, then every step is skipped; after
    train.max_bad_steps=3 in a row the run stops naming the step and the last finite loss. Skipped
    steps leave online weights and EMA target as they were; every checkpoint is finite and the
    last one written before the stop stays `latest`."""
    run = tmp_path / "run"
    ranks = run_ranks("tools/train.py", *train_args(run, *OPTS, "optim.iterations=12", "optim.lr=1e6",
                                                    "optim.start_lr=1e6", "optim.warmup=0", "train.max_bad_steps=3"))
    out = "".join(r.stdout + r.stderr for r in ranks)
    assert [r.returncode for r in ranks] == [EXIT_DIVERGED] * 2, out[-3000:]
    recs = _strict_records(run)
    counts = [0] + [rec["skipped_steps"] for rec in recs]
    skipped = [rec["step"] for rec, before in zip(recs, counts) if rec["skipped_steps"] > before]
    assert len(skipped) == 3 and skipped == list(range(skipped[0], skipped[0] + 3)), recs
    first_bad, stop = skipped[0], skipped[-1]
    assert [rec["step"] for rec in recs][-1] == stop  # nothing trained past the stop
    assert all(("nonfinite" in rec) == (rec["step"] in skipped) for rec in recs)  # grad_norm inf: null
    assert f"training diverged at step {stop}" in out and "Last finite loss" in out and "optim.lr" in out
    assert out.count("training diverged") == 1  # rank 0 explains, once
    last_finite = recs[first_bad - 2]
    assert last_finite["step"] == first_bad - 1 and f"{last_finite['loss']:.6g} at step {first_bad - 1}" in out

    ckpts = list_checkpoints(run)
    assert [int(c.name.split("_")[1]) for c in ckpts] == list(range(1, stop))
    assert find_latest(run) == ckpts[-1]
    weights = {int(c.name.split("_")[1]): _weights(c) for c in ckpts}
    assert all(torch.isfinite(v).all() for w in weights.values() for v in w.values())
    for s in range(first_bad, stop):  # skipped step s: state after s == state after s - 1
        assert equal_tensors(weights[s], weights[s - 1]), f"skipped step {s} changed the online weights or the EMA"


@pytest.mark.slow
def test_two_rank_isolated_nan_batch_on_one_rank(tmp_path):
    """Rank 1 alone gets an all-NaN micro-batch in step 4 (grad_accum=2): both ranks skip it, the run
    finishes (exit 0), checkpoint 4 equals checkpoint 3, and training goes on afterwards."""
    run = tmp_path / "run"
    r = _launch(run, "optim.iterations=6", "optim.grad_accum=2", "train.max_bad_steps=2",
                script=("tests/integration/nan_batch_at_step.py", "--nan-micro-step", "6", "--nan-rank", "1"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    recs = {rec["step"]: rec for rec in _strict_records(run)}
    assert [recs[s]["skipped_steps"] for s in range(1, 7)] == [0, 0, 0, 1, 1, 1]
    assert recs[4]["nonfinite"] == ["loss", "loss_type0", "loss_type1", "target_std", "grad_norm"]  # NaN targets too
    assert all("nonfinite" not in recs[s] for s in (1, 2, 3, 5, 6))
    assert ("warning: step 4: the loss was inf/NaN (on some rank); its update and the EMA update were skipped (1 bad "
            "step(s) in a row") in r.stdout and r.stdout.count("warning: step ") == 1  # rank 0 reports, once
    w = {int(c.name.split("_")[1]): _weights(c) for c in list_checkpoints(run)}
    assert sorted(w) == list(range(1, 7))
    assert equal_tensors(w[4], w[3])
    assert not equal_tensors(w[5], w[4]) and not equal_tensors(w[3], w[2])
    assert json.loads((run / CKPT_SUBDIR / "step_00000006" / "meta.json").read_text())["skipped_steps"] == 1
