"""Processes for integration tests: free ports, environments, the torchrun / deepspeed launchers (run to
the end, or started and acted on while they run), plain processes told their ranks (no launcher), the
training command line, and loading a tools/ script as a module."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from .extras import ROOT

RANK_STARTERS = ("torch.distributed.run", "deepspeed.launcher.launch")  # python -m modules that start ranks
CPU_ENV = {"DS_ACCELERATOR": "cpu", "DS_SKIP_SHM_BUILD": "1", "OMP_NUM_THREADS": "1"}
# Set in this process by an in-process 1-rank group (`single_process_group`): a child must not inherit
# them (it would try to listen on the port this process's store already holds).
GROUP_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in GROUP_VARS}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment with DeepSpeed on the CPU, no shm-comm build, one OpenMP thread;
    `overrides` set variables (None removes one)."""
    env = {**_base_env(), **CPU_ENV}
    for k, v in overrides.items():
        env.pop(k, None) if v is None else env.__setitem__(k, v)
    return env


def gpu_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment without the CPU pin of DeepSpeed (conftest sets it for the CPU tests)."""
    env = {k: v for k, v in _base_env().items() if k != "DS_ACCELERATOR"}
    for k, v in overrides.items():
        env.pop(k, None) if v is None else env.__setitem__(k, v)
    return env


def run(cmd: list, env: dict | None = None, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `cmd` (text output captured) in the checkout; `env` defaults to `cpu_env()`."""
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=cpu_env() if env is None else env,
                          capture_output=True, text=True, timeout=timeout)


def deepspeed_launcher() -> str:
    """The `deepspeed` script of this interpreter's environment, else the one on PATH (pip --target installs)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("deepspeed", path=path)
    assert found, "the deepspeed launcher script is neither beside python nor on PATH"
    return found


def command(script: str | Path, *args, nproc: int | None = None, launcher: str = "torchrun") -> list:
    """`python script args` (nproc None), or `script` on `nproc` local ranks under torch.distributed.run
    (launcher "torchrun") or the deepspeed launcher, on a free port. A relative `script` is in the checkout."""
    script = ROOT / script
    if nproc is None:
        return [sys.executable, script, *args]
    if launcher == "deepspeed":
        return [deepspeed_launcher(), "--num_gpus", nproc, "--master_port", free_port(), script, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", nproc, "--master_port", free_port(),
            script, *args]


def launch(script: str | Path, *args, nproc: int | None = None, launcher: str = "torchrun",
           env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `command(script, *args, nproc=, launcher=)` to its end; `cwd` defaults to the checkout, `env` to
    `cpu_env()`."""
    return run(command(script, *args, nproc=nproc, launcher=launcher), env, cwd or ROOT, timeout)


def start(script: str | Path, *args, nproc: int | None = None, launcher: str = "torchrun", env: dict | None = None,
          cwd: Path | None = None, log: Path | None = None, **popen) -> subprocess.Popen:
    """`launch`'s twin for tests that act on a running job (signal it, freeze a rank): starts the command
    and returns at once. Text mode; stdout and stderr go to the file `log`, or where `popen` says
    (stdin=, stdout=, stderr=, start_new_session= ...)."""
    cmd = [str(c) for c in command(script, *args, nproc=nproc, launcher=launcher)]
    kw = dict(cwd=cwd or ROOT, env=cpu_env() if env is None else env, text=True, **popen)
    if log is None:
        return subprocess.Popen(cmd, **kw)
    with open(log, "w") as f:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)


def run_ranks(script: str | Path, *args, nproc: int = 2, env: dict | None = None, cwd: Path | None = None,
              timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """`script args` as `nproc` plain processes told their rank the way torchrun tells them on one node
    (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR / MASTER_PORT), with no launcher in
    between, run to the end: one result per rank, with that rank's own exit status and output (a
    launcher reports one code for all, or its own, and adds its own output). `env` defaults to
    `cpu_env()`. A rank still running at `timeout` fails the test, every rank killed."""
    base, port = cpu_env() if env is None else env, str(free_port())
    cmd = [str(c) for c in command(script, *args)]
    procs, logs = [], []
    try:
        for r in range(nproc):
            rank_env = dict(base, RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(nproc),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            logs.append((tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")))  # files: no full pipe
            procs.append(subprocess.Popen(cmd, cwd=cwd or ROOT, env=rank_env, text=True, stdout=logs[r][0],
                                          stderr=logs[r][1]))
        deadline = time.monotonic() + timeout
        for p in procs:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, logs):
        out.seek(0)
        err.seek(0)
        results.append(subprocess.CompletedProcess(cmd, p.returncode, out.read(), err.read()))
        out.close()
        err.close()
    return results


def rank_processes(pid: int) -> dict:
    """rank -> psutil.Process of each training rank below the launcher `pid`: the children of the process
    that starts the ranks (torch.distributed.run itself; under the deepspeed runner, its
    deepspeed.launcher.launch child), keyed by the RANK that process gave them. Not DataLoader workers
    (children of a rank), whatever RANK this test process may have left in the environment."""
    import psutil

    ranks = {}
    for p in psutil.Process(pid).children(recursive=True):
        try:
            cmd = p.parent().cmdline()
            if any(c in RANK_STARTERS or os.path.basename(c) == "torchrun" for c in cmd):
                ranks[int(p.environ()["RANK"])] = p
        except (psutil.Error, AttributeError, KeyError):  # ended meanwhile, or not started by a launcher
            continue
    return ranks


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240,
                  log: Path | None = None) -> None:
    """Wait until the running job `proc` has logged `step` in run_dir/metrics.jsonl; fail if it ends first
    (showing the end of its `log`)."""
    metrics, deadline = Path(run_dir) / "metrics.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended early (exit {proc.returncode})\n" + (
            Path(log).read_text()[-3000:] if log else "")
        lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []  # complete lines only
        if any(json.loads(line)["step"] >= step for line in lines if line.strip()):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} was not reached in {timeout} s")


def train_args(run_dir, *opts: str, config: str = "cpu_demo.yaml", resume: str | None = None) -> list[str]:
    """tools/train.py's arguments: --config, --output-dir, one --opt per override, --resume."""
    args = ["--config", config, "--output-dir", str(run_dir)]
    for o in opts:
        args += ["--opt", o]
    return args + (["--resume", str(resume)] if resume else [])


def assert_ok(r: subprocess.CompletedProcess, tail: int = 3000) -> None:
    """The process exited 0; otherwise fail showing the end of its output."""
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-tail:]}\n{r.stderr[-tail:]}"


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py imported as a module (its `main(argv)` then runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"vjepa_tools_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
