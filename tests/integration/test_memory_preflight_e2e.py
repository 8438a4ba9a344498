"""The memory preflight through tools/train.py: the vith384 recipe (synthetic clips, CPU) is refused
before any process group. The estimate itself: unit/test_memory_preflight.py."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_vith384_refused_before_any_process_group():
    """tools/train.py with the ViT-H/384 recipe and synthetic clips on this CPU machine stops with a
    config error naming the estimate, the memory available and what to change, within seconds and
    without allocating (the unchecked run grows past 14 GB until the kernel kills it)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", DS_SKIP_SHM_BUILD="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([sys.executable, "tools/train.py", "--config", "vith384", "--opt", "data.backend=synthetic",
                        "--output-dir", "/nonexistent/never_created"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr
    assert "config error: memory preflight: this config needs about" in err
    assert "2400 clips per rank" in err and "available host memory" in err
    assert "data.global_batch_size" in err and "model.size" in err and "train.memory_check: false" in err
    assert "Traceback" not in err and not Path("/nonexistent/never_created").exists()
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux, max over children
    if after > before:  # this child set the maximum: it never built the model
        assert after < 3 * 1024 * 1024
