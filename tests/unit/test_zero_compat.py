"""What `vjepa_scale.train.zero_compat` relies on in DeepSpeed, checked against the installed release.

A failure here after a DeepSpeed upgrade means a ZeRO internal the sharded EMA or the launcher uses
has changed: fix `zero_compat` (and only it), then widen `TESTED_DEEPSPEED`.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
import torch.nn as nn

from helpers import ROOT, require, single_process_group, tiny_config
from vjepa_scale.train.launch import deepspeed_config
from vjepa_scale.train.zero_compat import (TESTED_DEEPSPEED, convert_to_universal, deepspeed_version, fp32_master,
                                           has_master_fragments, is_partitioned, local_flat, master_fragment,
                                           optimizer_load_fixes, partition_numel, partition_slice,
                                           skip_shm_comm_build)

deepspeed = require("deepspeed")


def test_installed_deepspeed_is_the_tested_release():
    lo, hi = TESTED_DEEPSPEED
    v = deepspeed_version()
    assert lo <= v <= hi, (f"DeepSpeed {deepspeed.__version__} is outside the range zero_compat was checked "
                           f"with ({lo} .. {hi}): run tests/unit/test_zero_compat.py and widen TESTED_DEEPSPEED")
    pin = re.search(r"^deepspeed==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pin, "constraints.txt pins no deepspeed release"
    assert lo <= tuple(int(x) for x in pin.group(1).split(".")) <= hi


def test_missing_or_untested_deepspeed_is_named_before_training(monkeypatch, tmp_path, capsys):
    """No DeepSpeed: pre-flight refuses naming the extra, and reading a run names it too; an untested
    release gets a warning naming it; setup.py's floor is the tested release."""
    from vjepa_scale.config import ConfigError, load_config
    from vjepa_scale.train import launch, zero_compat
    from vjepa_scale.weights import load_consolidated

    lo, _ = TESTED_DEEPSPEED
    floor = re.findall(r'"deepspeed>=([\d.]+)"', (ROOT / "setup.py").read_text())
    assert floor and all(tuple(int(x) for x in f.split(".")) == lo for f in floor), floor
    assert zero_compat.untested_deepspeed_note() is None
    monkeypatch.setattr(zero_compat, "TESTED_DEEPSPEED", ((9, 0, 0), (9, 1, 0)))
    note = zero_compat.untested_deepspeed_note()
    assert note.startswith(f"warning: DeepSpeed {'.'.join(map(str, deepspeed_version()))} is outside the releases")
    monkeypatch.setattr(launch, "untested_deepspeed_note", zero_compat.untested_deepspeed_note)
    launch.check_deepspeed_installed()
    assert "(9.0.0 .. 9.1.0; constraints.txt)" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    monkeypatch.setitem(sys.modules, "deepspeed.utils.zero_to_fp32", None)
    with pytest.raises(ConfigError, match=r"training needs deepspeed, which is not installed: pip install -c constraints.txt -e '.\[train\]'"):
        launch.preflight(load_config("cpu_demo"), 1)
    from vjepa_scale.extras import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"reading a training checkpoint needs deepspeed, which is not installed: "
                                                r"pip install -c constraints.txt -e '.\[train\]'"):
        load_consolidated(tmp_path)


def test_shm_comm_switch_is_the_one_deepspeed_reads():
    from deepspeed.comm.torch import build_shm_op
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    ops = deepspeed.ops.__compatible_ops__
    assert isinstance(ops, dict) and ShareMemCommBuilder.NAME in ops
    skip_shm_comm_build()
    assert deepspeed.ops.__compatible_ops__ is ops and ops[ShareMemCommBuilder.NAME] is False
    assert build_shm_op() is None  # what DeepSpeed's CPU backend would have built


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 8, 64])
@pytest.mark.parametrize("numel", [1, 5, 7, 96, 1000, 1281])
def test_partition_arithmetic_matches_deepspeed(numel, world):
    """Our ceil(numel / world) slice size equals ZeRO-3's aligned size / world (DeepSpeed's own code)."""
    from deepspeed.runtime.zero.partition_parameters import Init

    init = types.SimpleNamespace(_partition_world_size=lambda p: world)
    init._padding_size = types.MethodType(Init._padding_size, init)
    param = types.SimpleNamespace(ds_numel=numel)
    aligned = Init._aligned_size(init, param)
    assert aligned % world == 0 and aligned // world == partition_numel(numel, world)
    full = torch.arange(numel, dtype=torch.float32)
    parts = [partition_slice(full, r, world) for r in range(world)]
    flat = full.new_zeros(aligned)
    flat[:numel] = full  # DeepSpeed pads the flat parameter at its end, then cuts equal slices in rank order
    assert torch.equal(torch.cat(parts), flat)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)  # 15 + 3 elements
        self.norm = nn.LayerNorm(3)
        self.out = nn.Linear(3, 7, bias=False)

    def forward(self, x):
        return self.out(self.norm(self.fc(x))).square().mean()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero3_engine_exposes_shards_and_fp32_masters(precision):
    """A real ZeRO-3 engine built with the trainer's DeepSpeed config (1 rank, gloo, torch AdamW)."""
    env = single_process_group()
    cfg = tiny_config(batch_size=2)
    cfg.train.precision = precision
    cfg.zero.stage = 3
    torch.manual_seed(0)
    model = _Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(cfg, env.world_size))
    for _ in range(2):
        x = torch.randn(2, 5, dtype=engine.module.fc.weight.dtype)
        engine.backward(engine(x))
        engine.step()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for name, p in engine.module.named_parameters():
        assert is_partitioned(p), name
        assert isinstance(p.ds_tensor, torch.Tensor) and p.ds_tensor.dtype == dtype
        work = local_flat(p)
        assert work.numel() == partition_numel(p.ds_numel, env.world_size) == p.ds_tensor.ds_numel, name
        assert work.data_ptr() == p.ds_tensor.data_ptr()  # a view: writing it writes the shard
        master = fp32_master(p)
        assert master.dtype == torch.float32 and master.numel() == work.numel(), name
        with deepspeed.zero.GatheredParameters([p]):
            full = p.data.detach().clone()
        assert full.shape == p.ds_shape and full.dtype == dtype
        assert torch.equal(work.float(), partition_slice(full, env.rank, env.world_size)), name
        assert torch.equal(master.to(dtype), work), name  # the working copy is the cast master
        if precision == "bf16":
            assert (master != master.to(dtype).float()).any(), name  # and the master holds more bits


@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_master_fragments_are_live_fp32_views(stage):
    """ZeRO-1/2 with a bf16 model: `master_fragment` gives, per parameter, the part whose fp32 master this
    rank holds (all of it on one rank) as a view that the optimizer step updates in place."""
    env = single_process_group()
    cfg = tiny_config(batch_size=2)
    cfg.train.precision = "bf16"
    cfg.zero.stage = stage
    torch.manual_seed(0)
    model = _Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(cfg, env.world_size))
    params = dict(engine.module.named_parameters())
    frags = {name: master_fragment(p) for name, p in params.items()}
    before = {name: f.master.clone() for name, f in frags.items()}
    engine.backward(engine(torch.randn(2, 5, dtype=torch.bfloat16)))
    engine.step()
    offsets = set()
    for name, p in params.items():
        f = frags[name]
        assert has_master_fragments(p) and not is_partitioned(p) and p.dtype == torch.bfloat16
        assert (f.start, f.numel) == (0, p.numel()) and f.master.dtype == torch.float32, name
        assert not torch.equal(f.master, before[name]), name  # updated in place by the step
        assert torch.equal(f.master.to(torch.bfloat16), p.data.view(-1)), name  # the param is the cast master
        assert (f.master != f.master.bfloat16().float()).any(), name
        offsets.add((f.group, f.offset))
    assert len(offsets) == len(params)  # each one its own place in the flat master partition


def _two_group_engine(cfg, world_size, universal=False):
    torch.manual_seed(0)
    model = _Tiny()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1, "wd_scale": 1.0},
                             {"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0}], lr=1e-2)
    ds = deepspeed_config(cfg, world_size)
    if universal:
        ds["checkpoint"] = {"load_universal": True}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    return engine, opt


def _adam_states(engine) -> list[dict]:
    inner = engine.optimizer.optimizer
    return [{k: v.clone() for k, v in inner.state[p].items()} for p in engine.optimizer.fp32_partitioned_groups_flat]


def test_universal_conversion_failure_names_the_folder_and_shows_its_output(tmp_path):
    """The conversion runs in a child interpreter: its failure is a RuntimeError naming the folder,
    with the end of DeepSpeed's output, not a silent empty folder."""
    bogus = tmp_path / "ds" / "t"
    bogus.mkdir(parents=True)
    (bogus / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=f"universal conversion of {bogus} exited with [1-9]") as e:
        convert_to_universal(str(bogus), str(tmp_path / "uc" / "t"), workers=2)
    assert "Traceback" in str(e.value) or "Error" in str(e.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_universal_converter_child_dies_with_its_parent(tmp_path):
    """The converter's child interpreter is killed when the rank that started it ends (a launcher's
    SIGKILL, the watchdog's exit), so it cannot keep writing into a folder a requeued run reuses, but
    not by SIGTERM / SIGUSR1 sent to it (SLURM signals every process of a job step); and the working
    directory is not on its sys.path."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "sleeper.py").write_text("import os, sys, time\n"
                                     "print('' in sys.path or os.getcwd() in sys.path, flush=True)\n"
                                     "time.sleep(120)\n")
    parent = subprocess.run(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "from vjepa_scale.train.zero_compat import tied_child_command\n"
         "p = subprocess.Popen(tied_child_command('sleeper'), stdout=subprocess.PIPE, text=True)\n"
         "line = p.stdout.readline().strip()\n"
         "import os, signal\n"
         "os.kill(p.pid, signal.SIGTERM); os.kill(p.pid, signal.SIGUSR1); time.sleep(0.5)\n"
         "print(p.pid, line, p.poll() is None, flush=True)\n"],  # and end, the child still asleep
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(mods)])},
        capture_output=True, text=True, timeout=60)
    assert parent.returncode == 0, parent.stderr
    pid, cwd_on_path, survived_stop_signals = parent.stdout.split()
    assert cwd_on_path == "False"
    assert survived_stop_signals == "True", "SIGTERM / SIGUSR1 (a preemption) killed the converter"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and \
            open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z":
        time.sleep(0.05)
    alive = os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"
    if alive:
        os.kill(int(pid), signal.SIGKILL)
    assert not alive, "the converter's child outlived its parent"


def test_zero3_universal_checkpoint_round_trip(tmp_path):
    """convert_to_universal + a `load_universal` engine restores the ZeRO-3 optimizer state;
    `optimizer_load_fixes` undoes the loader's two quirks (shared `step` tensor, group 0's
    hyperparameters copied onto every group), so the next step equals the uninterrupted one."""
    env = single_process_group()
    cfg = tiny_config(batch_size=2)
    cfg.zero.stage = 3
    cfg.zero.stage3_param_persistence_threshold = 0
    engine, _ = _two_group_engine(cfg, env.world_size)
    xs = [torch.randn(2, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for x in xs[:2]:
        engine.backward(engine(x))
        engine.step()
    engine.save_checkpoint(str(tmp_path / "ds"), tag="t", save_latest=False)
    convert_to_universal(str(tmp_path / "ds" / "t"), str(tmp_path / "uc" / "t"))
    assert (tmp_path / "uc" / "t" / "zero" / "optimizer_state.pt").is_file()

    raw, raw_opt = _two_group_engine(cfg, env.world_size, universal=True)
    raw.load_checkpoint(str(tmp_path / "uc"), tag="t", load_lr_scheduler_states=False)
    steps = [s["step"] for s in _adam_states_raw(raw)]
    quirks = (len({id(t) for t in steps}) < len(steps), raw_opt.param_groups[1]["weight_decay"] != 0.0)
    assert any(quirks), "DeepSpeed's universal loader changed: check whether optimizer_load_fixes is still needed"

    fixed, fixed_opt = _two_group_engine(cfg, env.world_size, universal=True)
    with optimizer_load_fixes(fixed):
        fixed.load_checkpoint(str(tmp_path / "uc"), tag="t", load_lr_scheduler_states=False)
    assert [g["weight_decay"] for g in fixed_opt.param_groups] == [0.1, 0.0]
    want, got = _adam_states(engine), _adam_states(fixed)
    for w, g in zip(want, got):
        assert w.keys() == g.keys() and all(torch.allclose(w[k], g[k], rtol=0, atol=1e-7) for k in w)
    assert len({id(s["step"]) for s in _adam_states_raw(fixed)}) == len(want)
    for e in (engine, fixed):
        e.backward(e(xs[2]))
        e.step()
    for (n, p), (_, q) in zip(engine.module.named_parameters(), fixed.module.named_parameters()):
        with deepspeed.zero.GatheredParameters([p, q]):
            assert torch.allclose(p, q, rtol=0, atol=1e-6), n


def _adam_states_raw(engine) -> list[dict]:
    inner = engine.optimizer.optimizer
    return [inner.state[p] for p in engine.optimizer.fp32_partitioned_groups_flat]
