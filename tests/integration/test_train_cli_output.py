"""What a single-rank CPU run of tools/train.py prints (stdout and stderr, captured: no terminal)."""
import re

from helpers import assert_ok, cpu_env, free_port, launch, require, train_args

require("deepspeed")


def test_single_rank_cpu_run_does_not_repeat_the_reduce_scatter_deprecation(tmp_path):
    """DeepSpeed's ZeRO reduction calls torch's deprecated `reduce_scatter_tensor` every step, and on the
    CPU the once-only display does not hold: without the targeted filter the FutureWarning comes back on
    nearly every step (6 of 6 here), interleaved with the progress bar."""
    r = launch("tools/train.py", *train_args(tmp_path / "run", "model.depth=1", "data.crop_size=32",
                                             "data.global_batch_size=2", "optim.iterations=6",
                                             "train.checkpoint_every=100", "train.precision=fp32"),
               env=cpu_env(MASTER_PORT=str(free_port())), timeout=240)
    assert_ok(r)
    # stderr is a pipe, not a terminal: a line per logged step, no tqdm frames (\r) in the log
    assert "\r" not in r.stderr and "train:" not in r.stderr, r.stderr[-3000:]
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step 6/6 elapsed \d\d:\d\d eta 00:00: loss ", r.stdout, re.M), r.stdout
    # the setup steps as they happen, then the banner (before the first step) with the single phase
    out = r.stdout
    order = ["setup: preparing the run folder", "setup: building the models and DeepSpeed engines", "model: ViT tiny",
             "ranks: 1 on cpu, ZeRO stage 3, precision fp32", "attention: auto -> bucketed", "memory estimate: ",
             "MFU: off (no known bf16 peak for cpu; set train.device_peak_tflops", "phase 0: steps 1-6, 4 frames x 32 px",
             " step 6/6 "]
    assert all(s in out for s in order), out
    assert [out.index(s) for s in order] == sorted(out.index(s) for s in order), out
    assert r.stderr.count("reduce_scatter_tensor` is deprecated") <= 1, r.stderr[-3000:]
    assert "all_gather_into_tensor` is deprecated" not in r.stderr, r.stderr[-3000:]  # ZeRO-3's gathers
