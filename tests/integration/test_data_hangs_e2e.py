"""A frozen DataLoader worker ends the run with a message (data.loader_timeout_s), in a child process.
Stalled files and the config keys: unit/test_data_hangs.py."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from helpers import ROOT, cpu_env, run_ranks, start, streamable_videos, train_args
from vjepa_scale.data import LoaderTimeoutError


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Four small VP9 videos (streamable: WebM needs no seek to be read from a pipe)."""
    return streamable_videos(tmp_path_factory.mktemp("hang_videos") / "v")


# torch's default (file_descriptor) sharing. `stop`: "test" = the test SIGSTOPs the worker while the
# child waits; "after_queue" = the worker stops itself while collating step 7, right after it queued
# step 6, so the child's next batch is one whose descriptors the frozen worker must hand over (a wait
# the DataLoader's own timeout does not cover)
FROZEN_CHILD = r"""
import multiprocessing, os, signal, sys, time
from helpers import video_cfg
from vjepa_scale.data import build_dataloader
from vjepa_scale.data.batch import ClipCollator

collate = ClipCollator.__call__

def freezing(self, samples):
    batch = collate(self, samples)
    if {stop!r} == "after_queue" and batch.step == 7:
        time.sleep(0.5)  # step 6 is written to the pipe
        os.kill(os.getpid(), signal.SIGSTOP)
    return batch

ClipCollator.__call__ = freezing
cfg = video_cfg([({index!r}, 1.0)], frames=4, step=2, crop=32, batch=4, workers=1, loader_timeout_s={timeout!r})
it = iter(build_dataloader(cfg, rank=1, world_size=2, start_step=5))
print("step", next(it).step, flush=True)
print("workers", *[p.pid for p in multiprocessing.active_children()], flush=True)
sys.stdin.readline()  # "test": the test stops the worker now
if {stop!r} == "after_queue":
    time.sleep(2)  # the worker has queued step 6 and stopped on step 7
for batch in it:
    print("step", batch.step, flush=True)
"""


def _kill_if_stopped(pid: int) -> None:
    """SIGKILL `pid` if it is still a stopped process (a worker the code under test failed to end)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return
    if state in ("T", "t"):
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["test", "after_queue"])
def test_frozen_worker_ends_the_run_with_a_message(videos, tmp_path, stop):
    """SIGSTOP the only DataLoader worker (as a hung decoder would freeze it): the training process
    ends within the timeout with an error naming rank, micro-step and the config key, and exits;
    also when the batch it waits for was queued by the worker just before it froze."""
    index = tmp_path / "index.txt"
    index.write_text("".join(f"{p} 0\n" for p in videos))
    script = tmp_path / "frozen_child.py"
    script.write_text(FROZEN_CHILD.format(index=str(index), timeout=3.0, stop=stop))
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    proc = start(script, env=cpu_env(PYTHONPATH=path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)
    workers = []
    try:
        first = proc.stdout.readline()
        line = proc.stdout.readline()
        assert first.startswith("step 5") and line.startswith("workers "), (first, line, proc.stderr.read())
        workers = [int(p) for p in line.split()[1:]]
        assert len(workers) == 1
        for pid in workers if stop == "test" else []:
            os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)  # without the timeout: blocks forever
        waited = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            _kill_if_stopped(pid)
    steps = [5] + [int(s) for s in re.findall(r"^step (\d+)", out, re.M)]
    assert proc.returncode != 0 and f"{LoaderTimeoutError.__name__}: " in err, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert f"rank 1: no batch for micro-step {steps[-1] + 1} " in message, message
    if stop == "after_queue":
        assert steps == [5], out
    assert "data.loader_timeout_s=3 s" in message and "raise data.loader_timeout_s" in message
    assert waited < 30
    for pid in workers:  # the stopped worker was killed, not left behind
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["loader", "collate"])
def test_data_error_on_one_rank_ends_every_rank_at_that_step(tmp_path, where):
    """2 ranks (plain processes: no launcher ends a rank left waiting), rank 1's data fail at step 2 (its
    data mount gone): every rank stops at that step with the agreed DataLoadError, exit 1 (rank 1 shows
    its own error, rank 0 names rank 1), instead of rank 0 waiting in its next collective for the
    watchdog (train.hang_timeout_s) or the launcher.
    `collate`: video files, and the error comes inside the loader on the run's last step, where rank 0's
    loader closes the epoch and its summary is gathered over the ranks; that gather must wait for the
    agreement (it once ran inside rank 0's next(), a collective rank 1 never reached)."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    run = tmp_path / "run"
    opts = ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2", "train.precision=fp32",
            "train.progress_bar=false", "train.log_every=1", "optim.iterations=2", "train.hang_timeout_s=30"]
    if where == "collate":
        index = write_synthetic_videos(tmp_path / "videos", num_videos=4, frames=16, size=32, val_fraction=0)["train"]
        opts += ["data.backend=cpu", f"data.datasets=[{{path: {index}}}]"]
    t0 = time.monotonic()
    ranks = run_ranks("tests/integration/data_error_at_step.py", "--fail-micro-step", "1", "--fail-rank", "1",
                      "--where", where, *train_args(run, *opts), nproc=2,
                      env=cpu_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])),
                      timeout=300)
    out = "".join(r.stdout + r.stderr for r in ranks)
    assert [r.returncode for r in ranks] == [1, 1], out[-3000:]
    assert time.monotonic() - t0 < 240
    assert "DataLoadError: rank 1: could not load its batch for step 2: NoReadableVideosError: rank 1: " \
           "/data/videos.csv: no such file (injected)" in out, out[-3000:]
    assert "error: rank(s) 1 could not load their batch for step 2" in out, out[-3000:]
    assert "hung" not in out and "Connection closed" not in out, out[-3000:]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
