"""Processes for integration tests: free ports, environments, the torchrun / deepspeed launchers, the
training command line, and loading a tools/ script as a module."""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from .extras import ROOT

CPU_ENV = {"DS_ACCELERATOR": "cpu", "DS_SKIP_SHM_BUILD": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment with DeepSpeed on the CPU, no shm-comm build, one OpenMP thread;
    `overrides` set variables (None removes one)."""
    env = {**os.environ, **CPU_ENV}
    for k, v in overrides.items():
        env.pop(k, None) if v is None else env.__setitem__(k, v)
    return env


def gpu_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment without the CPU pin of DeepSpeed (conftest sets it for the CPU tests)."""
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
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


def launch(script: str | Path, *args, nproc: int | None = None, launcher: str = "torchrun",
           env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python script args` (nproc None), or `script` on `nproc` local ranks under torch.distributed.run
    (launcher "torchrun") or the deepspeed launcher, on a free port. A relative `script` is in the
    checkout; `cwd` defaults to the checkout; `env` to `cpu_env()`."""
    script = ROOT / script
    if nproc is None:
        cmd = [sys.executable, script, *args]
    elif launcher == "deepspeed":
        cmd = [deepspeed_launcher(), "--num_gpus", nproc, "--master_port", free_port(), script, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", nproc, "--master_port",
               free_port(), script, *args]
    return run(cmd, env, cwd or ROOT, timeout)


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
