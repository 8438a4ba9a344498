"""What a single-rank CPU run of tools/train.py prints (stdout and stderr, captured: no terminal)."""
import re

from helpers import ROOT, assert_ok, cpu_env, free_port, launch, require, train_args
from vjepa_scale.train.metrics import read_metrics

require("deepspeed")


def test_single_rank_cpu_run_output(tmp_path):
    """One tools/train.py run (6 steps, a log point every 4): its setup steps, banner, a line per log point
    (stderr is no terminal: no bar frames), the end-of-run summary; records whose keys docs/METRICS.md
    documents. DeepSpeed's ZeRO calls torch's deprecated `reduce_scatter_tensor` and `all_gather_into_tensor`
    every step, and on the CPU the once-only display does not hold: without the targeted filter the
    FutureWarnings come back on nearly every step, interleaved with the progress."""
    r = launch("tools/train.py", *train_args(tmp_path / "run", "model.depth=1", "data.crop_size=32",
                                             "data.global_batch_size=2", "optim.iterations=6", "train.log_every=4",
                                             "train.checkpoint_every=100", "train.precision=fp32"),
               env=cpu_env(MASTER_PORT=str(free_port())), timeout=240)
    assert_ok(r)
    # stderr is a pipe, not a terminal: a line per logged step, no tqdm frames (\r) in the log
    assert "\r" not in r.stderr and "train:" not in r.stderr, r.stderr[-3000:]
    line = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step 6/6 elapsed \d\d:\d\d eta 00:00: loss "
    assert re.search(line, r.stdout, re.M), r.stdout
    # the setup steps as they happen, then the banner (before the first step) with the single phase
    out = r.stdout
    order = ["setup: preparing the run folder", "setup: building the models and DeepSpeed engines", "model: ViT tiny",
             "ranks: 1 on cpu, ZeRO stage 3, precision fp32", "attention: auto -> bucketed", "memory estimate: ",
             "MFU: off (no known bf16 peak for cpu; set train.device_peak_tflops", "phase 0: steps 1-6, 4 frames x 32 px",
             " step 6/6 "]
    assert all(s in out for s in order), out
    assert [out.index(s) for s in order] == sorted(out.index(s) for s in order), out
    # every key of the records is in docs/METRICS.md's table; a window of fewer steps than log_every says so
    recs = read_metrics(tmp_path / "run")
    documented = re.findall(r"^\| `([^`]+)` \|", (ROOT / "docs" / "METRICS.md").read_text(), re.M)
    patterns = [re.escape(k).replace("<m>", r"\d+").replace("<i>", r"\d+").replace("<kind>", r"\w+")
                for k in documented]
    assert {k for x in recs for k in x if not any(re.fullmatch(p, k) for p in patterns)} == set()
    assert [(x["step"], x["window_steps"], x["samples_seen"]) for x in recs] == [(4, 4, 8), (6, 2, 12)]
    # the end-of-run summary, after the last step
    summary = out[out.index("run summary: "):].splitlines()
    assert re.fullmatch(r"run summary: steps 1-6 \(6 trained\) in \d\d:\d\d wall \(setup \d\d:\d\d\)", summary[0])
    assert re.fullmatch(r"  [\d.]+ clips/s mean over the steps' time, MFU off", summary[1])
    assert summary[2:] == [f"  loss {recs[0]['loss']:.4f} at step {recs[0]['step']} -> {recs[-1]['loss']:.4f} at step 6",
                           "  skipped: 0 non-finite step(s), 0 unusable data file(s) (run totals)",
                           f"  final checkpoint: {tmp_path / 'run' / 'checkpoints' / 'step_00000006'}"]
    assert r.stderr.count("reduce_scatter_tensor` is deprecated") <= 1, r.stderr[-3000:]
    assert "all_gather_into_tensor` is deprecated" not in r.stderr, r.stderr[-3000:]  # ZeRO-3's gathers
