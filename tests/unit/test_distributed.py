"""Process / device / precision setup shared by training and evaluation (vjepa_scale.distributed)."""
from __future__ import annotations

import pytest
import torch

from vjepa_scale.config import ConfigError
from vjepa_scale.distributed import DistEnv, compute_dtype, device_for, dist_env


def test_dist_env_reads_the_launcher_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist_env() == DistEnv(0, 1, 0)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == DistEnv(5, 8, 1)


def test_device_for_names():
    env = DistEnv(3, 4, 1)
    assert device_for(env, "cpu") == torch.device("cpu")
    auto = device_for(env)
    assert auto == (torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu"))
    if torch.cuda.is_available():
        assert device_for(env, "cuda") == torch.device("cuda", 1)  # a bare cuda is this rank's GPU
        assert device_for(env, "cuda:0") == torch.device("cuda", 0)
    else:
        with pytest.raises(ConfigError, match=r"run.device='cuda' but CUDA is not available"):
            device_for(env, "cuda", key="run.device")


def test_device_for_refuses_other_names_and_gpus_it_does_not_see(monkeypatch):
    """A name torch might take or not ('gpu' was its RuntimeError) and an index past the visible GPUs are
    ConfigErrors naming the key."""
    env = DistEnv(0, 1, 0)
    for bad in ("gpu", "cuda:x", "cuda:-1", "mps"):
        with pytest.raises(ConfigError, match=rf"^run.device must be auto, cpu, cuda or cuda:N .*got '{bad}'$"):
            device_for(env, bad, key="run.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_for(env, "cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"^run.device='cuda:2' but this process sees 2 GPU\(s\) \(cuda:0 to cuda:1\)$"):
        device_for(env, "cuda:2", key="run.device")


def test_compute_dtype_auto_follows_the_device():
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert compute_dtype("auto") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert compute_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert compute_dtype("fp32", torch.device("cuda", 0)) == torch.float32


def test_quiet_deprecated_collectives_hides_only_zeros_two_warnings():
    """ZeRO's per-step reduce_scatter_tensor and (ZeRO-2/3) all_gather_into_tensor deprecations are hidden;
    another deprecation (or the same text as another category) still shows."""
    import warnings

    from vjepa_scale.distributed import quiet_deprecated_collectives

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_deprecated_collectives()
        for name in ("reduce_scatter_tensor", "all_gather_into_tensor", "reduce_op"):
            warnings.warn(f"`torch.distributed.{name}` is deprecated. Please use ...", FutureWarning)
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated.", UserWarning)
    assert [(w.category, str(w.message).split("`")[1]) for w in seen] == [
        (FutureWarning, "torch.distributed.reduce_op"), (UserWarning, "torch.distributed.all_gather_into_tensor")]


def test_end_process_leaves_the_group_flushes_and_keeps_the_exit_code(tmp_path):
    """A script's end after gloo collectives: the group is left, buffered output and logs reach their
    files, and the exit code is the one given (75, preempted, here), without interpreter finalization."""
    import subprocess
    import sys

    from helpers import cpu_env, free_port

    script = tmp_path / "s.py"
    script.write_text(
        "import logging, sys, torch, torch.distributed as dist\n"
        "from vjepa_scale.distributed import end_process\n"
        f"logging.basicConfig(filename={str(tmp_path / 'log.txt')!r}, level=logging.INFO)\n"
        "dist.init_process_group('gloo', rank=0, world_size=1)\n"
        "t = torch.ones(4)\n"
        "work = dist.all_reduce(t, async_op=True)  # a work object still referenced at the end\n"
        "logging.info('logged before the end')\n"
        "print('printed before the end', end='')\n"
        "end_process(75)\n"
        "print('never')\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       env=cpu_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())))
    assert r.returncode == 75, r.stderr[-2000:]
    assert r.stdout == "printed before the end" and "logged before the end" in (tmp_path / "log.txt").read_text()
