"""Bytes per collective per optimizer step, measured by DeepSpeed's communication logger on 2 and 4 CPU
ranks (gloo, tiny recipe, fp32), against the analytic count of tools/scaling.py (`logged_bytes`), which
docs/SCALING.md scales to 8-256 GPUs. Messages under 1 KiB (scalars: grad norm, loss checks) are left out."""
import json
from pathlib import Path

import pytest

from helpers import assert_ok, launch, load_tool, require
from vjepa_scale.config import load_config

require("deepspeed")
scaling = load_tool("scaling")
SCRIPT = Path(__file__).with_name("comm_bytes.py")
OPTS = ["model.depth=1", "data.crop_size=32", "train.precision=fp32", "zero.stage3_param_persistence_threshold=0"]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("world,stage,accum", [(2, 1, 2), (2, 2, 2), (2, 3, 2), (4, 2, 1), (4, 3, 1)])
def test_logged_bytes_match_analytic_count(tmp_path, world, stage, accum):
    out = tmp_path / "comm.json"
    opts = [*OPTS, f"zero.stage={stage}", f"optim.grad_accum={accum}", f"data.global_batch_size={world * accum}"]
    assert_ok(launch(SCRIPT, str(out), *opts, nproc=world, timeout=600))
    measured = {op: sum(int(size) * n for size, n in sizes.items() if int(size) >= 1024)
                for op, sizes in json.loads(out.read_text()).items()}
    measured = {op: b for op, b in measured.items() if b}
    online, target = scaling.param_counts(load_config("cpu_demo", OPTS))
    want = scaling.logged_bytes(online, target, world, stage, accum, weight_bytes=4, grad_bytes=4)
    assert measured == pytest.approx(want, rel=0, abs=0), (measured, want)
