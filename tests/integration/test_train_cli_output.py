"""What a single-rank CPU run of tools/train.py prints (stdout and stderr, captured: no terminal)."""
import re

from helpers import assert_ok, cpu_env, free_port, launch, require, train_args
from vjepa_scale.train.metrics import read_metrics

require("deepspeed")


def test_single_rank_cpu_run_does_not_repeat_the_reduce_scatter_deprecation(tmp_path):
    """DeepSpeed's ZeRO reduction calls torch's deprecated `reduce_scatter_tensor` every step, and on the
    CPU the once-only display does not hold: without the targeted filter the FutureWarning comes back on
    nearly every step (6 of 6 here), interleaved with the progress bar."""
    r = launch("tools/train.py", *train_args(tmp_path / "run", "model.depth=1", "data.crop_size=32",
                                             "data.global_batch_size=2", "optim.iterations=6", "train.log_every=4",
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
    # the end-of-run summary, after the last step
    recs = read_metrics(tmp_path / "run")
    summary = out[out.index("run summary: "):].splitlines()
    assert re.fullmatch(r"run summary: steps 1-6 \(6 trained\) in \d\d:\d\d wall \(setup \d\d:\d\d\)", summary[0])
    assert re.fullmatch(r"  [\d.]+ clips/s mean over the steps' time, MFU off", summary[1])
    assert summary[2:] == [f"  loss {recs[0]['loss']:.4f} at step {recs[0]['step']} -> {recs[-1]['loss']:.4f} at step 6",
                           "  skipped: 0 non-finite step(s), 0 unusable data file(s) (run totals)",
                           f"  final checkpoint: {tmp_path / 'run' / 'checkpoints' / 'step_00000006'}"]
    assert r.stderr.count("reduce_scatter_tensor` is deprecated") <= 1, r.stderr[-3000:]
    assert "all_gather_into_tensor` is deprecated" not in r.stderr, r.stderr[-3000:]  # ZeRO-3's gathers
