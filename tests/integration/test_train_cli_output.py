"""What a single-rank CPU run of tools/train.py prints on stderr besides its progress bar."""
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
    assert "100%" in r.stderr  # the progress bar ran to the end on stderr
    assert r.stderr.count("reduce_scatter_tensor` is deprecated") <= 1, r.stderr[-3000:]
    assert "all_gather_into_tensor` is deprecated" not in r.stderr, r.stderr[-3000:]  # ZeRO-3's gathers
