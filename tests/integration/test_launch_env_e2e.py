"""Launching the way clusters do (vjepa_scale.distributed), with real processes: the check that every
rank sees the run folder (tools/train.py exits 2 when they do not), two tasks started the way srun
does, and the process-group timeout the trainer sets. SLURM's variables and node lists:
unit/test_launch_env.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import cpu_env, free_port, require, run, start, train_args
from vjepa_scale.distributed import SharedDirError, check_shared_dir
from vjepa_scale.weights import find_latest


def _check_worker(rank: int, world: int, port: int, folders: list[str], errors) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        check_shared_dir(folders[rank], wait_s=0.5)
        errors.put((rank, None))
    except SharedDirError as e:
        errors.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


def _run_check(folders: list[str]) -> dict[int, str | None]:
    # spawn, not fork: a forked rank would inherit any process group an earlier test joined in-process
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    mp.start_processes(_check_worker, args=(len(folders), free_port(), folders, errors), nprocs=len(folders),
                       start_method="spawn")
    return dict(errors.get(timeout=60) for _ in folders)


def test_shared_dir_check_passes_on_a_shared_folder(tmp_path):
    out = _run_check([str(tmp_path / "run")] * 2)
    assert out == {0: None, 1: None}
    assert list((tmp_path / "run").iterdir()) == []  # the token is removed


def test_shared_dir_check_names_the_ranks_that_cannot_see_the_folder(tmp_path):
    """Each rank given its own folder stands for node-local disks: rank 1 cannot see rank 0's token,
    and every rank fails with the same message (no rank is left waiting in a collective)."""
    out = _run_check([str(tmp_path / "node0" / "run"), str(tmp_path / "node1" / "run")])
    assert out[0] == out[1] and out[0] is not None
    assert f"rank 1 on {socket.gethostname()}" in out[0] and "rank 0 on" not in out[0]
    assert "shared by every node" in out[0] and str(tmp_path / "node0" / "run") in out[0]


def test_train_exits_2_when_the_ranks_do_not_share_the_run_folder(tmp_path):
    """tools/train.py with each rank's --output-dir on its own "node-local" disk (two folders stand for two
    hosts): the start-up check's SharedDirError is a config error, exit 2 on every rank with rank 0 naming
    the rank that cannot see the folder, before any step (not a traceback with exit 1)."""
    require("deepspeed")
    port = str(free_port())
    procs = []
    for r in (0, 1):
        env = cpu_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        args = train_args(tmp_path / f"node{r}" / "run", "model.depth=1", "data.crop_size=32", "optim.iterations=2")
        procs.append(start("tools/train.py", *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=240) for p in procs]
    err0 = outs[0][1]
    assert [p.returncode for p in procs] == [2, 2], err0[-3000:] + outs[1][1][-3000:]
    assert f"config error: the run folder {tmp_path / 'node0' / 'run'} is not shared: rank 1 on " \
           f"{socket.gethostname()} cannot see" in err0, err0[-3000:]
    assert "Traceback" not in err0 + outs[1][1]
    assert not list((tmp_path / "node0" / "run" / "checkpoints").glob("step_*"))


@pytest.mark.slow
def test_two_tasks_started_the_way_srun_does(tmp_path):
    """`srun python tools/train.py`: two plain processes that know only SLURM's variables train as
    ranks 0 and 1 (rendezvous on the node list's first host) and write one 2-rank checkpoint."""
    require("deepspeed")
    env = cpu_env(RANK=None, WORLD_SIZE=None, LOCAL_RANK=None, MASTER_ADDR=None, SLURM_JOB_ID="4242",
                  SLURM_NTASKS="2", SLURM_NODELIST="localhost", MASTER_PORT=str(free_port()))
    args = train_args(tmp_path / "run", "model.depth=1", "data.crop_size=32", "data.synthetic_size=64",
                      "optim.iterations=2")
    procs = [start("tools/train.py", *args, env=dict(env, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in (0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    ckpt = find_latest(tmp_path / "run")
    assert ckpt.name == "step_00000002" and sorted(f.name for f in (ckpt / "ema").iterdir()) == [
        "rank00000.pt", "rank00001.pt"]


# The default group's timeout as the installed torch keeps it: its backend's options (gloo here).
GROUP_TIMEOUT = """
import sys, torch, torch.distributed as dist
from vjepa_scale.train.launch import join_process_group
join_process_group(float(sys.argv[1]))
pg = dist.distributed_c10d._get_default_group()
print("timeout_s", pg._get_backend(torch.device("cpu")).options._timeout.total_seconds())
from deepspeed.constants import default_pg_timeout  # DeepSpeed's own (10 min, or DEEPSPEED_TIMEOUT)
print("default_s", default_pg_timeout.total_seconds())
dist.destroy_process_group()
"""


@pytest.mark.parametrize("hang_timeout_s", [5.0, 0.0])
def test_process_group_timeout_is_set_just_above_the_hang_timeout(hang_timeout_s):
    """The trainer's join (`launch.join_process_group`, 1 rank in a fresh interpreter): with
    train.hang_timeout_s > 0 a collective fails a minute after the watchdog's limit; 0 keeps the
    default timeout of `deepspeed.init_distributed`."""
    require("deepspeed")
    env = cpu_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    r = run([sys.executable, "-c", GROUP_TIMEOUT, hang_timeout_s], env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    values = dict(line.split() for line in r.stdout.splitlines() if line.startswith(("timeout_s", "default_s")))
    timeout_s, default_s = float(values["timeout_s"]), float(values["default_s"])
    assert timeout_s == (hang_timeout_s + 60 if hang_timeout_s > 0 else default_s), r.stdout
    assert default_s not in (5.0, 65.0)  # the default (10 min) tells the two cases apart
