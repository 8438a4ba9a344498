"""The memory preflight through tools/train.py: the vith384 recipe (synthetic clips, CPU) is refused
before any process group. The estimate itself: unit/test_memory_preflight.py."""
from __future__ import annotations

import json
import resource
from pathlib import Path

from helpers import assert_ok, cpu_env, launch, train_args

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_vith384_refused_before_any_process_group():
    """tools/train.py with the ViT-H/384 recipe and synthetic clips on this CPU machine stops with a
    config error naming the estimate, the memory available and what to change, within seconds and
    without allocating (the unchecked run grows past 14 GB until the kernel kills it)."""
    env = cpu_env(**dict.fromkeys(LAUNCHER_VARS))  # a plain single process
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = launch("tools/train.py", *train_args("/nonexistent/never_created", "data.backend=synthetic", config="vith384"),
               env=env, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr
    assert "config error: memory preflight: this config needs about" in err
    assert "2400 clips per rank" in err and "available host memory" in err
    assert "data.global_batch_size" in err and "model.size" in err and "train.memory_check: false" in err
    assert "Traceback" not in err and not Path("/nonexistent/never_created").exists()
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux, max over children
    if after > before:  # this child set the maximum: it never built the model
        assert after < 3 * 1024 * 1024


def test_auto_checkpointing_is_the_same_on_ranks_that_see_different_memory(tmp_path):
    """`activation_checkpointing: auto` is resolved from the least memory of all ranks: rank 0 sees
    plenty, rank 1 almost none, and both recompute every block (a per-rank choice made ZeRO-3's
    recompute gathers mismatch at the first step)."""
    assert_ok(launch(Path(__file__).with_name("auto_ckpt_ranks.py"), str(tmp_path), nproc=2, timeout=600))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["fraction"] for r in ranks] == [1.0, 1.0] and [r["step"] for r in ranks] == [2, 2]
    assert all("the least of 2 ranks (rank 1)" in r["note"] for r in ranks)
