"""Atomic, resumable checkpoints inside a live engine: DeepSpeed ZeRO state + EMA shards + RNG.

The on-disk layout, discovery (`find_latest`, `list_checkpoints`) and the CPU-only consolidation
(`load_consolidated`) live in `vjepa_scale.weights.run`. A save writes everything into
`.tmp_<name>` (after every rank confirmed its weights are finite: `guard.check_finite_state`); then
rank 0 commits (`_commit`): it writes `config.yaml` and `meta.json` (with the next `save_index`),
renames the folder to its final name, replaces `latest` and prunes to the `train.keep_last` newest
saves in save order. A save killed at any point before the rename leaves the previous checkpoint as
the latest complete one; what it leaves behind (`.tmp_*`, `.old_*`, `.del_*`) is settled when the
next run starts (`train.housekeeping.clean_leftovers`). A full or read-only disk ends the save with
`CheckpointWriteError` on every rank, after the partial save is removed; committed checkpoints are
never touched by a failing save.

`load_checkpoint` restores at the saved world size directly, and at another one through
`vjepa_scale.train.elastic` (universal DeepSpeed checkpoint, resharded EMA).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from vjepa_scale.config import save_config
from vjepa_scale.train import elastic
from vjepa_scale.train.guard import check_finite_state
from vjepa_scale.train.rng import rng_state, set_rng_state
from vjepa_scale.distributed import any_rank, barrier
from vjepa_scale.train.housekeeping import DEL_PREFIX, OLD_PREFIX, TMP_PREFIX, is_disk_error, write_error
from vjepa_scale.train.zero_compat import finish_failed_save, optimizer_load_fixes
from vjepa_scale.weights.run import (CKPT_SUBDIR, DS_TAG, checkpoint_name, list_checkpoints, rank_file, read_meta,
                                     save_order)

log = logging.getLogger("vjepa_scale.train")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: str | Path, step: int, engine, ema, cfg, rank: int, world_size: int,
                    extra: Optional[dict] = None, keep_last: int = 3) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path.

    Refuses (NonFiniteStateError, nothing written) when any rank's fp32 masters or EMA shadows hold
    inf/NaN. A full or read-only disk on any rank (`housekeeping.is_disk_error`) raises
    CheckpointWriteError on every rank, naming the step, the folder and the last good checkpoint.
    """
    check_finite_state(engine, ema, step)
    run_dir = Path(run_dir)
    root = run_dir / CKPT_SUBDIR
    name = checkpoint_name(step)
    tmp, final = root / f"{TMP_PREFIX}{name}", root / name
    err = None
    if rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            for sub in ("ema", "rng", f"ds/{DS_TAG}"):  # DeepSpeed's folders too: then only its writes can fail
                (tmp / sub).mkdir(parents=True)
        except OSError as e:
            err = _disk_error_or_raise(e)
    _fail_if_any(err, step, tmp, run_dir, rank)
    try:
        engine.save_checkpoint(str(tmp / "ds"), tag=DS_TAG, client_state={"step": step}, save_latest=False)
    except (OSError, RuntimeError) as e:
        err = _disk_error_or_raise(e)
        finish_failed_save(engine)  # the collectives the other ranks' saves still run
    if err is None:
        try:
            torch.save(ema.state_dict(), rank_file(tmp, "ema", rank))
            torch.save(rng_state(), rank_file(tmp, "rng", rank))
        except (OSError, RuntimeError) as e:
            err = _disk_error_or_raise(e)
    _fail_if_any(err, step, tmp, run_dir, rank)
    if rank == 0:
        meta = {"step": step, "world_size": world_size, "zero_stage": engine.zero_optimization_stage(),
                "complete": True, **(extra or {})}
        try:
            _commit(run_dir, tmp, final, cfg, meta, keep_last)
        except (OSError, RuntimeError) as e:
            err = _disk_error_or_raise(e)
    _fail_if_any(err, step, tmp, run_dir, rank)
    return final


def _disk_error_or_raise(e: BaseException) -> BaseException:
    if not is_disk_error(e):
        raise e
    return e


def _fail_if_any(err, step: int, tmp: Path, run_dir: Path, rank: int) -> None:
    """Collective: when a disk error happened on any rank, rank 0 removes `tmp` and all ranks raise."""
    if not any_rank(err is not None):
        return
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    raise write_error(step, tmp.parent, run_dir, err) from err


def next_save_index(run_dir: Path) -> int:
    """One more than the highest `save_index` of the run's complete checkpoints (1 for the first)."""
    done = [save_order(p) for p in list_checkpoints(run_dir)]
    return 1 + max((i for indexed, i in done if indexed), default=0)


def _commit(run_dir: Path, tmp: Path, final: Path, cfg, meta: dict, keep_last: int) -> None:
    """Rank 0, once every rank's files are in `tmp`: config + meta.json (with the next save_index),
    rename, `latest`, then prune to the `keep_last` newest saves (in save order)."""
    root = final.parent
    meta = {**meta, "save_index": next_save_index(run_dir)}
    save_config(cfg, tmp / "config.yaml")
    _write_atomic(tmp / "meta.json", json.dumps(meta, indent=1))
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step: move the old one aside first, drop it after the swap
        old = root / f"{OLD_PREFIX}{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)
    _write_atomic(root / "latest", final.name)
    prune(run_dir, keep_last)


def prune(run_dir: Path, keep_last: int) -> None:
    """Remove all but the `keep_last` newest complete saves. The new save is already committed, so a
    checkpoint that cannot be removed (permissions, a busy file on a network filesystem) is a warning,
    not a failed save; the next save tries again."""
    for old in list_checkpoints(run_dir)[:-keep_last]:
        gone = old.with_name(f"{DEL_PREFIX}{old.name}")  # vanish atomically, then delete at leisure
        try:
            os.rename(old, gone)
        except OSError as e:
            log.warning("checkpoints: could not remove the old checkpoint %s (%s); the new one is saved, "
                        "the next save tries again", old, e)
            continue
        shutil.rmtree(gone, ignore_errors=True)


def load_checkpoint(ckpt: str | Path, engine, ema, rank: int, world_size: int,
                    universal_dir: Optional[Path] = None) -> dict:
    """Collective: restore model, optimizer, EMA shards and RNG; returns the checkpoint's meta.

    A checkpoint written by another number of ranks is resharded (`elastic`); the online engine
    must then have been built with `elastic.deepspeed_overrides(ckpt, world_size)` in its config.
    `universal_dir`: where its universal form is made (default: inside the checkpoint).
    """
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    reshard = meta["world_size"] != world_size
    if reshard and not engine.load_universal_checkpoint():
        raise ValueError(f"checkpoint {ckpt} was written by {meta['world_size']} ranks; this run has "
                         f"{world_size}: build the engine with the DeepSpeed config "
                         f"{elastic.deepspeed_overrides(ckpt, world_size)} to reshard it")
    load_dir = elastic.universal_checkpoint(ckpt, rank, universal_dir) if reshard else ckpt / "ds"
    with optimizer_load_fixes(engine):  # this run's betas / eps / group weight decays, not the checkpoint's
        load_path, _ = engine.load_checkpoint(str(load_dir), tag=DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint in {ckpt / 'ds'}")
    if reshard:
        elastic.load_ema_resharded(ckpt, ema)
    else:
        ema.load_state_dict(torch.load(rank_file(ckpt, "ema", rank), map_location="cpu", weights_only=True))
    # RNG states hold numpy arrays: our own files, written by save_checkpoint. A rank the checkpoint
    # did not have keeps its seeded state.
    rng_file = rank_file(ckpt, "rng", rank)
    if rng_file.exists() or not reshard:
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    return meta
