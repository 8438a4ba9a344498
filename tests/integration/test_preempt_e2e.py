"""Preemption (vjepa_scale.train.preempt) and per-rank RNG (vjepa_scale.train.rng) across processes.

The launcher watch in a child under a stand-in launcher (in-process cases: unit/test_preempt.py).
Slow (2 ranks, gloo, tools/train.py through the launchers, tiny config, N steps):
  straight:  N steps under `deepspeed`, a checkpoint after every step;
  preempted: the same run, SIGTERM to rank 1 after step 3 is logged -> exit 75, one checkpoint at
             the step reached; then `--resume auto` (under torchrun) to the end;
  outer:     SIGTERM to the outer `deepspeed` runner -> the ranks save, exit, and leave no orphans.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from vjepa_scale.train import preempt
from vjepa_scale.train.metrics import read_metrics
from vjepa_scale.weights import find_latest, list_checkpoints, load_consolidated

ROOT = Path(__file__).resolve().parent.parent
N = 14
OPTS = ["model.depth=1", "data.crop_size=32", "data.synthetic_size=64", f"optim.iterations={N}",
        "optim.ema=[0.5,0.7]", "train.log_every=1", "train.keep_last=100"]


def test_launcher_watch_sees_the_launcher_exit(tmp_path):
    """A process under a (stand-in) launcher that exits: its watch thread requests a stop."""
    out = tmp_path / "child.out"
    child = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from vjepa_scale.train import preempt; "
             f"w = preempt.watch_launchers(0.1); open({str(out)!r} + '.ready', 'w').close(); time.sleep(3); "
             f"open({str(out)!r}, 'w').write(repr((w, preempt.stop_requested())))")
    # the parent's command line names a launcher (python -c CODE torchrun); it starts the child and
    # exits once the child watches it
    parent = (f"import os, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
              f"while not os.path.exists({str(out)!r} + '.ready'): time.sleep(0.05)")
    r = subprocess.run([sys.executable, "-c", parent, "torchrun"], capture_output=True, text=True, timeout=60)
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    watched, reason = eval(out.read_text())
    assert len(watched) == 1 and reason == f"launcher pid {watched[0]} exited", (watched, reason, r.stderr)


# -- 2 ranks through the launchers ------------------------------------------------------------------

def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _cmd(run_dir, *opts, launcher="deepspeed", resume=None) -> list[str]:
    args = ["tools/train.py", "--config", "cpu_demo.yaml", "--output-dir", str(run_dir)]
    for o in [*OPTS, *opts]:
        args += ["--opt", o]
    if resume:
        args += ["--resume", resume]
    if launcher == "deepspeed":
        ds = shutil.which("deepspeed", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
        return [ds, "--num_gpus", "2", "--master_port", _free_port(), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(), *args]


def _env() -> dict:
    return dict(os.environ, DS_ACCELERATOR="cpu", DS_SKIP_SHM_BUILD="1", OMP_NUM_THREADS="1")


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


def _start(cmd, log: Path) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended early (exit {proc.returncode})"
        if (run_dir / "metrics.jsonl").exists() and any(r["step"] >= step for r in read_metrics(run_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} was not reached in {timeout} s")


def _ranks(proc: subprocess.Popen) -> dict[int, psutil.Process]:
    """local rank -> process, among the launcher's descendants running tools/train.py."""
    out = {}
    for p in psutil.Process(proc.pid).children(recursive=True):
        cmd = p.cmdline()
        if any(c.endswith("tools/train.py") for c in cmd[1:3]):  # python [-u] tools/train.py (not a launcher)
            m = [c for c in cmd if c.startswith("--local_rank=")]
            out[int(m[0].split("=")[1]) if m else int(p.environ().get("LOCAL_RANK", -1))] = p
    return out


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def _rng_files(ckpt: Path) -> dict[int, dict]:
    return {r: torch.load(ckpt / "rng" / f"rank{r:05d}.pt", weights_only=False) for r in (0, 1)}


def _rng_equal(a: dict, b: dict) -> bool:
    return (torch.equal(a["torch"], b["torch"]) and a["python"] == b["python"]
            and all(np.array_equal(x, y) for x, y in zip(a["numpy"], b["numpy"])))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("preempt")
    straight, run = base / "straight", base / "preempted"
    r = _run(_cmd(straight, "train.checkpoint_every=1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # checkpoint_every > N: the only checkpoint before the end is the one the preemption writes
    proc = _start(_cmd(run, "train.checkpoint_every=100"), base / "preempted.log")
    _wait_for_step(run, 3, proc)
    _ranks(proc)[1].send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    log = (base / "preempted.log").read_text()
    state = {"code": code, "log": log, "ckpts": [c.name for c in list_checkpoints(run)],
             "steps": sorted(_losses(run))}
    rr = _run(_cmd(run, "train.checkpoint_every=100", launcher="torchrun", resume="auto"))
    assert rr.returncode == 0, rr.stdout[-3000:] + rr.stderr[-3000:]
    yield {"straight": straight, "resumed": run, "preempted": state, "resumed_log": rr.stdout + rr.stderr}


@pytest.mark.slow
def test_sigterm_to_a_rank_saves_at_the_step_reached_and_exits_75(runs):
    st = runs["preempted"]
    assert st["code"] == preempt.EXIT_PREEMPTED, st["log"][-3000:]
    reached = st["steps"][-1]
    assert 3 <= reached < N and st["steps"] == list(range(1, reached + 1))
    assert st["ckpts"] == [f"step_{reached:08d}"], st["ckpts"]
    assert re.search(rf"step {reached}: preempted \(.*\), saved", st["log"])
    assert "got SIGTERM" in st["log"]


@pytest.mark.slow
def test_resume_after_preemption_is_exact(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    assert f"at step {runs['preempted']['steps'][-1]}" in runs["resumed_log"]
    assert _losses(resumed) == _losses(straight) and sorted(_losses(resumed)) == list(range(1, N + 1))
    for which in ("online", "target"):
        a, b = load_consolidated(straight, which), load_consolidated(resumed, which)
        assert a["step"] == b["step"] == N
        for part in ("encoder", "predictor"):
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (which, part)


@pytest.mark.slow
def test_rng_state_of_a_resumed_run_equals_the_straight_run(runs):
    """torch, numpy and python generators, per rank: seeded (two fresh runs agree at the preempted
    step, ranks differ), and after the resume equal to the uninterrupted run's at step N."""
    straight, resumed = runs["straight"], runs["resumed"]
    j = runs["preempted"]["steps"][-1]
    at_j = _rng_files(resumed / "checkpoints" / f"step_{j:08d}")
    straight_j = _rng_files(straight / "checkpoints" / f"step_{j:08d}")
    assert all(_rng_equal(at_j[r], straight_j[r]) for r in (0, 1))
    assert not _rng_equal(at_j[0], at_j[1])
    a, b = _rng_files(find_latest(straight)), _rng_files(find_latest(resumed))
    assert find_latest(resumed).name == f"step_{N:08d}"
    assert all(_rng_equal(a[r], b[r]) for r in (0, 1))


@pytest.mark.slow
def test_sigterm_to_the_outer_deepspeed_launcher_leaves_no_orphans(tmp_path):
    run = tmp_path / "outer"
    proc = _start(_cmd(run, "train.checkpoint_every=100"), tmp_path / "outer.log")
    _wait_for_step(run, 2, proc)
    tree = psutil.Process(proc.pid).children(recursive=True)
    ranks = _ranks(proc)
    assert sorted(ranks) == [0, 1]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(tree, timeout=90)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    log = (tmp_path / "outer.log").read_text()
    assert not alive, [p.cmdline() for p in alive]
    assert "launcher pid" in log and "preempted (" in log, log[-3000:]
    ckpt = find_latest(run)
    assert ckpt is not None and int(ckpt.name.split("_")[1]) < N, log[-3000:]
