"""Bytes per collective per optimizer step, measured by DeepSpeed's communication logger on 2 and 4 CPU
ranks (gloo, tiny recipe, fp32), against the analytic count of tools/scaling.py (`logged_bytes`), which
docs/SCALING.md scales to 8-256 GPUs. Messages under 1 KiB (scalars: grad norm, loss checks) are left out.

One launch per world size measures all of its cases in turn (comm_bytes.py: a fresh Trainer per case);
each case is still its own test."""
import json
from pathlib import Path

import pytest

from helpers import assert_ok, launch, load_tool, require
from vjepa_scale.config import load_config

require("deepspeed")
scaling = load_tool("scaling")
SCRIPT = Path(__file__).with_name("comm_bytes.py")
OPTS = ["model.depth=1", "data.crop_size=32", "train.precision=fp32", "zero.stage3_param_persistence_threshold=0"]
CASES = [(2, 1, 2), (2, 2, 2), (2, 3, 2), (4, 2, 1), (4, 3, 1)]  # world, ZeRO stage, micro-batches per step

pytestmark = pytest.mark.slow


def _case_opts(world: int, stage: int, accum: int) -> list[str]:
    return [f"zero.stage={stage}", f"optim.grad_accum={accum}", f"data.global_batch_size={world * accum}"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """world -> {(stage, accum): {op: {message bytes: count}}}, from one launch of every case of that world
    size (made on first use; a failed launch fails each of its cases)."""
    done: dict[int, dict] = {}

    def get(world: int) -> dict:
        if world not in done:
            cases = [(s, a) for w, s, a in CASES if w == world]
            out = tmp_path_factory.mktemp(f"comm{world}") / "comm.json"
            args = [str(out), *OPTS]
            for stage, accum in cases:
                args += ["--case", *_case_opts(world, stage, accum)]
            r = launch(SCRIPT, *args, nproc=world, timeout=600)
            done[world] = dict(zip(cases, json.loads(out.read_text()))) if r.returncode == 0 else r
        if not isinstance(done[world], dict):
            assert_ok(done[world])
        return done[world]

    return get


@pytest.mark.parametrize("world,stage,accum", CASES)
def test_logged_bytes_match_analytic_count(logged, world, stage, accum):
    measured = {op: sum(int(size) * n for size, n in sizes.items() if int(size) >= 1024)
                for op, sizes in logged(world)[stage, accum].items()}
    measured = {op: b for op, b in measured.items() if b}
    online, target = scaling.param_counts(load_config("cpu_demo", OPTS))
    want = scaling.logged_bytes(online, target, world, stage, accum, weight_bytes=4, grad_bytes=4)
    assert measured == pytest.approx(want, rel=0, abs=0), (measured, want)
