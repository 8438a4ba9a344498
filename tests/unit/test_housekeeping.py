"""Checkpoint housekeeping with real engines (1 rank, gloo, in this process): retention in save order,
leftovers of dead saves settled at start, read-only / full checkpoint folders, model changes on resume.

The folder tests mount small tmpfs filesystems (root only; skipped where mounting is not allowed);
the free-space and disk-error checks also have mount-free versions. 2 ranks running out of disk:
integration/test_housekeeping_e2e.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import require, single_process_group, tmpfs_mounts
from vjepa_scale.config import ConfigError, load_config
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.housekeeping import (CheckpointFolderError, CheckpointWriteError, ResumeConfigError,
                                            compare_configs, dir_bytes, is_disk_error, prepare_checkpoint_folder)
from vjepa_scale.train.launch import preflight
from vjepa_scale.weights import CKPT_SUBDIR, find_latest, list_checkpoints, load_consolidated

require("deepspeed")
OPTS = ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2", "train.precision=fp32",
        "train.progress_bar=false", "train.log_every=1"]


def _cfg(*opts):
    return preflight(load_config("cpu_demo", [*OPTS, *opts]), 1)


def _trainer(run, *opts, resume=None) -> Trainer:
    return Trainer(_cfg(*opts), run, resume=resume, env=single_process_group())


def _meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "meta.json").read_text())


def _names(run) -> list[str]:
    return [p.name for p in list_checkpoints(run)]


def test_retention_keeps_newest_saves_after_resuming_an_older_step(tmp_path):
    """The issue's scenario: 6 steps saved every step; resume step 3 with keep_last 2 and train to
    step 5. The two newest saves (the resumed run's steps 4 and 5) stay, step 6 of the abandoned
    run goes, `latest` names step 5, and `--resume auto` continues from it and trains."""
    run = tmp_path / "run"
    _trainer(run, "optim.iterations=6", "train.checkpoint_every=1", "train.keep_last=10").fit()
    assert _names(run) == [f"step_{s:08d}" for s in range(1, 7)]
    assert [_meta(p)["save_index"] for p in list_checkpoints(run)] == list(range(1, 7))

    tr = _trainer(run, "optim.iterations=5", "train.checkpoint_every=1", "train.keep_last=2",
                  resume=str(run / CKPT_SUBDIR / "step_00000003"))
    assert tr.step == 3
    tr.fit()
    kept = list_checkpoints(run)
    assert [p.name for p in kept] == ["step_00000004", "step_00000005"]
    assert [_meta(p)["save_index"] for p in kept] == [7, 8]  # re-saves of existing names: new indices
    assert not (run / CKPT_SUBDIR / "step_00000006").exists()
    assert (run / CKPT_SUBDIR / "latest").read_text() == "step_00000005"
    assert find_latest(run).name == "step_00000005"
    assert not [p.name for p in (run / CKPT_SUBDIR).iterdir() if p.name.startswith(".")]

    tr = _trainer(run, "optim.iterations=7", "train.checkpoint_every=1", "train.keep_last=2", resume="auto")
    assert tr.step == 5
    tr.fit()
    assert tr.step == 7
    assert _names(run) == ["step_00000006", "step_00000007"]
    assert (run / CKPT_SUBDIR / "latest").read_text() == "step_00000007"


def _fake_ckpt(root: Path, name: str, step: int, save_index: int) -> Path:
    d = root / name
    (d / "ds").mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"step": step, "world_size": 1, "complete": True,
                                             "save_index": save_index}))
    return d


def _loadable_fake_ckpt(root: Path, name: str, step: int, save_index: int) -> Path:
    """A 1-rank checkpoint whose files pass `checkpoint_problem` (each a small torch.save archive)."""
    d = _fake_ckpt(root, name, step, save_index)
    for f in ("ema/rank00000.pt", "rng/rank00000.pt", "ds/state/zero_pp_rank_0_mp_rank_00_optim_states.pt",
              "ds/state/zero_pp_rank_0_mp_rank_00_model_states.pt"):
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        torch.save({}, d / f)
    return d


def test_resume_of_a_run_folder_passes_over_a_damaged_newest_save_like_auto(tmp_path):
    """`--resume RUN` or `--resume RUN/checkpoints` (the newest complete one) behaves as `--resume auto`:
    a damaged newest save is passed over with the same warning naming the file and the one before is
    resumed; `--resume` of that one checkpoint (its step folder or the `latest` file naming it) is an
    error naming the file; a folder with none loadable is an error naming each one's problem."""
    run = tmp_path / "run"
    root = run / CKPT_SUBDIR
    one = _loadable_fake_ckpt(root, "step_00000001", 1, save_index=1)
    two = _loadable_fake_ckpt(root, "step_00000002", 2, save_index=2)
    (root / "latest").write_text(two.name)
    ema = two / "ema" / "rank00000.pt"
    ema.write_bytes(ema.read_bytes()[:100])  # truncated
    auto = Trainer._find_resume("auto", run)
    assert auto[0] == str(one) and auto[2] is None
    assert len(auto[1]) == 1 and f"checkpoint {two.name} cannot be resumed ({ema} is damaged" in auto[1][0]
    for resume, here in [(run, run), (root, run), (run, tmp_path / "new")]:  # its own run or another's
        assert Trainer._find_resume(str(resume), here) == auto, resume
    for resume in (two, root / "latest"):
        ckpt, notes, error = Trainer._find_resume(str(resume), run)
        assert ckpt is None and error.startswith(f"--resume {resume}: {ema} is damaged"), error
    ema1 = one / "ema" / "rank00000.pt"
    ema1.write_bytes(b"")
    ckpt, _, error = Trainer._find_resume(str(run), tmp_path / "new")
    assert ckpt is None and f"none of the 2 checkpoint(s) in {root} can be resumed" in error
    assert f"step_00000001: {ema1} is damaged" in error


def test_leftovers_settled_when_a_run_starts(tmp_path):
    """Trainer start: `.tmp_*` and `.del_*` removed; `.old_X` restored as X when X is missing (a re-save
    died between its two renames), removed when X exists; each action logged."""
    run = tmp_path / "run"
    _trainer(run, "optim.iterations=1", "train.checkpoint_every=1").fit()
    root = run / CKPT_SUBDIR
    real = root / "step_00000001"
    shutil.copytree(real, root / ".old_step_00000001")  # X exists: the swap finished, old copy left
    _fake_ckpt(root, ".old_step_00000009", 9, save_index=0)  # X missing: restore
    (root / ".tmp_step_00000002" / "ds").mkdir(parents=True)  # a save that never committed
    (root / ".tmp_step_00000002" / "ds" / "half.pt").write_bytes(b"x" * 100)
    (root / ".del_step_00000000").mkdir()  # a prune that died

    tr = _trainer(run, "optim.iterations=2", "train.checkpoint_every=1", "train.keep_last=5", resume="auto")
    names = sorted(p.name for p in root.iterdir())
    assert names == ["latest", "step_00000001", "step_00000009"]
    assert _meta(root / "step_00000009")["step"] == 9
    # the restored copy is older in save order than the real step 1: resume auto still picks step 1
    assert tr.resumed_from.name == "step_00000001" and tr.step == 1
    notes = "\n".join(tr.notes)
    assert "restored step_00000009 from .old_step_00000009" in notes
    assert "removed the leftover .old_step_00000001" in notes
    assert "removed the leftover .tmp_step_00000002" in notes
    assert "removed the leftover .del_step_00000000" in notes


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs mount point; unmounted afterwards."""
    with tmpfs_mounts(tmp_path) as mount:
        yield mount


def test_read_only_folder_refused_before_training(tmpfs):
    ro = tmpfs("1m", ro=True)
    with pytest.raises(CheckpointFolderError, match=rf"checkpoint folder {ro}/run/checkpoints is not writable"):
        _trainer(ro / "run", "optim.iterations=1")


def test_full_folder_refused_before_training(tmpfs):
    """A 1 MiB filesystem cannot take the tiny model's ~5 MB checkpoint: refused at start, naming the
    folder and both sizes; train.check_free_disk: false lets it start."""
    small = tmpfs("1m")
    with pytest.raises(CheckpointFolderError, match=r"has [\d,]+ bytes free but one checkpoint needs [\d,]+ bytes"):
        _trainer(small / "run", "optim.iterations=1")
    tr = _trainer(small / "run2", "optim.iterations=1", "train.check_free_disk=false")
    assert tr.step == 0


def test_free_space_estimate_refuses_a_model_larger_than_the_disk(tmp_path):
    """Mount-free: a 40-billion-parameter model (counted on the meta device) needs ~0.7 TB per
    checkpoint, more than this disk has free."""
    cfg = load_config("cpu_demo", ["model.width=8192", "model.depth=48", "model.num_heads=64"])
    with pytest.raises(CheckpointFolderError, match=rf"{tmp_path}/run/checkpoints has [\d,]+ bytes free but "
                                                    r"one checkpoint needs [\d,]+ bytes \(estimated"):
        prepare_checkpoint_folder(cfg, tmp_path / "run", rank=0)
    cfg.train.check_free_disk = False
    assert prepare_checkpoint_folder(cfg, tmp_path / "run", rank=0) == []


def test_disk_full_while_saving_keeps_last_good_checkpoint(tmp_path, tmpfs):
    """A filesystem with room for one checkpoint but not two: the second save fails with a clear error
    naming the step, the folder and the last good checkpoint; the partial save is removed and the
    last good checkpoint still loads."""
    probe = tmp_path / "probe"
    _trainer(probe, "optim.iterations=1", "train.checkpoint_every=1").fit()
    size = dir_bytes(probe / CKPT_SUBDIR / "step_00000001")
    disk = tmpfs(f"{int(size * 1.6) // 4096 * 4096 + 8 * 4096}")
    run = disk / "run"
    tr = _trainer(run, "optim.iterations=2", "train.checkpoint_every=1", "train.keep_last=1",
                  "train.check_free_disk=false")
    with pytest.raises(CheckpointWriteError, match=rf"disk full / read-only .* while saving checkpoint step 2 "
                                                   rf"to {run}/checkpoints; .* last good checkpoint is still "
                                                   rf"{run}/checkpoints/step_00000001"):
        tr.fit()
    root = run / CKPT_SUBDIR
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001"]
    assert load_consolidated(run)["step"] == 1


def test_an_old_checkpoint_that_cannot_be_pruned_does_not_fail_the_save(tmp_path, monkeypatch, caplog):
    """The new save is committed before pruning: an old checkpoint that cannot be moved away (EACCES)
    is a warning, training goes on, and a later save prunes it once it can."""
    import errno
    import os

    from vjepa_scale.train import checkpoint

    run = tmp_path / "run"
    real_rename, locked = os.rename, {"step_00000001"}

    def rename(src, dst):
        if Path(src).name in locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", rename)
    tr = _trainer(run, "optim.iterations=2", "train.checkpoint_every=1", "train.keep_last=1")
    with caplog.at_level("WARNING", logger="vjepa_scale.train"):
        tr.fit()
    assert tr.step == 2 and _names(run) == ["step_00000001", "step_00000002"]
    assert find_latest(run).name == "step_00000002"
    assert f"could not remove the old checkpoint {run}/checkpoints/step_00000001" in caplog.text
    locked.clear()
    tr = _trainer(run, "optim.iterations=3", "train.checkpoint_every=1", "train.keep_last=1", resume="auto")
    tr.fit()
    assert _names(run) == ["step_00000003"]


def test_torch_stream_write_failure_is_a_disk_error():
    """What torch.save raises on a full disk and ENOSPC itself count as disk errors. A large object
    fails with "unexpected pos"; a small one (an RNG state: what a CI run hit) with a bare
    "basic_ios::clear: iostream error" that has no cause, which once crashed the rank."""
    with pytest.raises(RuntimeError) as e:
        torch.save(torch.zeros(100_000), "/dev/full")
    assert is_disk_error(e.value)
    with pytest.raises(RuntimeError) as e:
        torch.save({"seed": torch.zeros(2)}, "/dev/full")
    assert is_disk_error(e.value)
    with pytest.raises(OSError) as e:
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 100_000)
            f.flush()
    assert is_disk_error(e.value)
    assert not is_disk_error(RuntimeError("size mismatch"))


def test_mask_type_count_is_no_model_key_with_a_shared_mask_token():
    """One shared predictor token serves any number of mask types: the count is then a note, not a model key."""
    one = "mask.types=[{num_blocks: 2}]"
    per_type, shared = [load_config("cpu_demo", opts).to_dict() for opts in ([], ["model.mask_tokens=shared"])]
    fewer = load_config("cpu_demo", ["model.mask_tokens=shared", one]).to_dict()
    assert compare_configs(per_type, load_config("cpu_demo", [one]).to_dict())[0] == ["mask.types (count): 2 -> 1"]
    model, other = compare_configs(shared, fewer)
    assert model == [] and any(line.startswith("mask.types:") for line in other)
    assert compare_configs(per_type, fewer)[0] == ["mask.types (count): 2 -> 1",
                                                   "model.mask_tokens: 'per_type' -> 'shared'"]


def test_model_change_on_resume_refused_naming_keys(tmp_path):
    run = tmp_path / "run"
    _trainer(run, "optim.iterations=1", "train.checkpoint_every=1").fit()
    with pytest.raises(ResumeConfigError, match=r"model\.num_heads: 3 -> 4"):
        _trainer(run, "optim.iterations=2", "model.num_heads=4", resume="auto")
    with pytest.raises(ResumeConfigError, match=r"model\.width: 96 -> 192"):
        _trainer(run, "optim.iterations=2", "model.width=192", resume="auto")
    with pytest.raises(ResumeConfigError, match=r"mask\.types \(count\): 2 -> 1"):
        _trainer(run, "optim.iterations=2", "mask.types=[{num_blocks: 2}]", resume="auto")
    with pytest.raises(ResumeConfigError, match=r"model\.mask_tokens: 'per_type' -> 'shared'"):
        _trainer(run, "optim.iterations=2", "model.mask_tokens=shared", resume="auto")
    with pytest.raises(ConfigError, match=r"train\.init_from: .*trained with model\.mask_tokens='per_type' but the "
                                          r"config has 'shared'"):
        _trainer(tmp_path / "shared", "model.mask_tokens=shared", f"train.init_from={run}")
    # data / optim / train / runtime model keys may change: resumed, with a note naming them
    tr = _trainer(run, "optim.iterations=2", "optim.lr=0.001", "model.activation_checkpointing=true",
                  resume="auto")
    assert tr.step == 1
    note = "\n".join(tr.notes)
    assert "optim.iterations: 1 -> 2" in note and "optim.lr: 0.002 -> 0.001" in note
    assert "model.activation_checkpointing: False -> True" in note
    # another ZeRO stage across ZeRO-3 <-> ZeRO-1/2: refused from meta.json, config.yaml or not
    saved = find_latest(run) / "config.yaml"
    kept = saved.read_text()
    # a run saved before model.mask_tokens existed trained one token per mask type: it resumes as per_type
    assert "  mask_tokens: per_type\n" in kept
    saved.write_text(kept.replace("  mask_tokens: per_type\n", ""))
    assert _trainer(run, "optim.iterations=2", resume="auto").step == 1
    saved.unlink()
    with pytest.raises(ResumeConfigError, match=r"cannot resume .* with zero\.stage=1: it was saved under zero\.stage=3"):
        _trainer(run, "optim.iterations=2", "zero.stage=1", resume="auto")
    saved.write_text(kept)
    with pytest.raises(ResumeConfigError, match=r"train\.init_from_optimizer: cannot load the optimizer state of .* "
                                                 r"set train\.init_from_optimizer: false"):
        _trainer(tmp_path / "warm", "zero.stage=2", f"train.init_from={run}", "train.init_from_optimizer=true")
