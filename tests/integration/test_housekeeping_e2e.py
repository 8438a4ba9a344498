"""Checkpoint housekeeping with 2 ranks under torchrun: a save that runs out of disk ends every rank.
In-process cases (1 rank, the other folder checks): unit/test_housekeeping.py."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import launch, require, run_ranks, single_process_group, tmpfs_mounts, train_args
from vjepa_scale.config import load_config
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.housekeeping import dir_bytes
from vjepa_scale.train.launch import preflight
from vjepa_scale.weights import CKPT_SUBDIR, list_checkpoints

require("deepspeed")
OPTS = ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2", "train.precision=fp32",
        "train.progress_bar=false", "train.log_every=1"]


@pytest.fixture
def tmpfs(tmp_path):
    with tmpfs_mounts(tmp_path) as mount:
        yield mount


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A 2-rank run of 2 steps under torchrun, a checkpoint after each; tests resume (and damage) a copy."""
    run = tmp_path_factory.mktemp("two_step") / "run"
    first = launch("tools/train.py", *train_args(run, *OPTS, "optim.iterations=2", "train.checkpoint_every=1",
                                                 "train.keep_last=3"), nproc=2, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    return run


def _copy(run, to):
    shutil.copytree(run, to, symlinks=True)
    return to


def _ranks(script, *args, env=None) -> tuple[list[int], str]:
    """`script args` on 2 ranks as plain processes (no launcher, which would end the other rank once one
    fails): every rank must end by itself. Returns the ranks' exit codes and their output, rank 0 first."""
    ranks = run_ranks(script, *args, nproc=2, env=env, timeout=240)
    return [r.returncode for r in ranks], "".join(r.stdout + r.stderr for r in ranks)


def _config_error(*args) -> str:
    """tools/train.py `args` on 2 ranks, plain processes (each rank's own exit status, no launcher in
    between): every rank must exit 2, the documented config-error exit. Returns both ranks' stderr."""
    ranks = run_ranks("tools/train.py", *args, nproc=2, timeout=240)
    err = "".join(r.stderr for r in ranks)
    assert [r.returncode for r in ranks] == [2, 2], err[-3000:]
    return err


@pytest.mark.slow
def test_two_ranks_disk_full_while_saving_end_cleanly(tmp_path, tmpfs):
    """2 ranks: a save that runs out of disk ends every rank (no hang; plain processes, so no launcher
    ends a rank left waiting) with the clear error, removes the partial save and keeps the last good
    checkpoint."""
    probe = tmp_path / "probe"
    cfg = preflight(load_config("cpu_demo", [*OPTS, "optim.iterations=1", "train.checkpoint_every=1"]), 1)
    Trainer(cfg, probe, env=single_process_group()).fit()
    size = dir_bytes(probe / CKPT_SUBDIR / "step_00000001")  # 1 rank; 2 ranks add one optimizer shard
    disk = tmpfs(f"{int(size * 2.0) // 4096 * 4096}")
    run = disk / "run"
    codes, out = _ranks("tools/train.py", *train_args(run, *OPTS, "data.global_batch_size=4", "optim.iterations=3",
                                                      "train.checkpoint_every=1", "train.keep_last=1",
                                                      "train.check_free_disk=false"))
    first_error = out[out.find("Traceback"):][:6000]
    assert all(c != 0 for c in codes), (codes, out[-3000:])
    assert "CheckpointWriteError: disk full / read-only" in out, first_error
    done = list_checkpoints(run)
    assert len(done) == 1, out[-3000:]
    step = json.loads((done[0] / "meta.json").read_text())["step"]
    assert f"while saving checkpoint step {step + 1} to {run}/checkpoints" in out
    assert f"last good checkpoint is still {done[0]}" in out
    assert sorted(p.name for p in (run / CKPT_SUBDIR).iterdir()) == ["latest", done[0].name]


@pytest.mark.slow
def test_disk_full_on_one_rank_inside_deepspeeds_save_ends_every_rank_cleanly(tmp_path):
    """Only rank 1's ZeRO-3 optimizer-state write fails (ENOSPC) while rank 0's save goes on: rank 1
    still runs the collectives that follow the writes in DeepSpeed's save (ZeRO-3's re-gather of the
    persistent parameters, the closing barrier), so both ranks reach the agreement on the error and
    end with CheckpointWriteError, keeping the last good checkpoint, instead of hanging out of step
    (plain processes: no launcher ends a rank left waiting)."""
    from helpers import ROOT, cpu_env

    run = tmp_path / "run"
    codes, out = _ranks("tests/integration/disk_full_on_one_rank.py", "--rank", "1", "--step", "2",
                        *train_args(run, *OPTS, "data.global_batch_size=4", "optim.iterations=3",
                                    "train.checkpoint_every=1", "zero.stage3_param_persistence_threshold=100000",
                                    "train.hang_timeout_s=60"), env=cpu_env(PYTHONPATH=str(ROOT)))
    first_error = out[out.find("Traceback"):][:6000]
    assert all(c != 0 for c in codes), (codes, out[-3000:])
    assert "hung" not in out, first_error
    assert "CheckpointWriteError: disk full / read-only ([Errno 28] No space left on device (injected)" in out, \
        first_error
    assert "CheckpointWriteError: another rank hit a full / read-only disk while saving checkpoint step 2" in out
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001"]
    assert sorted(p.name for p in (run / CKPT_SUBDIR).iterdir()) == ["latest", "step_00000001"]


def test_resume_with_another_model_is_a_config_error_on_every_rank(tmp_path, two_step_run):
    """tools/train.py on 2 ranks: resuming a depth-1 run with model.depth=2 exits 2 on every rank with one
    `config error:` line (rank 0's) naming the key, without a traceback (the documented config-error exit)."""
    run = _copy(two_step_run, tmp_path / "run")
    err = _config_error(*train_args(run, *OPTS, "model.depth=2", "optim.iterations=3", resume="auto"))
    assert err.count("config error:") == 1 and "model.depth" in err
    assert "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _config_error(*train_args(run, *OPTS, "optim.iterations=2", resume=empty))
    assert f"config error: --resume {empty}:" in err, err[-3000:]


@pytest.mark.slow
def test_damaged_checkpoints_are_named_and_resume_auto_takes_the_one_before(tmp_path, two_step_run):
    """A checkpoint whose files were damaged after it was committed (a truncated EMA shard, a lost
    optimizer shard): `--resume auto` warns, naming the file, and continues the newest loadable one;
    `--resume` of the damaged one, or a run with no loadable one, is a config error (exit 2) naming it."""
    run = _copy(two_step_run, tmp_path / "run")
    one, two = list_checkpoints(run)
    ema = two / "ema" / "rank00001.pt"
    ema.write_bytes(ema.read_bytes()[:1000])  # truncated
    r = launch("tools/train.py", *train_args(run, *OPTS, "optim.iterations=3", resume="auto"), nproc=2, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert f"checkpoint {two.name} cannot be resumed ({ema} is damaged" in out and f"resumed from {one} at step 1" in out
    err = _config_error(*train_args(run, *OPTS, "optim.iterations=3", resume=two))
    assert f"config error: --resume {two}: {ema} is damaged" in err, err[-3000:]
    for ckpt in list_checkpoints(run):  # every optimizer shard of rank 1 lost
        next((ckpt / "ds" / "state").glob("*rank_1_mp_rank_00_optim_states.pt")).unlink()
    err = _config_error(*train_args(run, *OPTS, "optim.iterations=4", resume="auto"))
    assert "can be resumed" in err and "1 DeepSpeed optimizer file(s) for the 2 rank(s)" in err, err[-3000:]
    assert "Traceback" not in err
    # a new run warm-started from that run: named before any weights are read
    err = _config_error(*train_args(tmp_path / "warm", *OPTS, "optim.iterations=1", f"train.init_from={run}"))
    assert "config error: train.init_from: " in err and "1 DeepSpeed optimizer file(s) for the 2 rank(s)" in err, \
        err[-3000:]


def test_an_unexpected_error_ends_the_rank_despite_its_loader_workers(tmp_path):
    """Any exception other than the three handled ends (a bug, a disk error at a save) prints its
    traceback and ends the rank with 1: a normal interpreter exit waited forever for the DataLoader
    workers, which ignore SIGTERM, so no launcher ever saw the rank end."""
    import subprocess
    import sys
    import time

    from helpers import ROOT, cpu_env

    script = tmp_path / "inject.py"
    script.write_text(
        "import runpy, sys\n"
        "from vjepa_scale.train import engine\n"
        "def save(self):\n"
        "    raise RuntimeError('injected failure in the checkpoint save')\n"
        "engine.Trainer.save = save\n"
        f"sys.argv = ['tools/train.py', *{train_args(tmp_path / 'run', *OPTS, 'optim.iterations=4', 'train.checkpoint_every=2', 'data.num_workers=2')!r}]\n"
        f"runpy.run_path({str(ROOT / 'tools' / 'train.py')!r}, run_name='__main__')\n")
    env = cpu_env(**dict.fromkeys(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")))
    start = time.monotonic()
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "RuntimeError: injected failure in the checkpoint save" in r.stderr and "Traceback" in r.stderr
    assert time.monotonic() - start < 200
