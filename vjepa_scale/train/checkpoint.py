"""Atomic, resumable checkpoints inside a live engine: DeepSpeed ZeRO state + EMA shards + RNG.

The on-disk layout, discovery (`find_latest`, `list_checkpoints`) and the CPU-only consolidation
(`load_consolidated`) live in `vjepa_scale.weights.run`. A save writes everything into
`.tmp_<name>`; then rank 0 commits (`_commit`): it writes `config.yaml` and `meta.json`, renames the
folder to its final name, replaces `latest` and prunes to `train.keep_last`. A save killed at any
point before the rename leaves the previous checkpoint as the latest complete one.

`load_checkpoint` restores at the saved world size directly, and at another one through
`vjepa_scale.train.elastic` (universal DeepSpeed checkpoint, resharded EMA).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vjepa_scale.config import save_config
from vjepa_scale.train import elastic
from vjepa_scale.train.zero_compat import universal_load_fixes
from vjepa_scale.weights.run import CKPT_SUBDIR, DS_TAG, checkpoint_name, list_checkpoints


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


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


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, engine, ema, cfg, rank: int, world_size: int,
                    extra: Optional[dict] = None, keep_last: int = 3) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path."""
    root = Path(run_dir) / CKPT_SUBDIR
    name = checkpoint_name(step)
    tmp, final = root / f".tmp_{name}", root / name
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp_*"):
            shutil.rmtree(stale, ignore_errors=True)
        for sub in ("ema", "rng"):
            (tmp / sub).mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp / "ds"), tag=DS_TAG, client_state={"step": step}, save_latest=False)
    torch.save(ema.state_dict(), tmp / "ema" / f"rank{rank:05d}.pt")
    torch.save(rng_state(), tmp / "rng" / f"rank{rank:05d}.pt")
    _barrier()
    if rank == 0:
        meta = {"step": step, "world_size": world_size, "complete": True, **(extra or {})}
        _commit(Path(run_dir), tmp, final, cfg, meta, keep_last)
    _barrier()
    return final


def _commit(run_dir: Path, tmp: Path, final: Path, cfg, meta: dict, keep_last: int) -> None:
    """Rank 0, once every rank's files are in `tmp`: config + meta.json, rename, `latest`, prune."""
    root = final.parent
    save_config(cfg, tmp / "config.yaml")
    _write_atomic(tmp / "meta.json", json.dumps(meta, indent=1))
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step: move the old one aside first, drop it after the swap
        old = root / f".old_{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)
    _write_atomic(root / "latest", final.name)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt: str | Path, engine, ema, rank: int, world_size: int) -> dict:
    """Collective: restore model, optimizer, EMA shards and RNG; returns the checkpoint's meta.

    A checkpoint written by another number of ranks is resharded (`elastic`); the online engine
    must then have been built with `elastic.deepspeed_overrides(ckpt, world_size)` in its config.
    """
    ckpt = Path(ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    reshard = meta["world_size"] != world_size
    if reshard and not engine.load_universal_checkpoint():
        raise ValueError(f"checkpoint {ckpt} was written by {meta['world_size']} ranks; this run has "
                         f"{world_size}: build the engine with the DeepSpeed config "
                         f"{elastic.deepspeed_overrides(ckpt, world_size)} to reshard it")
    if reshard:
        load_dir = elastic.universal_checkpoint(ckpt, rank)
        with universal_load_fixes(engine):
            load_path, _ = engine.load_checkpoint(str(load_dir), tag=DS_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
    else:
        load_path, _ = engine.load_checkpoint(str(ckpt / "ds"), tag=DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint in {ckpt / 'ds'}")
    if reshard:
        elastic.load_ema_resharded(ckpt, ema)
    else:
        ema.load_state_dict(torch.load(ckpt / "ema" / f"rank{rank:05d}.pt", map_location="cpu", weights_only=True))
    # RNG states hold numpy arrays: our own files, written by save_checkpoint. A rank the checkpoint
    # did not have keeps its seeded state.
    rng_file = ckpt / "rng" / f"rank{rank:05d}.pt"
    if rng_file.exists() or not reshard:
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    return meta
