"""Checkpoint-folder housekeeping: leftovers, room to save, disk errors, and the resume config check.

- `prepare_checkpoint_folder(cfg, run_dir, rank)` (collective, Trainer init, before anything
  reads checkpoints): rank 0 removes what dead saves left (`clean_leftovers`), checks the folder is
  writable (`check_writable`) and, with `train.check_free_disk`, that it has room for one more
  checkpoint (`checkpoint_bytes`, `check_free_space`). Every rank raises the same
  `CheckpointFolderError` when rank 0 finds a problem.
- `is_disk_error(exc)`: ENOSPC / EROFS / EDQUOT / EACCES, or torch's failed stream write
  ("unexpected pos", "failed writing", or a bare "iostream error" for a small object), which is how a
  full disk looks from `torch.save`.
- `check_resume_config(ckpt, cfg)`: refuses (`ResumeConfigError`) to resume a checkpoint whose saved
  config.yaml has another model (architecture keys, number of mask types), naming the keys; other
  differences (data, optim, train, ...) come back as a note for the log.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from vjepa_scale.config import Config, ConfigError, ModelConfig, from_dict, resolve_vit_size
from vjepa_scale.distributed import from_rank0
from vjepa_scale.weights.run import CKPT_SUBDIR, find_latest, is_complete, read_meta

TMP_PREFIX, OLD_PREFIX, DEL_PREFIX = ".tmp_", ".old_", ".del_"
DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)


class CheckpointFolderError(RuntimeError):
    """The checkpoint folder cannot take a checkpoint (read-only, not enough free space)."""


class CheckpointWriteError(RuntimeError):
    """A save failed because the disk is full or read-only; the last good checkpoint is untouched."""


class ResumeConfigError(ConfigError):
    """The checkpoint to resume was trained with another model; the message names the keys."""


# --------------------------------------------------------------------------------------------------
# Leftovers of dead saves
# --------------------------------------------------------------------------------------------------

def clean_leftovers(root: Path) -> list[str]:
    """Remove `.tmp_*` (a save that never committed) and `.del_*` (a prune that died) folders, and
    settle `.old_X` (a re-save of X moved the old copy aside): restored as X when X is missing (the
    save died between its two renames), else removed. Returns one log line per action."""
    notes = []
    if not root.is_dir():
        return notes
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        if p.name.startswith((TMP_PREFIX, DEL_PREFIX)):
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"checkpoints: removed the leftover {p.name} of an interrupted save")
        elif p.name.startswith(OLD_PREFIX):
            final = root / p.name[len(OLD_PREFIX):]
            if not final.exists() and is_complete(p):
                os.rename(p, final)
                notes.append(f"checkpoints: restored {final.name} from {p.name} (a re-save died between "
                             f"its two renames)")
            else:
                shutil.rmtree(p, ignore_errors=True)
                notes.append(f"checkpoints: removed the leftover {p.name} of an interrupted re-save")
    return notes


# --------------------------------------------------------------------------------------------------
# Room to save
# --------------------------------------------------------------------------------------------------

def check_writable(folder: Path) -> None:
    """Create the folder if needed and create/remove a probe file in it; CheckpointFolderError if not."""
    probe = folder / f".probe_{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise CheckpointFolderError(f"checkpoint folder {folder} is not writable ({e.strerror or e}); "
                                    f"give a writable train.output_dir (or --output-dir)") from e


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def checkpoint_bytes(cfg: Config, run_dir: Path) -> tuple[int, str]:
    """(bytes one checkpoint takes, how that was found): the size of the newest complete checkpoint
    when there is one, else an estimate from the parameter counts (P online, E encoder; b bytes of
    the compute dtype): fp32 masters + two Adam moments + model weights P*(12 + b), EMA shadow E*4,
    summed over all ranks (ZeRO shards add up to the whole)."""
    last = find_latest(run_dir)
    if last is not None:
        return dir_bytes(last), f"size of {last.name}"
    from vjepa_scale.distributed import compute_dtype
    from vjepa_scale.train.memory import param_counts

    n = param_counts(cfg)
    b = torch.finfo(compute_dtype(cfg.train.precision)).bits // 8
    return n.online * (12 + b) + n.encoder * 4, "estimated from the parameter counts"


def check_free_space(folder: Path, needed: int, how: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CheckpointFolderError(
            f"checkpoint folder {folder} has {free:,} bytes free but one checkpoint needs {needed:,} bytes "
            f"({how}); free some space, give another train.output_dir, or set train.check_free_disk: false")


def prepare_checkpoint_folder(cfg: Config, run_dir: str | Path, rank: int) -> list[str]:
    """Collective. Rank 0 cleans leftovers and checks the checkpoint folder can take a checkpoint;
    every rank raises CheckpointFolderError if not. Returns rank 0's log lines (empty elsewhere).
    Acts as a barrier: no rank reads checkpoints before rank 0 has settled the folder."""
    root = Path(run_dir) / CKPT_SUBDIR
    notes: list[str] = []
    problem: Optional[str] = None
    if rank == 0:
        try:
            notes = clean_leftovers(root)
            check_writable(root)
            if cfg.train.check_free_disk:
                check_free_space(root, *checkpoint_bytes(cfg, Path(run_dir)))
        except CheckpointFolderError as e:
            problem = str(e)
        except OSError as e:
            problem = f"checkpoint folder {root}: {e}"
    problem = from_rank0(problem)
    if problem is not None:
        raise CheckpointFolderError(problem)
    return notes


# --------------------------------------------------------------------------------------------------
# Disk errors while saving
# --------------------------------------------------------------------------------------------------

# torch.save's C++ stream writer on a failed write: a large object ends in "unexpected pos" (the
# zip trailer's check), a small one (an RNG state) only in the stream's own "iostream error".
STREAM_WRITE_ERRORS = ("unexpected pos", "failed writing", "iostream error")


def is_disk_error(exc: BaseException) -> bool:
    """A full disk / quota / read-only folder, as an OSError or as torch's failed stream write."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return True
        if isinstance(exc, RuntimeError) and any(m in str(exc) for m in STREAM_WRITE_ERRORS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_error(step: int, folder: Path, run_dir: Path, exc: Optional[BaseException]) -> CheckpointWriteError:
    last = find_latest(run_dir)
    what = f"disk full / read-only ({exc})" if exc is not None else "another rank hit a full / read-only disk"
    return CheckpointWriteError(
        f"{what} while saving checkpoint step {step} to {folder}; the partial save was removed and the "
        f"last good checkpoint is still {last if last is not None else '(none)'}. Free space or give a "
        f"writable train.output_dir, then resume with --resume auto")


# --------------------------------------------------------------------------------------------------
# Resuming with another config
# --------------------------------------------------------------------------------------------------

# model.* keys that neither change parameter shapes nor what the weights mean.
MODEL_RUNTIME_KEYS = ("activation_checkpointing", "attention_backend", "sdpa_backend", "loss_exp", "compile")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _model_view(model: dict) -> dict[str, Any]:
    """Architecture keys of a `model` section, with the named size resolved to width/depth/heads/mlp."""
    m = dict(model)
    try:
        dims = resolve_vit_size(from_dict(ModelConfig, model, "model"))
        m.update(width=dims.width, depth=dims.depth, num_heads=dims.num_heads, mlp_ratio=dims.mlp_ratio)
        m.pop("size", None)
    except ConfigError:
        pass  # a config this version cannot read: compare the raw keys
    m.setdefault("mask_tokens", "per_type")  # runs saved before the key trained one token per mask type
    return {f"model.{k}": v for k, v in m.items() if k not in MODEL_RUNTIME_KEYS}


def check_fresh_run_dir(run_dir: str | Path) -> None:
    """A run started without --resume in a folder with complete checkpoints would train from step 0
    and overwrite that run's records (metrics.jsonl, the newest save): ConfigError naming the way on."""
    latest = find_latest(run_dir)
    if latest is not None:
        raise ConfigError(f"train.output_dir '{run_dir}' holds the checkpoints of an earlier run (latest: "
                          f"{latest.name}); continue it with --resume auto, or start a new run in another "
                          f"--output-dir (or delete that folder)")


def saved_zero_stage(ckpt: Path) -> Optional[int]:
    """The ZeRO stage checkpoint `ckpt` was saved under: its meta.json's, else its config.yaml's."""
    meta = read_meta(ckpt) if (ckpt / "meta.json").is_file() else {}
    if "zero_stage" in meta:
        return int(meta["zero_stage"])
    path = ckpt / "config.yaml"
    stage = ((yaml.safe_load(path.read_text()) or {}).get("zero") or {}).get("stage") if path.is_file() else None
    return None if stage is None else int(stage)


def check_zero_stage(ckpt: Path, stage: int, init_from: bool = False) -> None:
    """ZeRO-3 partitions the weights and keeps its optimizer state in another layout than ZeRO-1/2,
    which DeepSpeed's loaders (its universal format included) cannot move between: ResumeConfigError
    when `ckpt` would be loaded under ZeRO-`stage` across that line, on resume or (`init_from`) as
    `train.init_from_optimizer`'s source. ZeRO-1 <-> ZeRO-2 pass."""
    saved = saved_zero_stage(ckpt)
    if saved is None or (saved == 3) == (stage == 3):
        return
    why = (f"it was saved under zero.stage={saved}, and DeepSpeed cannot load a ZeRO-{saved} optimizer state "
           f"into ZeRO-{stage}")
    if init_from:
        raise ResumeConfigError(
            f"train.init_from_optimizer: cannot load the optimizer state of {ckpt} with zero.stage={stage}: {why}. "
            f"Train with zero.stage={saved}, or set train.init_from_optimizer: false (weights and EMA target only; "
            f"the optimizer starts afresh)")
    raise ResumeConfigError(
        f"cannot resume {ckpt} with zero.stage={stage}: {why}. Continue it with zero.stage={saved}, or start a "
        f"new run from its weights and EMA target with train.init_from={ckpt} (the optimizer starts afresh)")


def compare_configs(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(model keys that differ, other keys that differ) between two `Config.to_dict()` dicts, each
    as 'key: saved -> current'. The number of mask types is a model key (one predictor token each) unless
    both use `model.mask_tokens: shared` (one token whatever the count)."""
    model_s, model_c = _model_view(saved.get("model", {})), _model_view(current.get("model", {}))
    if not model_s["model.mask_tokens"] == model_c["model.mask_tokens"] == "shared":
        model_s["mask.types (count)"] = len(saved.get("mask", {}).get("types", []))
        model_c["mask.types (count)"] = len(current.get("mask", {}).get("types", []))
    rest_s = {k: v for k, v in _flat(saved).items() if not k.startswith("model.")}
    rest_c = {k: v for k, v in _flat(current).items() if not k.startswith("model.")}
    for k in MODEL_RUNTIME_KEYS:
        rest_s[f"model.{k}"] = saved.get("model", {}).get(k)
        rest_c[f"model.{k}"] = current.get("model", {}).get(k)

    def diff(a: dict, b: dict) -> list[str]:
        return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    return diff(model_s, model_c), diff(rest_s, rest_c)


def check_resume_config(ckpt: Path, cfg: Config) -> Optional[str]:
    """Compare the checkpoint's config.yaml with `cfg`: ResumeConfigError naming the model keys that
    differ, or a move between ZeRO-3 and ZeRO-1/2 (`check_zero_stage`); else a note listing the other
    keys that differ (None when nothing does)."""
    check_zero_stage(ckpt, cfg.zero.stage)
    path = ckpt / "config.yaml"
    if not path.is_file():
        return f"note: {ckpt} has no config.yaml; resuming without comparing configs"
    saved = yaml.safe_load(path.read_text()) or {}
    model, other = compare_configs(saved, cfg.to_dict())
    if model:
        raise ResumeConfigError(
            f"cannot resume {ckpt}: it was trained with another model ({'; '.join(model)}). Resume with the "
            f"checkpoint's model settings (see {path}), or start a new run (train.init_from can load "
            f"compatible weights)")
    if other:
        return f"note: resuming {ckpt.name} with changed settings: {'; '.join(other)}"
    return None
