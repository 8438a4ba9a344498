"""Preemption: stop every rank at the same step boundary, checkpoint there, exit `EXIT_PREEMPTED`.

A stop is requested in one process by
- SIGTERM or SIGUSR1 (`install_handlers`): what SLURM (`--signal=USR1@120`, scancel, the time
  limit), Kubernetes and the launchers send; the handler only sets a flag, so the step in flight
  finishes normally;
- the death of a launcher above this rank (`watch_launchers`): the outer `deepspeed` runner does not
  pass SIGTERM on to its children, so a rank polls the launcher processes above it and treats their
  exit as a stop request; and the kernel sends SIGTERM when the parent itself dies
  (`set_parent_death_signal`, Linux prctl PR_SET_PDEATHSIG). Ranks never outlive their launcher.

At each step boundary the ranks agree with one tiny all-reduce (`stop_agreed`: MAX of the flags), so
they all stop after the same step; the trainer then saves (unless it just did) and raises `Preempted`;
tools/train.py exits with `EXIT_PREEMPTED` (75, sysexits EX_TEMPFAIL: "preempted, checkpoint
written, resume me with --resume auto").

Launchers give ranks a grace period before SIGKILL: `deepspeed` and `torchrun` 30 s, SLURM KillWait
(30 s by default) after SIGTERM; with `--signal=USR1@120` SLURM warns two minutes ahead.

This module imports only the standard library (torch only inside `stop_agreed`): tools/train.py
installs the handlers before anything imports torch, so a signal in a rank's first seconds is a stop
request too, not the end of the rank.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PR_SET_PDEATHSIG = 1

_reason: Optional[str] = None  # why this process was asked to stop (None: not asked)
_death_signal: Optional[tuple[int, int]] = None  # (signal, parent pid) of `set_parent_death_signal`


class Preempted(Exception):
    """Training stopped early on request; `checkpoint` holds `step` (None: a stop before the first step
    of a run that resumed nothing)."""

    def __init__(self, step: int, checkpoint: Optional[Path], reason: str):
        super().__init__(f"preempted at step {step} ({reason}); checkpoint: {checkpoint}")
        self.step, self.checkpoint, self.reason = step, checkpoint, reason


MARKER = "PREEMPTED"  # in the run folder while the run's last end was a preemption (see write_marker)


def write_marker(run_dir: Path, step: int, checkpoint: Optional[Path], reason: str) -> None:
    """Rank 0, once the preemption checkpoint is saved: `<run_dir>/PREEMPTED` (step, checkpoint, reason),
    removed when the run starts again. A requeue script tests this file: a launcher between the ranks
    and the script may not pass exit code 75 on (torchrun reports 1; a launcher that is itself
    signalled exits with its own code)."""
    tmp = Path(run_dir) / f".{MARKER}.tmp"
    checkpoint = None if checkpoint is None else os.path.abspath(checkpoint)  # `--resume auto` reads it
    tmp.write_text(f"step {step}\ncheckpoint {checkpoint}\nreason {reason}\n")
    os.replace(tmp, Path(run_dir) / MARKER)


def marker_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint `<run_dir>/PREEMPTED` names (None: no marker, or one written before any checkpoint)."""
    try:
        lines = (Path(run_dir) / MARKER).read_text().splitlines()
    except OSError:
        return None
    named = next((line[len("checkpoint "):] for line in lines if line.startswith("checkpoint ")), "None")
    return None if named == "None" else Path(named)


def request_stop(reason: str) -> None:
    """Ask this process to stop after the current step (idempotent: the first reason is kept)."""
    global _reason
    if _reason is None:
        _reason = reason
        try:  # runs in a signal handler: a broken stderr pipe must not turn the stop into a crash
            print(f"[pid {os.getpid()}] {reason}: stopping after the current step to save a checkpoint",
                  file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


def stop_requested() -> Optional[str]:
    """The reason this process was asked to stop, or None."""
    return _reason


def clear() -> None:
    """Forget a stop request (for a new run in the same process)."""
    global _reason
    _reason = None


def install_handlers(signals=PREEMPT_SIGNALS) -> None:
    """SIGTERM / SIGUSR1 request a stop instead of ending the process (main thread only)."""
    for sig in signals:
        signal.signal(sig, _on_signal)


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _death_signal is not None and _death_signal[0] == signum and os.getppid() != _death_signal[1]:
        # the parent is gone (this process was re-parented): the kernel's parent-death signal
        request_stop(f"launcher pid {_death_signal[1]} exited (got the parent-death signal {name})")
    else:
        request_stop(f"got {name}")


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Linux: have the kernel send `sig` to this process when its parent exits. False elsewhere."""
    global _death_signal
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    _death_signal = (int(sig), parent)  # the signal handler tells it from a SIGTERM sent by someone
    return True


# -- launcher watch ---------------------------------------------------------------------------------

LAUNCHER_NAMES = ("deepspeed", "deepspeed.launcher.launch", "torchrun", "torch.distributed.run")


def _proc_stat(pid: int) -> Optional[tuple[int, int]]:
    """(parent pid, start time in clock ticks) of a live process, from /proc; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] == "Z":  # a zombie has exited
        return None
    return int(fields[1]), int(fields[19])


def _is_launcher(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    # python [-u] <script or -m module> ...: the first few words name the launcher
    for word in argv[:4]:
        if word in LAUNCHER_NAMES or os.path.basename(word) in LAUNCHER_NAMES:
            return True
    return False


def launcher_ancestors() -> list[tuple[int, int]]:
    """(pid, start time) of the launcher processes directly above this one (parent first), e.g. the
    inner `deepspeed.launcher.launch` and the outer `deepspeed` runner. Empty without /proc."""
    out = []
    pid = os.getppid()
    while pid > 1:
        st = _proc_stat(pid)
        if st is None or not _is_launcher(pid):
            break
        out.append((pid, st[1]))
        pid = st[0]
    return out


def watch_launchers(interval_s: float = 1.0) -> list[int]:
    """Start a daemon thread that requests a stop when a launcher above this rank exits (a pid gone
    or reused). Returns the watched pids."""
    watched = launcher_ancestors()
    if not watched:
        return []

    def poll() -> None:
        while stop_requested() is None:
            for pid, start in watched:
                st = _proc_stat(pid)
                if st is None or st[1] != start:
                    request_stop(f"launcher pid {pid} exited")
                    return
            time.sleep(interval_s)

    threading.Thread(target=poll, name="launcher-watch", daemon=True).start()
    return [pid for pid, _ in watched]


def stop_agreed(device: torch.device) -> Optional[str]:
    """Collective, at a step boundary: did any rank get a stop request? One MAX all-reduce of a flag.
    Returns this rank's reason (or "another rank was asked to stop"), None to go on."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([0 if _reason is None else 1], dtype=torch.int32, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if int(flag.item()) == 0:
        return None
    return _reason or "another rank was asked to stop"


def prepare_process() -> None:
    """Everything a training process sets up for preemption, as early as possible: the signal
    handlers, the parent-death signal and the launcher watch."""
    install_handlers()
    set_parent_death_signal(signal.SIGTERM)
    watch_launchers()
