"""Elastic resume on CPU (gloo, tiny config): a checkpoint written on N ranks continues on M ranks.

Each scenario trains STEPS steps straight on W1 ranks (a checkpoint every K steps), then resumes
its step-K checkpoint on W2 ranks in a fresh run dir up to STEPS. A straight run is made once per
(W1, options) in this module and each test takes a copy (resumes write into the checkpoint they read:
the universal form), so scenarios that start from the same run do not train it again. With `data.global_batch_size`
fixed, the resumed run must continue the straight one: the same clips at every step (recorded by
tests/integration/record_training.py from the batches that really reached the model), logged losses and final
online / EMA weights equal within fp32 reduction-order noise (LOSS_RTOL, WEIGHT_ATOL: the ranks sum
gradients, token errors and the EMA in another order). Without a fixed global batch the resumed
run continues the sample stream at the saved position.
"""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from helpers import assert_ok, cpu_env, free_port, launch, require, run_ranks, start, train_args
from vjepa_scale.train.metrics import read_metrics
from vjepa_scale.weights import list_checkpoints, load_consolidated

require("deepspeed")
RECORD = Path(__file__).with_name("record_training.py")
STEPS, K = 6, 3
OPTS = ["model.depth=1", "data.crop_size=32", "data.synthetic_size=64", f"optim.iterations={STEPS}",
        "optim.ema=[0.5,0.7]", "train.log_every=1", "train.keep_last=10", f"train.checkpoint_every={K}"]
# fp32 reduction-order noise after 3 resumed steps (measured differences are ~1e-7 .. 1e-6)
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5

pytestmark = pytest.mark.slow


def _launch(run_dir: Path, nproc: int, *opts, resume=None):
    """tools/train.py on `nproc` CPU ranks through record_training.py (records in run_dir/samples): under
    torchrun, or for 1 rank a plain process (a 1-process torchrun adds only its own start-up)."""
    args = (RECORD, "--record-dir", run_dir / "samples", "--what", "samples",
            *train_args(run_dir, *OPTS, *opts, resume=resume))
    r = run_ranks(*args, nproc=1)[0] if nproc == 1 else launch(*args, nproc=nproc)
    assert_ok(r)
    return r


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """straight_run(w1, *opts, to=dir): a copy at `to` of the straight run of STEPS steps on `w1` ranks with
    `opts` (recorded samples included), trained on first use and kept untouched for the next test."""
    made: dict[tuple, Path] = {}

    def copy(w1: int, *opts: str, to: Path) -> Path:
        key = (w1, *opts)
        if key not in made:
            run = tmp_path_factory.mktemp(f"straight{w1}") / "run"
            _launch(run, w1, *opts)
            made[key] = run
        shutil.copytree(made[key], to, symlinks=True)
        return to

    return copy


def _samples(run_dir: Path) -> dict[int, list[int]]:
    """step -> the clips of that optimizer step over all ranks, in global stream order."""
    recs = [json.loads(line) for f in sorted((run_dir / "samples").glob("rank*.jsonl")) for line in f.read_text().splitlines()]
    out: dict[int, list[int]] = {}
    for r in sorted(recs, key=lambda r: (r["micro"], r["rank"])):
        out.setdefault(r["step"], []).extend(r["index"])
    return out


def _elastic(straight_run, tmp_path, w1: int, w2: int, *opts, resume_opts=()):
    straight = straight_run(w1, *opts, to=tmp_path / f"straight{w1}")
    resumed = tmp_path / f"resumed{w1}to{w2}"
    ckpt = list_checkpoints(straight)[0]
    assert ckpt.name == f"step_{K:08d}" and json.loads((ckpt / "meta.json").read_text())["world_size"] == w1
    r = _launch(resumed, w2, *opts, *resume_opts, resume=ckpt)
    return straight, resumed, r.stdout + r.stderr


def _check_continues(straight: Path, resumed: Path, log: str, w1: int, w2: int) -> None:
    assert f"resumed from {list_checkpoints(straight)[0]}" in log
    if w1 != w2:
        assert f"elastic resume: checkpoint of {w1} ranks resharded onto {w2}" in log
    # data position: the resumed steps train on exactly the straight run's clips; none repeated or skipped
    a, b = _samples(straight), _samples(resumed)
    assert sorted(a) == list(range(1, STEPS + 1)) and sorted(b) == list(range(K + 1, STEPS + 1))
    assert all(b[s] == a[s] for s in b), (a, b)
    used = [i for s in range(1, K + 1) for i in a[s]] + [i for s in b for i in b[s]]
    assert len(used) == len(set(used)) == STEPS * 8  # 48 distinct clips of the 64 of epoch 0
    meta = json.loads((list_checkpoints(resumed)[-1] / "meta.json").read_text())
    assert meta["world_size"] == w2 and meta["samples_seen"] == STEPS * 8 and meta["global_batch_size"] == 8
    # losses after the resume and the final weights match the uninterrupted run
    la = {r["step"]: r["loss"] for r in read_metrics(straight)}
    lb = {r["step"]: r["loss"] for r in read_metrics(resumed)}
    assert sorted(lb) == list(range(K + 1, STEPS + 1))
    for s in lb:
        assert lb[s] == pytest.approx(la[s], rel=LOSS_RTOL, abs=0), (s, la, lb)
    for which in ("online", "target"):
        x, y = load_consolidated(straight, which), load_consolidated(resumed, which)
        assert x["step"] == y["step"] == STEPS
        for part in ("encoder", "predictor"):
            diff = max((x[part][k] - y[part][k]).abs().max().item() for k in x[part])
            assert diff <= WEIGHT_ATOL, (which, part, diff)
    # the online weights moved after the resume: the comparison is not vacuous
    k = load_consolidated(list_checkpoints(straight)[0], "online")["encoder"]
    f = load_consolidated(resumed, "online")["encoder"]
    assert max((k[n] - f[n]).abs().max().item() for n in k) > 1e-4


def test_zero3_two_ranks_to_one(straight_run, tmp_path):
    straight, resumed, log = _elastic(straight_run, tmp_path, 2, 1)
    _check_continues(straight, resumed, log, 2, 1)
    assert (list_checkpoints(straight)[0] / "universal" / "state" / "zero").is_dir()  # converted once, kept


def test_zero3_one_rank_to_two(straight_run, tmp_path):
    straight, resumed, log = _elastic(straight_run, tmp_path, 1, 2)
    _check_continues(straight, resumed, log, 1, 2)


def test_zero2_two_ranks_to_one(straight_run, tmp_path):
    straight, resumed, log = _elastic(straight_run, tmp_path, 2, 1, "zero.stage=2")
    _check_continues(straight, resumed, log, 2, 1)


def test_zero2_to_zero1_continues_and_zero3_is_refused(straight_run, tmp_path):
    """Another ZeRO stage on resume: ZeRO-1 and ZeRO-2 keep the optimizer state in one layout, so the
    run continues as if unchanged; ZeRO-3's layout is another, which DeepSpeed cannot load into (its
    universal format included), so that resume is refused before any work, naming the key and the way out."""
    straight, resumed, log = _elastic(straight_run, tmp_path, 2, 2, "zero.stage=2", resume_opts=["zero.stage=1"])
    _check_continues(straight, resumed, log, 2, 2)
    ckpt = list_checkpoints(straight)[0]
    assert json.loads((list_checkpoints(resumed)[-1] / "meta.json").read_text())["zero_stage"] == 1
    r = launch("tools/train.py", *train_args(tmp_path / "to3", *OPTS, "zero.stage=3", resume=ckpt))  # one process
    out = r.stdout + r.stderr
    assert r.returncode == 2 and f"train.init_from={ckpt}" in out, out[-3000:]
    assert f"config error: cannot resume {ckpt} with zero.stage=3: it was saved under zero.stage=2" in out
    assert not list_checkpoints(tmp_path / "to3")
    # the same command again without --resume would restart at step 0 over the straight run: refused
    before = (straight / "metrics.jsonl").read_text()
    r = launch("tools/train.py", *train_args(straight, *OPTS, "zero.stage=2"))
    out = r.stdout + r.stderr
    assert r.returncode == 2 and (f"config error: train.output_dir '{straight}' holds the checkpoints of an earlier "
                                  f"run (latest: step_{STEPS:08d}); continue it with --resume auto") in out, out[-3000:]
    assert (straight / "metrics.jsonl").read_text() == before


def test_changed_global_batch_resumes_at_saved_sample(straight_run, tmp_path):
    """No data.global_batch_size: 4 clips per rank, 8 per step on 2 ranks, 4 on 1. The 1-rank run
    continues the sample stream at clip 24 (3 steps x 8): positions 24..35, said in the log."""
    opts = ["data.global_batch_size=null", "data.batch_size=4"]
    straight, resumed, log = _elastic(straight_run, tmp_path, 2, 1, *opts)
    assert "global batch changed from 8 to 4" in log and "at clip 24" in log
    a, b = _samples(straight), _samples(resumed)
    stream = [i for s in sorted(a) for i in a[s]]  # the 2-rank run's stream, positions 0..47
    assert [i for s in sorted(b) for i in b[s]] == stream[24:36]
    meta = json.loads((list_checkpoints(resumed)[-1] / "meta.json").read_text())
    assert meta["samples_seen"] == 36 and meta["global_batch_size"] == 4


def test_init_from_optimizer_reshards_a_read_only_source_in_its_own_run(straight_run, tmp_path):
    """`train.init_from_optimizer` from a 2-rank run on 1 rank: the source folder is read-only (a shared
    pretraining run), so the universal form is made in the new run's folder and removed after the load."""
    import subprocess

    from helpers import single_process_group, tmpfs_mounts
    from vjepa_scale.config import load_config
    from vjepa_scale.train.elastic import INIT_UNIVERSAL
    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.train.launch import preflight

    with tmpfs_mounts(tmp_path) as mount:
        disk = mount("256m")
        src = list_checkpoints(straight_run(2, to=disk / "pre"))[0]  # a 2-rank checkpoint (step K)
        before = sorted(p.relative_to(disk) for p in disk.rglob("*"))
        r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only here ({r.stderr.strip()})")
        cfg = load_config("cpu_demo", [*OPTS[:3], "optim.iterations=2", "train.progress_bar=false",
                                       f"train.init_from={src}", "train.init_from_optimizer=true"])
        tr = Trainer(preflight(cfg, 1), tmp_path / "cool", env=single_process_group())
        assert any(f"optimizer state from {src}" in n for n in tr.notes)
        assert not (tmp_path / "cool" / INIT_UNIVERSAL).exists()
        tr.fit()
        assert tr.step == 2 and sorted(p.relative_to(disk) for p in disk.rglob("*")) == before


def test_waiting_ranks_raise_rank0s_conversion_error(tmp_path):
    """The universal conversion is not waited for in a collective (it can outlast the group's timeout):
    rank 0 writes its error beside the target folder, and the polling ranks raise it."""
    from vjepa_scale.train.elastic import universal_checkpoint

    ckpt = tmp_path / "step_00000003"
    (ckpt / "ds").mkdir(parents=True)  # no DeepSpeed tag inside: the conversion fails
    with pytest.raises(RuntimeError, match=rf"converting {ckpt} to DeepSpeed's universal format in "
                                           rf"{ckpt}/universal failed"):
        universal_checkpoint(ckpt, rank=0)
    assert not (ckpt / ".tmp_universal").exists()
    with pytest.raises(RuntimeError, match=r"^rank 0: converting .* failed"):
        universal_checkpoint(ckpt, rank=1, poll_s=0.01)


def _srun(ntasks: int, args: list, log: Path) -> list[subprocess.Popen]:
    """`srun python tools/train.py args`: `ntasks` plain processes that know only SLURM's variables, in
    one process group of their own (the group is rank 0's pid), output in `log`."""
    env = cpu_env(RANK=None, WORLD_SIZE=None, LOCAL_RANK=None, MASTER_ADDR=None, SLURM_JOB_ID="4242",
                  SLURM_STEP_ID="0", SLURM_NTASKS=str(ntasks), SLURM_NODELIST="localhost",
                  MASTER_PORT=str(free_port()))
    procs = []
    with open(log, "w") as out:
        try:
            for r in range(ntasks):
                group = {"process_group": 0 if r == 0 else procs[0].pid}
                procs.append(start("tools/train.py", *args, env=dict(env, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
                                   stdout=out, stderr=subprocess.STDOUT, **group))
        except BaseException:
            for p in procs:  # no rank left behind
                p.kill()
            raise
    return procs


def _is_converter(p: psutil.Process) -> bool:
    try:
        return "deepspeed.checkpoint.ds_to_universal" in p.cmdline()
    except psutil.Error:  # ended meanwhile
        return False


def test_preemption_signal_to_the_job_step_during_the_conversion(straight_run, tmp_path):
    """SIGTERM to the whole job step (its process group, as SLURM signals it) while rank 0's universal
    converter runs: the converter is not killed by it (it used to be: RuntimeError, exit 1 and a
    `universal.failed` left); the conversion finishes, and every rank then stops before its first step
    and exits 75, PREEMPTED naming the checkpoint it resumed."""
    from vjepa_scale.train import preempt

    straight, resumed = straight_run(1, to=tmp_path / "straight1"), tmp_path / "resumed1to2"
    ckpt = list_checkpoints(straight)[0]  # step K, saved on 1 rank: the 2 tasks convert it
    procs = _srun(2, train_args(resumed, *OPTS, resume=ckpt), tmp_path / "resumed.log")
    try:
        deadline, converter = time.monotonic() + 300, None
        while converter is None and time.monotonic() < deadline and procs[0].poll() is None:
            converter = next((c for c in psutil.Process(procs[0].pid).children() if _is_converter(c)), None)
            time.sleep(0.01)
        assert converter is not None, (tmp_path / "resumed.log").read_text()[-3000:]
        os.killpg(procs[0].pid, signal.SIGTERM)
        codes = [q.wait(timeout=300) for q in procs]
    finally:
        for q in procs:
            if q.poll() is None:
                q.kill()
    log = (tmp_path / "resumed.log").read_text()
    assert codes == [preempt.EXIT_PREEMPTED] * 2, log[-4000:]
    assert (ckpt / "universal" / "state").is_dir() and not (ckpt / "universal.failed").exists()
    assert "preempted (got SIGTERM) before training a step" in log
    assert (resumed / preempt.MARKER).read_text().startswith(f"step {K}\ncheckpoint {ckpt}\n")
    assert list_checkpoints(resumed) == []
