"""Preemption (vjepa_scale.train.preempt) and per-rank RNG (vjepa_scale.train.rng), in this process:
the signal handlers, finding the launchers to watch, seeding, DataLoader workers surviving SIGTERM.
The launcher watch and the 2-rank runs: integration/test_preempt_e2e.py."""
from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest
import torch

from vjepa_scale.config import load_config
from vjepa_scale.data import build_dataloader
from vjepa_scale.train import preempt, rng
from vjepa_scale.train.launch import preflight
from vjepa_scale.train.rng import rng_state, set_rng_state


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in preempt.PREEMPT_SIGNALS}
    preempt.clear()
    yield
    preempt.clear()
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_requests_a_stop_instead_of_ending_the_process(handlers, sig):
    preempt.install_handlers()
    assert preempt.stop_requested() is None and preempt.stop_agreed(torch.device("cpu")) is None
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # python runs the handler between bytecodes of the main thread
    assert preempt.stop_requested() == f"got {sig.name}"
    assert preempt.stop_agreed(torch.device("cpu")) == f"got {sig.name}"


def test_launcher_ancestors_names_only_launchers():
    """Under pytest (not a launcher) there is nothing to watch; the parsing of /proc works."""
    assert preempt.launcher_ancestors() == []
    assert preempt._proc_stat(os.getpid())[0] == os.getppid()
    assert preempt._proc_stat(2 ** 22 + 1) is None


def test_seed_everything_per_rank():
    states = []
    for rank in (0, 1, 0):
        rng.seed_everything(7, rank)
        states.append((torch.rand(3), np.random.rand(3), random.random()))
    assert all(torch.equal(a, b) for a, b in [(states[0][0], states[2][0])])
    assert np.array_equal(states[0][1], states[2][1]) and states[0][2] == states[2][2]
    assert not torch.equal(states[0][0], states[1][0]) and states[0][2] != states[1][2]


def _draws() -> tuple:
    """The next values of the three global generators a training process seeds."""
    return torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)]


def _same_draws(a: tuple, b: tuple) -> list[bool]:
    return [torch.equal(a[0], b[0]), np.array_equal(a[1], b[1]), a[2] == b[2]]


def test_set_rng_state_restores_what_rng_state_saved():
    """torch, numpy and python each continue from the saved state: the draws after a restore repeat
    the ones taken right after the save, not the ones the generators had moved on to."""
    rng.seed_everything(3, 1)
    _draws()  # away from the freshly seeded state: a restore that re-seeds would not get here
    saved = rng_state()
    first = _draws()
    moved_on = _draws()
    assert _same_draws(first, moved_on) == [False, False, False]
    set_rng_state(saved)
    assert _same_draws(_draws(), first) == [True, True, True]
    # the saved dict was not consumed: it restores again
    set_rng_state(saved)
    assert _same_draws(_draws(), first) == [True, True, True]


def test_untouched_keeps_the_generators():
    rng.seed_everything(0, 0)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with rng.untouched():
        torch.rand(5), np.random.rand(5), random.random()
        # a DataLoader iterator draws its base seed from torch's generator
        iter(torch.utils.data.DataLoader(list(range(4))))
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]


def test_starting_the_training_loader_under_untouched_keeps_the_generators(tmp_path):
    """The trainer starts each loader's iterator under `rng.untouched()`; a video loader's iterator must
    draw its base seed there, not at the first batch (it did, moving torch's generator after a resume
    restored it)."""
    from helpers import video_cfg, write_video_sets

    index = write_video_sets(tmp_path)["index"]["train"]
    loader = build_dataloader(video_cfg([(index, 1.0)]), num_steps=2)
    rng.seed_everything(0, 0)
    before = torch.get_rng_state()
    with rng.untouched():
        it = iter(loader)
    next(it)
    assert torch.equal(torch.get_rng_state(), before)


def test_dataloader_workers_survive_sigterm():
    """SLURM and the deepspeed launcher signal every process, workers included: they must live on
    until their rank has finished its step and saved."""
    cfg = load_config("cpu_demo.yaml", ["data.crop_size=32", "data.synthetic_size=16", "data.num_workers=1"])
    it = iter(build_dataloader(preflight(cfg, 1), num_steps=4))
    next(it)
    (worker,) = it._workers
    os.kill(worker.pid, signal.SIGTERM)
    os.kill(worker.pid, signal.SIGUSR1)
    time.sleep(0.5)
    assert worker.is_alive()
    assert next(it).step == 1


def test_stop_request_survives_a_broken_stderr(handlers, monkeypatch):
    """The handler prints its reason; a stderr whose reader died (a `| tee` killed by the same signal)
    must not turn the stop request into an exception in the training loop."""
    class Broken:
        def write(self, _):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stderr", Broken())
    preempt.request_stop("got SIGTERM")
    assert preempt.stop_requested() == "got SIGTERM"


def test_stop_requested_during_setup_ends_before_the_first_step(handlers, tmp_path):
    """A signal during model building or checkpoint loading: the run stops before training a step
    (nothing new to save, no step and save squeezed into the kill grace period), exit 75's exception."""
    from helpers import require, single_process_group
    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.weights import list_checkpoints

    require("deepspeed")
    cfg = load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2",
                                   "optim.iterations=3", "train.progress_bar=false"])
    tr = Trainer(preflight(cfg, 1), tmp_path / "run", env=single_process_group())
    preempt.request_stop("got SIGTERM")
    with pytest.raises(preempt.Preempted) as e:
        tr.fit()
    assert (e.value.step, e.value.checkpoint) == (0, None) and tr.step == 0
    assert list_checkpoints(tmp_path / "run") == []
    assert (tmp_path / "run" / preempt.MARKER).read_text().startswith("step 0\ncheckpoint None\n")


def test_resume_auto_continues_the_checkpoint_a_run_preempted_before_its_first_save_resumed(handlers, tmp_path):
    """`--resume OTHER/step_X --output-dir NEW` preempted before NEW's first save exits 75 with "resume
    with --resume auto": that must continue OTHER/step_X, which NEW's PREEMPTED file names (it used to
    start NEW from step 0 with fresh weights); a named checkpoint that is gone is a config error, and the
    marker is renamed PREEMPTED.stale, which later `--resume auto` runs refuse too."""
    import shutil

    from helpers import require, single_process_group
    from vjepa_scale.config import ConfigError
    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.weights import list_checkpoints

    require("deepspeed")
    cfg = preflight(load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2",
                                             "optim.iterations=3", "train.checkpoint_every=2",
                                             "train.progress_bar=false"]), 1)
    Trainer(cfg, tmp_path / "other", env=single_process_group()).fit()
    ckpt = list_checkpoints(tmp_path / "other")[0]
    assert ckpt.name == "step_00000002"
    tr = Trainer(cfg, tmp_path / "new", resume=str(ckpt), env=single_process_group())
    preempt.request_stop("got SIGTERM")
    with pytest.raises(preempt.Preempted) as e:
        tr.fit()
    assert e.value.checkpoint == ckpt and list_checkpoints(tmp_path / "new") == []
    preempt.clear()
    again = Trainer(cfg, tmp_path / "new", resume="auto", env=single_process_group())
    assert again.step == 2 and again.resumed_from == ckpt
    assert any(f"resuming {ckpt}, named by its PREEMPTED file" in n for n in again.notes), again.notes
    shutil.rmtree(ckpt)
    with pytest.raises(ConfigError, match=rf"the one its PREEMPTED file names cannot be resumed: {ckpt}"):
        Trainer(cfg, tmp_path / "new", resume="auto", env=single_process_group())
    # the marker is renamed, so a requeue script testing PREEMPTED stops; the next `--resume auto` still refuses
    assert not (tmp_path / "new" / preempt.MARKER).exists() and (tmp_path / "new" / "PREEMPTED.stale").exists()
    with pytest.raises(ConfigError, match=r"PREEMPTED\.stale names one that cannot be resumed"):
        Trainer(cfg, tmp_path / "new", resume="auto", env=single_process_group())
    # a fresh start preempted before its first save writes a newer marker (no checkpoint): auto starts afresh,
    # and training removes both files
    preempt.write_marker(tmp_path / "new", 0, None, "got SIGTERM")
    fresh = Trainer(cfg, tmp_path / "new", resume="auto", env=single_process_group())
    assert fresh.step == 0 and fresh.resumed_from is None
    fresh.fit()
    assert not any((tmp_path / "new" / n).exists() for n in ("PREEMPTED", "PREEMPTED.stale"))


def test_a_complete_run_resumed_removes_a_leftover_marker(handlers, tmp_path, capsys):
    """`--resume auto` of a run already at optim.iterations with a PREEMPTED file left over: nothing to
    train, and the file goes (it used to stay, so a requeue script testing it requeued forever)."""
    from helpers import require, single_process_group
    from vjepa_scale.train.engine import Trainer

    require("deepspeed")
    cfg = preflight(load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2",
                                             "optim.iterations=1", "train.progress_bar=false"]), 1)
    Trainer(cfg, tmp_path / "run", env=single_process_group()).fit()
    preempt.write_marker(tmp_path / "run", 1, None, "got SIGTERM")
    capsys.readouterr()
    done = Trainer(cfg, tmp_path / "run", resume="auto", env=single_process_group())
    done.fit()
    assert done.step == 1 and not (tmp_path / "run" / preempt.MARKER).exists()
    assert "the run is already complete at step 1 (optim.iterations=1)" in capsys.readouterr().out


def test_a_preemption_between_log_points_logs_the_steps_since_the_last_record(handlers, tmp_path):
    """log_every 4, a stop after step 2: the save is followed by a record of steps 1-2 (window_steps 2),
    so no trained step is missing from metrics.jsonl when the resumed run's next record covers 3-4."""
    from helpers import require, single_process_group
    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.train.metrics import read_metrics

    require("deepspeed")
    cfg = preflight(load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2",
                                             "optim.iterations=4", "train.log_every=4",
                                             "train.progress_bar=false"]), 1)
    tr = Trainer(cfg, tmp_path / "run", env=single_process_group())
    with pytest.raises(preempt.Preempted) as e:
        tr.fit(on_step=lambda t, stats: preempt.request_stop("got SIGTERM") if t.step == 2 else None)
    assert e.value.step == 2
    preempt.clear()
    Trainer(cfg, tmp_path / "run", resume="auto", env=single_process_group()).fit()
    recs = read_metrics(tmp_path / "run")
    assert [(r["step"], r["window_steps"], r["samples_seen"]) for r in recs] == [(2, 2, 4), (4, 2, 8)]
