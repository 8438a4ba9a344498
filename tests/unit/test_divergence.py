"""Divergence guard (vjepa_scale.train.guard): non-finite steps change nothing, a streak stops the run,
non-finite weights are never checkpointed, metrics.jsonl stays strict JSON.

In-process (1 rank, real DeepSpeed engines): one all-NaN micro-batch in every ZeRO stage and
precision; a refused save; strict metrics; refused DeepSpeed settings. The 2-rank runs:
integration/test_divergence_e2e.py.
"""
from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from helpers import equal_tensors, require, single_process_group
from vjepa_scale.config import ConfigError, load_config
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.guard import NonFiniteStateError, check_deepspeed_config
from vjepa_scale.train.launch import preflight
from vjepa_scale.train.metrics import RunLogger
from vjepa_scale.train.zero_compat import fp32_master
from vjepa_scale.weights import CKPT_SUBDIR, find_latest, list_checkpoints

require("deepspeed")


def _trainer(run_dir, *opts, resume=None) -> Trainer:
    env = single_process_group()
    cfg = load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=4",
                                   "optim.grad_accum=2", "optim.iterations=8", "optim.ema=[0.5,0.7]",
                                   "train.progress_bar=false", "train.precision=fp32", *opts])
    return Trainer(preflight(cfg, env.world_size), run_dir, resume=resume, env=env)


def _state(tr: Trainer) -> dict[str, torch.Tensor]:
    """fp32 masters of the online engine, EMA shadows, and the optimizer's Adam moments."""
    out = {f"online.{n}": fp32_master(p).clone() for n, p in tr.engine.module.named_parameters()}
    out.update({f"ema.{n}": s.clone() for n, s in zip(tr.ema.names, tr.ema.shadows)})
    for i, (p, st) in enumerate(tr.optimizer.state.items()):
        out.update({f"adam{i}.{k}": v.clone() for k, v in st.items() if torch.is_tensor(v)})
    return out


@pytest.mark.parametrize("stage,precision", [(3, "fp32"), (2, "fp32"), (1, "fp32"),
                                             (3, "bf16"), (2, "bf16")])
def test_isolated_nan_micro_batch_changes_nothing(tmp_path, stage, precision):
    """grad_accum=2, the first micro-batch of step 2 all-NaN: masters, Adam state and EMA after step 2
    equal those after step 1; the step still counts; step 3 then equals step 3 of a run resumed at
    step 2 (no gradient of the bad step left behind)."""
    opts = [f"zero.stage={stage}", f"train.precision={precision}"]
    tr = _trainer(tmp_path / "run", *opts)
    it = iter(tr.loader(4))
    steps = [[next(it), next(it)] for _ in range(3)]
    bad = [dataclasses.replace(steps[1][0], video=torch.full_like(steps[1][0].video, float("nan"))), steps[1][1]]
    tr.train_step(steps[0])
    before = _state(tr)
    tr.train_step(bad)
    assert tr.step == 2 and tr.guard.skipped_steps == 1 and tr.guard.bad_in_row == 1
    assert equal_tensors(_state(tr), before), "a skipped step changed weights, optimizer state or EMA"
    tr.save()
    tr.train_step(steps[2])
    assert tr.guard.skipped_steps == 1 and tr.guard.bad_in_row == 0
    after = _state(tr)
    assert not equal_tensors(after, before)  # a good step moves on

    resumed = _trainer(tmp_path / "run", *opts, resume="auto")
    assert resumed.step == 2 and resumed.guard.skipped_steps == 1  # the count survives a resume
    resumed.train_step(steps[2])
    assert equal_tensors(_state(resumed), after)


def test_a_streak_of_bad_steps_survives_a_resume(tmp_path):
    """Steps 2 and 3 bad, saved at 3 (a preemption), resumed: the streak goes on, so one more bad step
    reaches train.max_bad_steps=3 (the streak used to restart at every resume: a diverging run that kept
    being preempted never stopped). A checkpoint without the record (older) resumes with no streak."""
    from vjepa_scale.train.guard import DivergenceError

    opts = ["optim.grad_accum=1", "data.global_batch_size=2", "train.max_bad_steps=3"]
    tr = _trainer(tmp_path / "run", *opts)
    it = iter(tr.loader(4))
    batches = [next(it) for _ in range(4)]
    nan = [dataclasses.replace(b, video=torch.full_like(b.video, float("nan"))) for b in batches]
    tr.train_step([batches[0]])
    tr.train_step([nan[1]])
    tr.train_step([nan[2]])
    assert (tr.guard.bad_in_row, tr.guard.streak_start) == (2, 2) and tr.guard.last_finite[0] == 1
    ckpt = tr.save()
    resumed = _trainer(tmp_path / "run", *opts, resume="auto")
    g = resumed.guard
    assert (g.skipped_steps, g.bad_in_row, g.streak_start, g.last_finite) == (2, 2, 2, tr.guard.last_finite)
    resumed.train_step([nan[3]])
    with pytest.raises(DivergenceError, match=r"3 optimizer steps in a row \(steps 2-4, .* at step 1"):
        resumed.guard.check(resumed.step)
    meta = json.loads((ckpt / "meta.json").read_text())
    for key in ("bad_in_row", "streak_start", "last_finite"):
        del meta[key]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    old = _trainer(tmp_path / "run", *opts, resume="auto").guard
    assert (old.skipped_steps, old.bad_in_row, old.streak_start, old.last_finite) == (2, 0, None, None)


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    """A NaN in an fp32 master or an EMA shadow refuses the save; nothing is written, `latest` stays."""
    run = tmp_path / "run"
    tr = _trainer(run, "optim.grad_accum=1", "data.global_batch_size=2")
    it = iter(tr.loader(2))
    tr.train_step([next(it)])
    good = tr.save()
    tr.train_step([next(it)])
    master = fp32_master(next(tr.engine.module.parameters()))
    for tensor in (master.detach(), tr.ema.shadows[-1]):
        keep = tensor[0].item()
        tensor[0] = float("nan")
        with pytest.raises(NonFiniteStateError, match="refusing to save the checkpoint of step 2"):
            tr.save()
        tensor[0] = keep
        assert find_latest(run) == good and list_checkpoints(run) == [good]
        assert not list((run / CKPT_SUBDIR).glob(".tmp_*"))
    assert tr.save().name == "step_00000002"  # finite again: saved


def test_without_a_progress_bar_each_logged_step_is_a_line(tmp_path, capsys):
    """train.progress_bar: false (batch jobs), or a stderr that is no terminal (here: captured), prints the
    bar's numbers as one line per logged step, with the time of day, the elapsed time and the ETA; a
    disabled logger (ranks > 0) prints nothing."""
    import re

    from vjepa_scale.train.metrics import progress_postfix

    m = {"loss": 0.5, "lr": 1e-4, "clips_per_s": 12.0, "tokens_per_s": 3e4, "data_wait": 0.05, "data_wait_max": 0.25}
    RunLogger(tmp_path / "off", False, 10, progress_bar=False).progress(5, progress_postfix(m))
    assert capsys.readouterr().out == ""
    for bar in (False, True):
        log = RunLogger(tmp_path / str(bar), True, 10, progress_bar=bar)
        log.progress(5, progress_postfix(m), eta_s=3725.0)
        log.progress(6, progress_postfix(m))
        log.close()
        out, err = capsys.readouterr()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step 5/10 elapsed 00:0\d eta 1:02:05: loss 0.5000  "
                            r"lr 1.00e-04  clips/s 12.0  tok/s 30k  wait_max 25%\n.* step 6/10 elapsed 00:0\d eta \?: .*\n",
                            out), out
        assert "\r" not in err


def test_metrics_write_nonfinite_as_null(tmp_path):
    """metrics.jsonl: strict JSON, null + "nonfinite", floats to 7 significant digits; tensorboard: finite
    scalars (unrounded) + train/nonfinite_keys, the number of keys "nonfinite" lists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLogger(tmp_path, True, 2, progress_bar=False)
    log.log(1, {"loss": torch.tensor(0.5), "grad_norm": 2.0, "skipped_steps": 0,
                "weight_decay": 0.04 * 0.9999999999999995, "eta_s": 1234567.8912})  # 0.03999999999999998
    log.log(2, {"loss": torch.tensor(float("nan")), "grad_norm": float("inf"), "skipped_steps": 1})
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    recs = [json.loads(line, parse_constant=refuse) for line in lines]
    assert "nonfinite" not in recs[0] and recs[0]["loss"] == 0.5
    assert '"weight_decay": 0.04,' in lines[0] and recs[0]["eta_s"] == 1234567.89 and recs[0]["skipped_steps"] == 0
    assert abs(recs[0]["time"] - time.time()) < 60  # unix seconds: not rounded away
    assert recs[1]["loss"] is None and recs[1]["grad_norm"] is None and recs[1]["skipped_steps"] == 1
    assert recs[1]["nonfinite"] == ["loss", "grad_norm"]
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    scalars = {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
    assert scalars["train/nonfinite_keys"] == [(1, 0.0), (2, 2.0)] and "train/nonfinite" not in scalars
    assert scalars["train/loss"] == [(1, 0.5)] and scalars["train/skipped_steps"] == [(1, 0.0), (2, 1.0)]


def test_a_full_disk_stops_metrics_logging_not_the_run(tmp_path, capsys):
    """A metrics or tensorboard write that fails (ENOSPC) is warned about once and logging stops; the
    logger neither raises in log() nor in close() (it used to end rank 0 alone with a traceback)."""
    class Full:
        def write(self, *_):
            raise OSError(28, "No space left on device")

        def close(self):
            raise OSError(28, "No space left on device")

    log = RunLogger(tmp_path, True, 4, progress_bar=False)
    log.log(1, {"loss": 0.5})
    log._jsonl = Full()
    log.log(2, {"loss": 0.4})
    log.log(3, {"loss": 0.3})
    log.close()
    out = capsys.readouterr().out
    assert out.count("warning: writing metrics failed ([Errno 28] No space left on device)") == 1
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    log = RunLogger(tmp_path / "tb_full", True, 4, progress_bar=False)
    log._tb.add_scalar = Full().write  # the tensorboard writer's error surfaces in add_scalar
    log.log(1, {"loss": 0.5})
    log.close()
    assert "warning: writing metrics failed" in capsys.readouterr().out


def test_deepspeed_settings_that_apply_nan_gradients_are_refused():
    check_deepspeed_config({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}})
    with pytest.raises(ConfigError, match="compute_grad_norm"):
        check_deepspeed_config({"zero_optimization": {"stage": 2, "compute_grad_norm": False}})
    with pytest.raises(ConfigError, match="check_grad_overflow"):
        check_deepspeed_config({"bf16": {"enabled": True, "check_grad_overflow": False}})



def test_resumed_logger_drops_redone_steps_and_a_torn_last_record(tmp_path, caplog):
    """A run killed while writing its last record leaves half a line: the resume drops it (and the
    records of steps it will redo) with a warning instead of failing on rank 0 alone."""
    log = RunLogger(tmp_path, True, 4, progress_bar=False)
    for step in (1, 2, 3):
        log.log(step, {"loss": 0.5})
    log.close()
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 4, "loss": 0.')  # torn
    with caplog.at_level("WARNING", logger="vjepa_scale.train"):
        log = RunLogger(tmp_path, True, 4, start_step=2, progress_bar=False)
    log.log(3, {"loss": 0.25})
    log.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert "dropped 1 line(s) that are not whole records" in caplog.text
    assert not path.with_name("metrics.jsonl.tmp").exists()
