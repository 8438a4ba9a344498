"""Launching the way clusters do (vjepa_scale.distributed): SLURM's variables and node lists. The check
that every rank sees the run folder and srun-style tasks: integration/test_launch_env_e2e.py."""
from __future__ import annotations

import pytest

from vjepa_scale.distributed import DistEnv, dist_env, expand_nodelist, slurm_master_port

SRUN_TASK = {"SLURM_JOB_ID": "123456", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
             "SLURM_NODELIST": "gpu[017-018,020]", "SLURM_JOB_NODELIST": "gpu[017-018,020]"}


def test_expand_nodelist():
    assert expand_nodelist("node[01-04,07]") == ["node01", "node02", "node03", "node04", "node07"]
    assert expand_nodelist("host") == ["host"]
    assert expand_nodelist("a1,b[2-3],c") == ["a1", "b2", "b3", "c"]
    assert expand_nodelist("gpu-[9-11]x") == ["gpu-9x", "gpu-10x", "gpu-11x"]
    assert expand_nodelist("r[1-2]-n[08-09]") == ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]
    with pytest.raises(ValueError, match="bad range"):
        expand_nodelist("n[5-3]")


def test_dist_env_from_slurm():
    env = dist_env(SRUN_TASK)
    assert env == DistEnv(5, 8, 1, "gpu017", 20000 + 123456 % 10000)
    assert env.master_port == slurm_master_port("123456") == 23456
    # the step's own variables win over the job's; MASTER_ADDR / MASTER_PORT when set by the user
    step = dict(SRUN_TASK, SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="gpu[020-021]")
    assert dist_env(step) == DistEnv(5, 4, 1, "gpu020", 23456)
    assert dist_env(dict(step, MASTER_ADDR="10.0.0.1", MASTER_PORT="31000")) == DistEnv(5, 4, 1, "10.0.0.1", 31000)
    only_job = {k: v for k, v in SRUN_TASK.items() if k != "SLURM_NODELIST"}
    assert dist_env(only_job).master_addr == "gpu017"
    # two steps of one job (srun --exact side by side) rendezvous on different ports
    ports = {dist_env(dict(SRUN_TASK, SLURM_STEP_ID=str(k))).master_port for k in range(4)}
    assert len(ports) == 4 and dist_env(dict(SRUN_TASK, SLURM_STEP_ID="0")).master_port == 23456


def test_launcher_variables_win_over_slurm():
    """torchrun / deepspeed inside an allocation (srun torchrun ...) set RANK etc.: those are used."""
    env = dist_env(dict(SRUN_TASK, RANK="2", WORLD_SIZE="3", LOCAL_RANK="0"))
    assert env == DistEnv(2, 3, 0)
    assert dist_env({}) == DistEnv(0, 1, 0)
