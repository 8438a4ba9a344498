"""Elastic resume: a checkpoint written on N ranks continues on M ranks.

What depends on the world size is resharded at load (`train.checkpoint.load_checkpoint` calls in):
- DeepSpeed's ZeRO state (weights, fp32 masters, Adam moments): rank 0 converts the checkpoint's
  `ds/<tag>` once into DeepSpeed's universal format, `<ckpt>/universal/<tag>` (DeepSpeed's converter in
  a child interpreter with a pool of up to 8 workers: `zero_compat.convert_to_universal`; written aside, then
  renamed; kept for later resumes, pruned with the checkpoint; the other ranks poll for it rather
  than wait in a collective that could time out), and every rank loads its new partition from it.
  Another run's checkpoint (`train.init_from_optimizer`) is converted into this run's folder instead
  and removed after the load: the source may be read-only or shared by several runs. DeepSpeed reads universal checkpoints only when the engine was built with
  `"checkpoint": {"load_universal": true}`: the trainer merges `deepspeed_overrides(ckpt, world)`
  into its DeepSpeed config.
- The EMA shadow: every rank reads all N shards, consolidates them (`weights.consolidate_shards`)
  and keeps its own part (`ShardedEMA.load_full`: its ZeRO-3 slice, or under ZeRO-1/2 the fragments
  whose masters it now holds). Transient CPU memory: the full fp32
  target encoder per rank.
- RNG: ranks the checkpoint had get their state back; new ranks keep their seeded state (masks
  and sampling are pure functions of the step and do not draw from it).
- The data position, kept in global samples: meta.json has `samples_seen` (clips consumed by the
  saved step) and `global_batch_size`. `data_position` turns them into the sampler's
  `sample_offset`: 0 when the global batch is unchanged (`data.global_batch_size` set keeps it
  across world sizes), otherwise the run continues at the saved sample, so no clip is repeated or
  skipped, and the trainer logs that the global batch changed.

World-size invariance of the numbers (what makes a resumed loss curve continue the straight one
within fp32 reduction-order noise) comes from elsewhere: the sample order (`data.sampler`), the
masks keyed per global slot (`vjepa_scale.masks`) and the loss as a global per-mask-type token
mean (`models.jepa.global_type_norm`); all three need the same micro-batch over all ranks, i.e. an
unchanged global batch and `optim.grad_accum`. `mask.truncate: batch_min` truncates per rank and
is not world-size invariant.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import torch

from vjepa_scale.distributed import barrier
from vjepa_scale.train.zero_compat import convert_to_universal
from vjepa_scale.weights.run import DS_TAG, consolidate_shards, load_ema_shards, read_meta

UNIVERSAL_SUBDIR = "universal"


def is_elastic(ckpt: str | Path, world_size: int) -> bool:
    """True when the checkpoint was written by another number of ranks than `world_size`."""
    return int(read_meta(ckpt)["world_size"]) != world_size


def deepspeed_overrides(ckpt: Optional[str | Path], world_size: int) -> dict:
    """DeepSpeed config keys the online engine needs to resume `ckpt` on `world_size` ranks."""
    if ckpt is not None and is_elastic(ckpt, world_size):
        return {"checkpoint": {"load_universal": True}}
    return {}


def for_resume(ds_config: dict, ckpt: Optional[str | Path], world_size: int) -> dict:
    """A copy of the online engine's DeepSpeed config with `deepspeed_overrides` merged in."""
    out = copy.deepcopy(ds_config)
    for key, value in deepspeed_overrides(ckpt, world_size).items():
        out.setdefault(key, {}).update(value)
    return out


INIT_UNIVERSAL = ".init_universal"  # in a run folder: the resharded `train.init_from_optimizer` source
FAILED_SUFFIX = ".failed"  # beside the universal folder: rank 0's conversion error, for the waiting ranks


def universal_checkpoint(ckpt: str | Path, rank: int, out: Optional[str | Path] = None,
                         poll_s: float = 1.0) -> Path:
    """Collective: the universal form of `ckpt`'s DeepSpeed state, converted by rank 0 if missing.

    `out`: where it goes (default `<ckpt>/universal`, kept for later resumes and pruned with the
    checkpoint; the trainer passes a folder of its own run for a checkpoint of another run, which
    may be read-only or shared). Returns the load dir for `engine.load_checkpoint(load_dir, tag=DS_TAG)`.

    The conversion of a large model can outlast the process group's timeout, so the other ranks do not
    wait in a collective: they poll the shared filesystem for the finished folder (renamed into place
    when complete) or for rank 0's error file, and raise that error too. A rank 0 that dies is seen by
    the launcher, which ends every rank.
    """
    ckpt = Path(ckpt)
    out = Path(out) if out is not None else ckpt / UNIVERSAL_SUBDIR
    failed = out.with_name(out.name + FAILED_SUFFIX)
    if rank == 0 and not (out / DS_TAG).is_dir():
        tmp = out.with_name(f".tmp_{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        failed.unlink(missing_ok=True)
        try:
            convert_to_universal(str(ckpt / "ds" / DS_TAG), str(tmp / DS_TAG))
            os.rename(tmp, out)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            why = f"converting {ckpt} to DeepSpeed's universal format in {out} failed: {type(e).__name__}: {e}"
            try:
                failed.write_text(why)
            except OSError:
                pass  # the others then see neither file and wait for the launcher to end them
            raise RuntimeError(why) from e
    while rank != 0 and not (out / DS_TAG).is_dir():
        if failed.is_file():
            raise RuntimeError(f"rank 0: {failed.read_text()}")
        time.sleep(poll_s)
    barrier()
    if rank == 0:
        failed.unlink(missing_ok=True)
    return out


def remove_after_load(folder: Path, rank: int) -> None:
    """Collective: rank 0 removes `folder` (a universal form made only for one load) once every rank loaded."""
    barrier()
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)


@torch.no_grad()
def load_ema_resharded(ckpt: str | Path, ema) -> None:
    """Every EMA shard of `ckpt` -> full fp32 shadows -> this rank's slice in `ema` (any world size)."""
    shards = load_ema_shards(ckpt)
    if not shards:
        raise FileNotFoundError(f"no EMA shards in {Path(ckpt) / 'ema'}")
    ema.load_full(consolidate_shards(shards))


def samples_seen(meta: dict, saved_global_batch: Optional[int] = None) -> int:
    """Clips consumed by the checkpoint's step over all ranks (older checkpoints: step x global batch)."""
    if "samples_seen" in meta:
        return int(meta["samples_seen"])
    g = meta.get("global_batch_size", saved_global_batch)
    if g is None:
        raise ValueError("checkpoint meta.json has neither samples_seen nor global_batch_size")
    return int(meta["step"]) * int(g)


def data_position(ckpt: str | Path, meta: dict, global_batch: int) -> tuple[int, Optional[str]]:
    """(sampler `sample_offset`, a note to log or None) to continue `ckpt` with `global_batch` clips per step.

    The sampler's step s starts at stream position sample_offset + s x global_batch; the resumed
    step must start at the checkpoint's `samples_seen`.
    """
    step = int(meta["step"])
    saved_g = meta.get("global_batch_size")
    if "samples_seen" not in meta and saved_g is None:
        from vjepa_scale.config import load_config

        saved_g = load_config(Path(ckpt) / "config.yaml").data.global_batch_size
    seen = samples_seen(meta, saved_g)
    offset = seen - step * global_batch
    if offset == 0:
        return 0, None
    return offset, (f"the global batch changed from {saved_g} to {global_batch} clips per step: continuing "
                    f"the sample stream at clip {seen} (where step {step} of the checkpoint stopped), so no "
                    f"clip is repeated or skipped; set data.global_batch_size to keep it across world sizes")
