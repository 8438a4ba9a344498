"""Process, device and precision setup shared by training and evaluation.

- `dist_env()`: rank / world size / local rank from the launcher's environment: RANK / WORLD_SIZE /
  LOCAL_RANK (`deepspeed`, `torchrun`), else SLURM's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID
  (`srun python tools/train.py ...`), else one process. Under SLURM the rendezvous is the first
  host of the step's node list (`expand_nodelist`) on port `slurm_master_port(job id)`, unless
  MASTER_ADDR / MASTER_PORT are set.
- `device_for(env, name)`: `auto` -> this rank's GPU (cuda:LOCAL_RANK) when CUDA is available, else
  the CPU; `cpu` / `cuda` / `cuda:i` as given (a bare `cuda` -> cuda:LOCAL_RANK).
- `compute_dtype(precision, device)`: `auto` -> bf16 on GPU, fp32 on CPU; `bf16` / `fp32` as given.
- `init_distributed(device, deepspeed)`: join the process group (nccl on GPU, gloo on CPU) and pin
  this rank's GPU. Training joins through DeepSpeed (also as a single process: its engines need a
  group); evaluation joins through torch.distributed only when WORLD_SIZE > 1.
- `check_shared_dir(path)`: collective; every rank must see a token file that rank 0 writes into
  `path` (a run folder on node-local disks fails here, naming the ranks and hosts that cannot).
"""
from __future__ import annotations

import datetime
import gc
import logging
import os
import re
import secrets
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NoReturn, Optional

import torch
import torch.distributed as dist

from vjepa_scale.config import ConfigError, check_device_name

DEFAULT_MASTER_PORT = 29500
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 10000  # under SLURM: MASTER_PORT = 20000 + job id % 10000


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    # Rendezvous derived from SLURM's variables (None: the launcher's MASTER_ADDR / MASTER_PORT).
    master_addr: Optional[str] = None
    master_port: Optional[int] = None


def quiet_deprecated_collectives() -> None:
    """Hide torch's FutureWarnings that `reduce_scatter_tensor` and `all_gather_into_tensor` are deprecated:
    DeepSpeed's ZeRO calls them every step (the gradient reduction; ZeRO-2/3's parameter gathers). On the
    CPU the once-per-place display does not hold (DeepSpeed's CPU accelerator runs a numactl subprocess
    per step), so they would show on nearly every step, between the progress bar's updates; only these
    two warnings are filtered."""
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` "
                            r"is deprecated", category=FutureWarning)


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list -> host names: `node[01-03,07],gpu-a[1-2]x` -> node01 node02 node03
    node07 gpu-a1x gpu-a2x (ranges keep their zero padding; several bracket groups multiply)."""
    hosts: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):
        names = [""]
        for text, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            if not text and not ranges:
                continue
            names = [n + text for n in names]
            if ranges:
                names = [n + v for n in names for v in _expand_ranges(ranges)]
        hosts += names
    return hosts


def _expand_ranges(ranges: str) -> list[str]:
    out = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if not hi:
            out.append(lo)
            continue
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise ValueError(f"bad range '{part}' in a SLURM node list")
        out += [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    return out


def slurm_master_port(job_id: str | int | None, step_id: str | int | None = None) -> int:
    """The rendezvous port of a SLURM job step: 20000 + (job id + 1009 x step id) % 10000 (29500
    without a job id), so two jobs, or two steps of one job (`srun --exact`), sharing a first node
    rarely collide; set MASTER_PORT to be sure."""
    if job_id is None or not str(job_id).isdigit():
        return DEFAULT_MASTER_PORT
    step = int(step_id) if step_id is not None and str(step_id).isdigit() else 0
    return SLURM_PORT_BASE + (int(job_id) + 1009 * step) % SLURM_PORT_SPAN


def dist_env(environ: Optional[Mapping[str, str]] = None) -> DistEnv:
    """This process's place in the job, from `environ` (default os.environ); 1 process when not launched.

    RANK / WORLD_SIZE / LOCAL_RANK (set by `deepspeed` and `torchrun`) win; without RANK, SLURM's
    SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (one task per rank, started by `srun`), and the
    rendezvous from MASTER_ADDR / MASTER_PORT or else the node list's first host and the job id.
    """
    e = os.environ if environ is None else environ
    if "RANK" in e or "SLURM_PROCID" not in e:
        return DistEnv(int(e.get("RANK", 0)), int(e.get("WORLD_SIZE", 1)), int(e.get("LOCAL_RANK", 0)))
    world = int(e.get("SLURM_STEP_NUM_TASKS", e.get("SLURM_NTASKS", 1)))
    addr = e.get("MASTER_ADDR")
    if addr is None:
        nodelist = e.get("SLURM_STEP_NODELIST") or e.get("SLURM_NODELIST") or e.get("SLURM_JOB_NODELIST")
        addr = expand_nodelist(nodelist)[0] if nodelist else "127.0.0.1"
    port = (int(e["MASTER_PORT"]) if "MASTER_PORT" in e
            else slurm_master_port(e.get("SLURM_JOB_ID"), e.get("SLURM_STEP_ID")))
    return DistEnv(int(e["SLURM_PROCID"]), world, int(e.get("SLURM_LOCALID", 0)), addr, port)


def use_cuda() -> bool:
    return torch.cuda.is_available()


def device_for(env: Optional[DistEnv] = None, name: str = "auto", key: str = "device") -> torch.device:
    """The device this rank computes on; `name` is `auto`, `cpu`, `cuda` or `cuda:i` (`key` names the
    setting in errors; another name, or a GPU index this process does not see, is a ConfigError). A rank
    that sees fewer GPUs than its local rank (e.g. SLURM's --gpus-per-task, one visible GPU per task) takes
    GPU local_rank % visible."""
    check_device_name(name, key)
    local_rank = (env or dist_env()).local_rank
    if name == "auto":
        return torch.device("cuda", _visible_gpu(local_rank)) if use_cuda() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not use_cuda():
            raise ConfigError(f"{key}={name!r} but CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", _visible_gpu(local_rank))
        elif dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={name!r} but this process sees {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def _visible_gpu(local_rank: int) -> int:
    return local_rank % max(1, torch.cuda.device_count())


def compute_dtype(precision: str, device: Optional[torch.device] = None) -> torch.dtype:
    """`auto`: bf16 on GPU (on `device`, else whenever CUDA is available) and fp32 on CPU."""
    if precision == "auto":
        cuda = device.type == "cuda" if device is not None else use_cuda()
        precision = "bf16" if cuda else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _export(env: DistEnv) -> None:
    """The env:// rendezvous variables for torch.distributed / DeepSpeed (kept where already set)."""
    os.environ.setdefault("RANK", str(env.rank))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    os.environ.setdefault("MASTER_ADDR", env.master_addr or "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(env.master_port or DEFAULT_MASTER_PORT))


def init_distributed(device: Optional[torch.device] = None, deepspeed: bool = False,
                     timeout_s: Optional[float] = None) -> DistEnv:
    """Join the process group (nccl on GPU, gloo on CPU) and pin this rank's GPU; returns the env.

    timeout_s: how long a collective may wait before it fails (None: torch's default).

    deepspeed=True: `deepspeed.init_distributed`, also for a single process (MASTER_ADDR/PORT default
    to 127.0.0.1:29500). Otherwise torch.distributed, and only when the world has more than one
    process (a single process then runs without a group: rank 0 of 1). Under SLURM the rank,
    world and rendezvous come from `dist_env` and are exported as RANK, ..., MASTER_PORT first.
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
            _export(env)
            ds.init_distributed(dist_backend=backend, verbose=False, **kw)
    elif env.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        _export(env)
        dist.init_process_group(backend, **kw)
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), env.local_rank, env.master_addr, env.master_port)
    return DistEnv(0, 1, env.local_rank)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the joined process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Collective: wait for every rank (nothing to wait for without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on any rank (one small all-reduce)."""
    return bool(ranks_with(flag))


def ranks_with(flag: bool) -> list[int]:
    """Collective: the ranks where `flag` is True, on every rank (one all-reduce of a world-sized vector)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [0] if flag else []
    dev = (torch.device("cuda", torch.cuda.current_device())
           if torch.distributed.get_backend() == "nccl" else torch.device("cpu"))
    t = torch.zeros(torch.distributed.get_world_size(), dtype=torch.int32, device=dev)
    t[torch.distributed.get_rank()] = int(flag)
    torch.distributed.all_reduce(t)
    return t.nonzero().flatten().tolist()


class SharedDirError(RuntimeError):
    """Some ranks cannot see the run folder that rank 0 writes to."""


def from_rank0(obj):
    """Rank 0's `obj` on every rank (a collective when a process group is up; `obj` as is otherwise):
    for what one rank decides from the shared filesystem and every rank then acts on."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def check_shared_dir(path: str | Path, wait_s: float = 5.0) -> None:
    """Collective: every rank must see the token file that rank 0 writes into `path`, else every rank
    raises `SharedDirError` naming the ranks (and hosts) that cannot. Checkpoints are written by all
    ranks into one folder, so a run folder on node-local disks would otherwise fail at the first save.

    Each rank looks for the token for up to `wait_s` seconds (network filesystems may show a new
    file late). Without a process group (or with one rank) there is nothing to check.
    """
    rank, world = rank_and_world()
    if world == 1:
        return
    path = Path(path)
    shown = [f".shared_dir_check_{secrets.token_hex(8)}", str(path)]  # rank 0's token name and path
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        (path / shown[0]).write_text(socket.gethostname())
    dist.broadcast_object_list(shown, src=0)
    token = path / shown[0]
    deadline = time.monotonic() + wait_s
    seen = token.is_file()
    while not seen and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = token.is_file()
    views: list = [None] * world
    dist.all_gather_object(views, (seen, socket.gethostname()))
    if rank == 0:
        token.unlink(missing_ok=True)
    blind = [f"rank {r} on {host}" for r, (ok, host) in enumerate(views) if not ok]
    if blind:
        raise SharedDirError(
            f"the run folder {shown[1]} is not shared: {', '.join(blind)} cannot see the file that rank 0 "
            f"(on {views[0][1]}) wrote there. All ranks write checkpoints into one folder, so "
            f"train.output_dir (--output-dir) must be on a filesystem shared by every node (NFS, Lustre, "
            f"GPFS, ...), at the same path on each node")


def end_process(code: int, leave_group: bool = True) -> NoReturn:
    """The end of a script that joined a process group: leave it (unless `leave_group` is False: after
    an error on this rank alone, when the others may still wait in a collective), flush the outputs,
    and exit with `code` without interpreter finalization.

    Gloo work objects that outlive the group (DeepSpeed keeps some handles) hold tensors with Python
    references; freed during finalization they abort the finished process ("terminate called without
    an active exception", SIGABRT), which turns a clean run into a failed rank. Nothing is left to
    finalize by then: the caller has closed its files (the Trainer closes its logs and loaders).
    """
    if leave_group:
        gc.collect()  # what only cycles still hold (loader iterators, work handles) goes while Python is alive
        leave_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def leave_process_group() -> None:
    """Tear the process group down before the interpreter exits (left to interpreter shutdown, the
    backend's threads can be destroyed while still joinable, which aborts the process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
