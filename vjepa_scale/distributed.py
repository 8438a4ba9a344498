"""Process, device and precision setup shared by training and evaluation.

- `dist_env()`: rank / world size / local rank from the launcher's environment variables
  (`deepspeed`, `torchrun`; one process when unset).
- `device_for(env, name)`: `auto` -> this rank's GPU (cuda:LOCAL_RANK) when CUDA is available, else
  the CPU; `cpu` / `cuda` / `cuda:i` as given (a bare `cuda` -> cuda:LOCAL_RANK).
- `compute_dtype(precision, device)`: `auto` -> bf16 on GPU, fp32 on CPU; `bf16` / `fp32` as given.
- `init_distributed(device, deepspeed)`: join the process group (nccl on GPU, gloo on CPU) and pin
  this rank's GPU. Training joins through DeepSpeed (also as a single process: its engines need a
  group); evaluation joins through torch.distributed only when WORLD_SIZE > 1.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from vjepa_scale.config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int


def dist_env() -> DistEnv:
    """Rank / world / local rank from the launcher's environment (1 process when not launched)."""
    return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def use_cuda() -> bool:
    return torch.cuda.is_available()


def device_for(env: Optional[DistEnv] = None, name: str = "auto", key: str = "device") -> torch.device:
    """The device this rank computes on; `name` is `auto`, `cpu`, `cuda` or `cuda:i` (`key` names the
    setting in errors)."""
    local_rank = (env or dist_env()).local_rank
    if name == "auto":
        return torch.device("cuda", local_rank) if use_cuda() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not use_cuda():
            raise ConfigError(f"{key}={name!r} but CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def compute_dtype(precision: str, device: Optional[torch.device] = None) -> torch.dtype:
    """`auto`: bf16 on GPU (on `device`, else whenever CUDA is available) and fp32 on CPU."""
    if precision == "auto":
        cuda = device.type == "cuda" if device is not None else use_cuda()
        precision = "bf16" if cuda else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def init_distributed(device: Optional[torch.device] = None, deepspeed: bool = False,
                     timeout_s: Optional[float] = None) -> DistEnv:
    """Join the process group (nccl on GPU, gloo on CPU) and pin this rank's GPU; returns the env.

    timeout_s: how long a collective may wait before it fails (None: torch's default).

    deepspeed=True: `deepspeed.init_distributed`, also for a single process (MASTER_ADDR/PORT default
    to 127.0.0.1:29500). Otherwise torch.distributed, and only when WORLD_SIZE > 1 (a single process
    then runs without a group: rank 0 of 1).
    """
    env = dist_env()
    device = device if device is not None else device_for(env)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kw = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    if deepspeed:
        import deepspeed as ds

        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            os.environ.setdefault("RANK", str(env.rank))
            os.environ.setdefault("WORLD_SIZE", str(env.world_size))
            os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
            ds.init_distributed(dist_backend=backend, verbose=False, **kw)
    elif env.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, **kw)
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), env.local_rank)
    return DistEnv(0, 1, env.local_rank)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the joined process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
