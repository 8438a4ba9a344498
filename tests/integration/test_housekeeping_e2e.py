"""Checkpoint housekeeping with 2 ranks under torchrun: a save that runs out of disk ends every rank.
In-process cases: unit/test_housekeeping.py."""
from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import single_process_group
from vjepa_scale.config import load_config
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.housekeeping import dir_bytes
from vjepa_scale.train.launch import preflight
from vjepa_scale.weights import CKPT_SUBDIR, list_checkpoints

OPTS = ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2", "train.precision=fp32",
        "train.progress_bar=false", "train.log_every=1"]


def _cfg(*opts):
    return preflight(load_config("cpu_demo", [*OPTS, *opts]), 1)


def _trainer(run, *opts, resume=None) -> Trainer:
    return Trainer(_cfg(*opts), run, resume=resume, env=single_process_group())


def _meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "meta.json").read_text())



@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs mount point; unmounted afterwards."""
    mounted = []

    def mount(size: str, ro: bool = False) -> Path:
        mp = tmp_path / f"mnt_{uuid.uuid4().hex[:6]}"
        mp.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mp)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
        mounted.append(mp)
        return mp

    yield mount
    for mp in mounted:
        subprocess.run(["umount", "-l", str(mp)], capture_output=True)


@pytest.mark.slow
def test_two_ranks_disk_full_while_saving_end_cleanly(tmp_path, tmpfs):
    """2 ranks under torchrun: a save that runs out of disk ends every rank (no hang) with the clear
    error, removes the partial save and keeps the last good checkpoint."""
    import os
    import socket
    import sys

    probe = tmp_path / "probe"
    _trainer(probe, "optim.iterations=1", "train.checkpoint_every=1").fit()
    size = dir_bytes(probe / CKPT_SUBDIR / "step_00000001")  # 1 rank; 2 ranks add one optimizer shard
    disk = tmpfs(f"{int(size * 2.0) // 4096 * 4096}")
    run = disk / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    args = ["--config", "cpu_demo.yaml", "--output-dir", str(run)]
    for o in [*OPTS, "data.global_batch_size=4", "optim.iterations=3", "train.checkpoint_every=1",
              "train.keep_last=1", "train.check_free_disk=false"]:
        args += ["--opt", o]
    env = dict(os.environ, DS_ACCELERATOR="cpu", DS_SKIP_SHM_BUILD="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", port, "tools/train.py", *args],
                       cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                       timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "CheckpointWriteError: disk full / read-only" in out, out[-3000:]
    done = list_checkpoints(run)
    assert len(done) == 1, out[-3000:]
    step = _meta(done[0])["step"]
    assert f"while saving checkpoint step {step + 1} to {run}/checkpoints" in out
    assert f"last good checkpoint is still {done[0]}" in out
    assert sorted(p.name for p in (run / CKPT_SUBDIR).iterdir()) == ["latest", done[0].name]
