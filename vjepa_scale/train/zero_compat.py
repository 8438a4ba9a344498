"""Every DeepSpeed internal the project relies on, behind small functions.

DeepSpeed's public API (initialize, engine.backward/step, save/load_checkpoint, zero_to_fp32) is used
directly elsewhere; what is NOT a stable API lives here only, so a DeepSpeed upgrade that changes it
breaks one module and `tests/unit/test_zero_compat.py`, not the trainer. Tested against DeepSpeed
`TESTED_DEEPSPEED` (constraints.txt).

- ZeRO-3 partition layout: a partitioned parameter `p` carries `p.ds_tensor`, this rank's flat slice
  of ceil(numel / world) elements (the last ranks' slices zero-padded past the end of the parameter).
  `partition_numel` / `partition_slice` reproduce that arithmetic on full tensors.
- fp32 masters: `deepspeed.utils.safe_get_local_fp32_param` (ZeRO-3: this rank's master slice);
  ZeRO-1/2: the fragment DeepSpeed's optimizer links to each parameter (`p._hp_mapping`: where in
  the flattened parameter this rank's master partition starts and ends, and an fp32 view of it),
  read by `master_fragment`.
- Universal checkpoints (a checkpoint written on N ranks loaded on M): the converter
  `deepspeed.checkpoint.ds_to_universal.main` (a script entry point taking argparse-style args) and
  the fixes its loaders need (`optimizer_load_fixes`).
- The op-compatibility table `deepspeed.ops.__compatible_ops__`, edited to skip the JIT build of the
  shared-memory CPU collective.
"""
from __future__ import annotations

import os

from dataclasses import dataclass
from typing import Optional

import torch

TESTED_DEEPSPEED = ((0, 19, 8), (0, 19, 8))  # inclusive (min, max) release this module was checked with


def is_partitioned(p: torch.nn.Parameter) -> bool:
    """True when `p` is a ZeRO-3 partitioned parameter (its data lives in `p.ds_tensor` shards)."""
    return hasattr(p, "ds_tensor")


def local_flat(p: torch.nn.Parameter) -> torch.Tensor:
    """Flat view of the working copy this rank holds: its ZeRO-3 slice, or the whole parameter."""
    return p.ds_tensor.data.view(-1) if is_partitioned(p) else p.data.view(-1)


def partition_numel(numel: int, world_size: int) -> int:
    """Elements of one rank's ZeRO-3 slice of a `numel`-element parameter: ceil(numel / world)."""
    return -(-numel // world_size)


def partition_slice(full: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's flat ZeRO-3 slice of `full` in fp32: `partition_numel` elements, zero-padded at the end."""
    flat = full.detach().reshape(-1)
    part = partition_numel(flat.numel(), world_size)
    out = torch.zeros(part, dtype=torch.float32, device=flat.device)
    start = rank * part
    stop = min(start + part, flat.numel())
    if stop > start:
        out[: stop - start] = flat[start:stop].float()
    return out


def fp32_master(p: torch.nn.Parameter) -> torch.Tensor:
    """Flat fp32 optimizer master of an online parameter, matching `local_flat(p)`'s layout.

    ZeRO-3: this rank's master slice (may omit the trailing zero padding). Otherwise (a plain module:
    ZeRO-1/2 masters are read as fragments, `master_fragment`): the parameter itself, in fp32.
    """
    if is_partitioned(p):
        from deepspeed.utils import safe_get_local_fp32_param

        m = safe_get_local_fp32_param(p)
        if m is None:
            raise RuntimeError("online parameter has no fp32 master shard (is it trainable?)")
        return m.view(-1)
    return p.data.view(-1) if p.dtype == torch.float32 else p.data.float().view(-1)


@dataclass(frozen=True)
class MasterFragment:
    """The part of a ZeRO-1/2 parameter whose fp32 master this rank holds (`master_fragment`)."""

    start: int  # first element, in the flattened parameter
    numel: int
    master: torch.Tensor  # fp32 (numel,), a live view of the optimizer's master partition
    group: int  # the optimizer param group whose flat buffer holds it
    offset: int  # where it starts in this rank's flat master partition of that group


def has_master_fragments(p: torch.nn.Parameter) -> bool:
    """True when `p` belongs to a ZeRO-1/2 engine that splits its fp32 masters over the ranks."""
    return hasattr(p, "_hp_mapping")


def master_fragment(p: torch.nn.Parameter) -> Optional[MasterFragment]:
    """ZeRO-1/2: this rank's part of `p`'s fp32 master (None when another rank holds all of it).
    The ranks' fragments tile each parameter; in a param group's flat buffer, rank r's partition is
    the r-th contiguous range, so (group, rank, offset) orders fragments as DeepSpeed lays them out."""
    m = p._hp_mapping
    if m is None:
        return None
    lp, hp = m.lp_fragment_address, m.hp_fragment_address
    return MasterFragment(int(lp.start), int(lp.numel), m.hp_fragment.view(-1), int(m.param_group_index),
                          int(hp.start))


UNIVERSAL_MAX_WORKERS = 8  # extract workers of the universal conversion (merge workers: half)

# The converter's child interpreter: killed with its parent (a rank the launcher or the watchdog ends
# must not leave a converter writing into the folder a requeued run converts into again), and so are
# the extract / merge workers it forks, each with its own parent; deaf to SIGTERM / SIGUSR1 (SLURM sends
# them to every process of a job step, whatever its session); without the working directory on
# sys.path (a local `deepspeed/` folder must not shadow the package).
_CONVERTER_BOOT = """
import ctypes, os, runpy, signal, sys
for stop in (signal.SIGTERM, signal.SIGUSR1):  # a preemption lets the conversion finish (the rank then exits 75)
    signal.signal(stop, signal.SIG_IGN)
if sys.platform.startswith("linux"):
    def tie(parent):  # SIGKILL when `parent` ends (PR_SET_PDEATHSIG)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent ended before that took effect
            os._exit(1)
    tie(int(sys.argv[1]))
    forker = [os.getpid()]
    os.register_at_fork(before=lambda: forker.__setitem__(0, os.getpid()), after_in_child=lambda: tie(forker[0]))
sys.path = [p for p in sys.path if p not in ("", ".", os.getcwd())]
module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def tied_child_command(module: str, *args: str) -> list[str]:
    """`python -m module args` as a child that the kernel kills when this process ends (Linux)."""
    import sys

    return [sys.executable, "-c", _CONVERTER_BOOT, str(os.getpid()), module, *args]


def convert_to_universal(tag_dir: str, out_tag_dir: str, workers: int | None = None) -> None:
    """DeepSpeed's universal-checkpoint conversion of one checkpoint tag folder (ZeRO-1/2/3).

    tag_dir: `<save dir>/<tag>` as written by `engine.save_checkpoint`; out_tag_dir: the universal
    folder `<load dir>/<tag>` for `engine.load_checkpoint(load_dir, tag)` with the DeepSpeed config
    `"checkpoint": {"load_universal": true}`. The universal-checkpoint info our models do not declare
    is injected (plain data parallelism needs none).

    It runs DeepSpeed's own converter (`deepspeed.checkpoint.ds_to_universal`) in a child interpreter
    without CUDA, with `workers` extract processes (default: this process's CPUs, at most
    UNIVERSAL_MAX_WORKERS; each holds one rank's optimizer shard): its process pools then fork a fresh
    single-threaded interpreter, never a training rank with its communication and loader threads, and
    its memory is gone when it ends. The child and its workers die with this process, but not of a
    preemption signal: they ignore SIGTERM / SIGUSR1 (SLURM signals every process of a job step) and run
    in a session of their own (a launcher's signal to its group), so the conversion finishes, and the
    rank then stops before its first step and exits 75 as usual (nothing new to save). RuntimeError with the end of its output when it fails.
    """
    import subprocess

    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(UNIVERSAL_MAX_WORKERS, cpus)
    workers = max(1, workers)
    cmd = tied_child_command("deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
                             "--output_folder", str(out_tag_dir), "--num_extract_workers", str(workers),
                             "--num_merge_workers", str(max(1, workers // 2)), "--inject_missing_state")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # it works on the CPU; a forked worker must not hold CUDA
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       start_new_session=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"DeepSpeed's universal conversion of {tag_dir} exited with {r.returncode}:\n{tail}")


def finish_failed_save(engine) -> None:
    """Collective, on a rank whose `engine.save_checkpoint` failed in its writes (a full disk) while the
    other ranks' saves go on: the collectives their saves still run after the writes, so that every
    rank's next collective lines up. ZeRO-3's epilogue (its prologue partitioned the persistent
    parameters; the epilogue all-gathers them again), then DeepSpeed's closing barrier. The folders are
    made before the save (`checkpoint.save_checkpoint`), so a write is the only thing that can fail."""
    if getattr(engine, "optimizer", None) is not None and hasattr(engine.optimizer, "checkpoint_event_epilogue"):
        engine.optimizer.checkpoint_event_epilogue()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def optimizer_load_fixes(engine):
    """Context manager around `engine.load_checkpoint`: this run's optimizer hyperparameters win over
    the checkpoint's, and one quirk of DeepSpeed's universal ZeRO-3 loader is undone (checked with
    `TESTED_DEEPSPEED`).

    - Every loader restores the saved param groups' hyperparameters (betas, eps, weight decays), so a
      resume would silently keep the old `optim.betas` / `optim.eps` (LR and WD are set from the
      schedule every step anyway); the universal ZeRO-3 loader even copies group 0's onto every group
      (the decayed group's weight decay onto the no-decay group). The groups' values from before the
      load (this run's config) are put back.
    - The universal ZeRO-3 loader gives every sub-group's Adam state the SAME `step` tensor, which
      torch's AdamW then increments once per sub-group per step (wrong bias correction from the next
      step on): each state gets its own copy.
    """
    import contextlib

    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer inside ZeRO's

    @contextlib.contextmanager
    def fixes():
        saved = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        yield
        for g, h in zip(optimizer.param_groups, saved):
            g.update(h)
        for st in optimizer.state.values():
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].clone()

    return fixes()


def skip_shm_comm_build() -> None:
    """Mark DeepSpeed's shared-memory CPU collective op unavailable, so gloo alone carries CPU runs.

    DeepSpeed JIT-builds that op (~60 s with g++) on first use of a CPU process group; call this
    before `deepspeed.init_distributed`.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def untested_deepspeed_note() -> Optional[str]:
    """A warning when the installed DeepSpeed release lies outside `TESTED_DEEPSPEED` (None inside it)."""
    lo, hi = TESTED_DEEPSPEED
    have = deepspeed_version()
    if lo <= have <= hi:
        return None
    fmt = ".".join
    return (f"warning: DeepSpeed {fmt(map(str, have))} is outside the releases this trainer was tested with "
            f"({fmt(map(str, lo))} .. {fmt(map(str, hi))}; constraints.txt): the internals it relies on "
            f"(ZeRO partitions, universal checkpoints for elastic resume) may differ; "
            f"tests/unit/test_zero_compat.py checks them")


def deepspeed_version() -> tuple[int, int, int]:
    """The installed DeepSpeed release as (major, minor, patch)."""
    import deepspeed

    parts = deepspeed.__version__.split("+")[0].split(".")
    return tuple(int("".join(c for c in x if c.isdigit()) or 0) for x in parts[:3])
