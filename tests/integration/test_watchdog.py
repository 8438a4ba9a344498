"""Hang watchdog (vjepa_scale.train.watchdog): a stalled phase ends the rank with a message naming it.

The watchdog alone in a child interpreter (it ends its process with os._exit). Slow: 2 ranks under
torchrun, rank 1 frozen with SIGSTOP mid-training; rank 0 blocks in a collective, its watchdog names
the phase, the launcher tears the job down and no rank is left behind.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import ROOT, cpu_env, rank_processes, require, run, start, train_args, wait_for_step
from vjepa_scale.train.watchdog import EXIT_HUNG


def _child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", textwrap.dedent(code)], env=cpu_env(PYTHONPATH=str(ROOT)), timeout=timeout)


def test_stalled_phase_ends_the_process_with_message_and_stacks():
    t0 = time.monotonic()
    r = _child("""
        import time
        from vjepa_scale.train.watchdog import Watchdog

        def stuck_in_a_collective():
            time.sleep(60)

        wd = Watchdog(0.5, rank=3, host="node-7").start()
        wd.phase("forward/backward step 12")
        stuck_in_a_collective()
        """)
    assert r.returncode == EXIT_HUNG, r.stderr
    assert time.monotonic() - t0 < 30
    assert re.search(r"\[watchdog\] rank 3 on host node-7 \(pid \d+\) hung: 'forward/backward step 12' has run "
                     r"for \d+ s, past train.hang_timeout_s=0.5", r.stderr), r.stderr
    assert "stuck_in_a_collective" in r.stderr  # the stack dump shows where it waits


def test_stalled_phase_ends_the_process_even_without_a_working_stderr():
    """stderr closed (its reader gone): the message cannot be written, the rank still ends."""
    t0 = time.monotonic()
    r = _child("""
        import os, sys, time
        from vjepa_scale.train.watchdog import Watchdog

        os.close(2)
        sys.stderr.close()
        wd = Watchdog(0.5, rank=0).start()
        wd.phase("forward/backward step 1")
        time.sleep(60)
        """)
    assert r.returncode == EXIT_HUNG and time.monotonic() - t0 < 30


def test_a_stalled_checkpoint_load_ends_the_rank_naming_it(tmp_path):
    """The watchdog bounds the trainer's setup too: a resume whose checkpoint load stalls (an NFS stall, a
    stuck universal conversion; here a load that sleeps) ends the rank naming that phase (it waited forever)."""
    t0 = time.monotonic()
    r = run([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from helpers import single_process_group
        from vjepa_scale.config import load_config
        from vjepa_scale.train import checkpoint as ckpt_lib
        from vjepa_scale.train.engine import Trainer
        from vjepa_scale.train.launch import preflight

        env = single_process_group()
        cfg = preflight(load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2",
                                                 "optim.iterations=1", "train.progress_bar=false"]), 1)
        Trainer(cfg, {str(tmp_path / 'run')!r}, env=env).fit()  # one step, saved at the end
        cfg.train.hang_timeout_s = 5.0  # the setup's other phases take well under it (0.4 s here), even on a busy machine
        ckpt_lib.load_checkpoint = lambda *a, **k: time.sleep(120)  # the stall
        Trainer(cfg, {str(tmp_path / 'run')!r}, resume="auto", env=env)
        """)], env=cpu_env(PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}"), timeout=150)
    assert r.returncode == EXIT_HUNG, r.stdout[-2000:] + r.stderr[-3000:]
    assert time.monotonic() - t0 < 100
    assert re.search(r"hung: 'loading checkpoint \S+step_00000001' has run for \d+ s", r.stderr), r.stderr[-3000:]


def test_changing_phases_idle_and_disabled_never_fire():
    r = _child("""
        import time
        from vjepa_scale.train.watchdog import Watchdog

        with Watchdog(1.0, rank=0) as wd:
            for i in range(15):  # 1.5 s in all, each phase well under the timeout
                wd.phase(f"step {i}")
                time.sleep(0.1)
            wd.idle()
            time.sleep(2.0)  # idle is not timed
        time.sleep(2.0)  # stopped
        off = Watchdog(0, rank=0).start()
        off.phase("anything")
        time.sleep(0.5)
        assert not off.enabled and off._thread is None
        print("survived")
        """)
    assert r.returncode == 0 and "survived" in r.stdout, r.stderr


# --------------------------------------------------------------------------------------------------

OPTS = ["model.depth=1", "data.crop_size=32", "data.synthetic_size=64", "optim.iterations=100000",
        "train.log_every=1", "train.checkpoint_every=100000", "train.progress_bar=false"]
TIMEOUT_S = 8


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_two_rank_stalled_rank_ends_job_with_message(tmp_path):
    require("deepspeed")
    log = tmp_path / "log.txt"
    proc = start("tools/train.py", *train_args(tmp_path / "run", *OPTS, f"train.hang_timeout_s={TIMEOUT_S}"), nproc=2,
                 log=log, start_new_session=True)
    victim = None
    try:
        wait_for_step(tmp_path / "run", 3, proc, log=log)
        rank1 = rank_processes(proc.pid).get(1)
        assert rank1 is not None
        victim = rank1.pid
        os.kill(victim, signal.SIGSTOP)  # frozen mid-training, as a hung rank would be
        stopped = time.monotonic()
        rc = proc.wait(timeout=TIMEOUT_S + 60 + 40)  # watchdog, then the launcher's SIGTERM grace (30 s)
        took = time.monotonic() - stopped
        time.sleep(1)
        left_behind = _alive(victim)  # before the clean-up below
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if victim is not None and _alive(victim):
            os.kill(victim, signal.SIGKILL)
    out = log.read_text()
    assert rc != 0, out[-3000:]
    m = re.search(r"\[watchdog\] rank 0 on host \S+ \(pid \d+\) hung: '([^']+ step \d+)' has run for (\d+) s", out)
    assert m, out[-3000:]
    # rank 0 waits in whichever collective came next: any phase but loading its own batch or saving
    assert re.match(r"(forward/backward|optimizer|EMA update|metrics all-reduce|preemption check after|"
                    r"agreeing that every rank loaded its batch for) step \d+$", m.group(1)), m.group(1)
    assert TIMEOUT_S <= int(m.group(2)) < TIMEOUT_S + 10 and took < TIMEOUT_S + 60
    assert "Stacks of this rank's threads" in out
    assert not left_behind, "the frozen rank outlived the job"
