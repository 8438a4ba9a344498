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


def test_compute_dtype_auto_follows_the_device():
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert compute_dtype("auto") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert compute_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert compute_dtype("fp32", torch.device("cuda", 0)) == torch.float32
