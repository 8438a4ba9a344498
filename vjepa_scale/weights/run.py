"""Our training runs on disk: checkpoint layout, discovery, and CPU consolidation of ZeRO-1/2/3 shards.

Layout of a run directory::

    run_dir/checkpoints/
        latest                      name of the newest complete checkpoint (for people and tools)
        step_00001000/
            meta.json               step, world size, micro-step (data position), save_index; written last
            config.yaml             the effective config
            ds/state/...            DeepSpeed checkpoint (model + ZeRO optimizer partitions)
            ema/rank00000.pt ...    each rank's fp32 EMA shadow shards
            rng/rank00000.pt ...    each rank's RNG states
        .tmp_step_00002000/         a save in progress (ignored; removed when the next run starts)
        .old_step_00001000/         the previous copy of a step being re-saved (during the swap only)

A checkpoint is complete once its `meta.json` says so. "Newest" means newest in save order: each
save's meta.json carries a run-wide increasing `save_index` (a run resumed from an older checkpoint
saves steps that are newer than the higher-numbered steps it abandoned); checkpoints written before
`save_index` existed order by step, before every indexed one. writing it (`vjepa_scale.train.checkpoint`)
is the trainer's business, reading it is this module's. `load_consolidated` rebuilds full fp32
weights on CPU without GPUs or a distributed launch, from any world size.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import re
import zipfile
from pathlib import Path
from typing import Iterable, Optional

import torch

from vjepa_scale.config import load_config
from vjepa_scale.extras import require_extra

CKPT_SUBDIR = "checkpoints"
DS_TAG = "state"
_NAME = re.compile(r"^step_(\d{8,})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def read_meta(ckpt: str | Path) -> dict:
    """A checkpoint's meta.json (OSError / ValueError when it is missing or unreadable)."""
    return json.loads((Path(ckpt) / "meta.json").read_text())


def rank_file(ckpt: str | Path, kind: str, rank: int) -> Path:
    """One rank's file of a per-rank part (`kind`: "ema" or "rng"): `<ckpt>/<kind>/rank00000.pt`."""
    return Path(ckpt) / kind / f"rank{rank:05d}.pt"


def rank_files(ckpt: str | Path, kind: str) -> list[Path]:
    """Every rank's file of a per-rank part (`kind`: "ema" or "rng"), in rank order."""
    return sorted((Path(ckpt) / kind).glob("rank*.pt"))


def load_ema_shards(ckpt: str | Path) -> list[dict]:
    """Every rank's EMA `state_dict()` of `ckpt`, on CPU, in rank order (empty when it has none)."""
    return [torch.load(f, map_location="cpu", weights_only=True) for f in rank_files(ckpt, "ema")]


def is_complete(ckpt: Path) -> bool:
    if not (ckpt / "meta.json").is_file():
        return False
    try:
        return bool(read_meta(ckpt).get("complete"))
    except (OSError, json.JSONDecodeError):
        return False


def save_order(ckpt: Path) -> tuple[int, int]:
    """Sort key of a complete checkpoint in save order: (1, save_index), or (0, step) for a
    checkpoint written before meta.json had `save_index` (older than any indexed one)."""
    meta = read_meta(ckpt)
    if "save_index" in meta:
        return (1, int(meta["save_index"]))
    return (0, int(meta["step"]))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first in save order (see the module docstring)."""
    root = Path(run_dir) / CKPT_SUBDIR
    if not root.is_dir():
        return []
    found = [(save_order(p), p) for p in root.iterdir() if _NAME.match(p.name) and is_complete(p)]
    return [p for _, p in sorted(found)]


def find_latest(run_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint in save order (what the `latest` marker names after a save)."""
    done = list_checkpoints(run_dir)
    return done[-1] if done else None


def is_latest_marker(p: Path) -> bool:
    """Whether `p` is a run's `checkpoints/latest` file (a line naming the newest checkpoint; a large
    file of that name elsewhere, e.g. an official checkpoint, is not)."""
    return p.name == "latest" and p.parent.name == CKPT_SUBDIR and p.is_file() and p.stat().st_size < 256


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir as given, the latest complete one of a run dir or of its `checkpoints` folder,
    or the checkpoint a `latest` marker file names; errors name the path."""
    p = Path(path).expanduser()
    if is_complete(p):
        return p
    if is_latest_marker(p):
        named = p.parent / p.read_text().strip()
        if not is_complete(named):
            raise FileNotFoundError(f"'{path}' names '{named}', which is not a complete checkpoint")
        return named
    if p.name == CKPT_SUBDIR and not (p / CKPT_SUBDIR).is_dir():  # a run's checkpoints folder
        p = p.parent
    latest = find_latest(p)
    if latest is None:
        raise FileNotFoundError(f"no complete checkpoint at '{path}' (expected a run dir with "
                                f"{CKPT_SUBDIR}/step_*/meta.json, its {CKPT_SUBDIR} dir or `latest` file, or one "
                                f"such checkpoint dir)")
    return latest


def checkpoint_problem(ckpt: Path) -> Optional[str]:
    """What makes `ckpt` unloadable, found without loading it (None: nothing found). An unreadable
    meta.json; fewer EMA, RNG or DeepSpeed optimizer files than the ranks that saved it; a file that
    is not a whole torch.save archive (a zip, whose directory sits at its end: a truncated or emptied
    file has none). Reads only each file's end, and every rank comes to the same verdict."""
    try:
        world = int(read_meta(ckpt)["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{ckpt / 'meta.json'} cannot be read ({type(e).__name__}: {e})"
    ds = ckpt / "ds" / DS_TAG
    groups = {"EMA": rank_files(ckpt, "ema"), "RNG": rank_files(ckpt, "rng"),
              "DeepSpeed optimizer": sorted(ds.glob("*optim_states.pt"))}
    for what, files in groups.items():
        if len(files) < world:
            return f"{ckpt} has {len(files)} {what} file(s) for the {world} rank(s) that saved it"
    models = sorted(ds.glob("*model_states.pt"))
    if not models:
        return f"{ds} holds no DeepSpeed model states file"
    for f in [*models, *(f for files in groups.values() for f in files)]:
        if not zipfile.is_zipfile(f):
            return f"{f} is damaged (not a whole torch.save archive: truncated, emptied or overwritten)"
    return None


def latest_loadable(run_dir: Path,
                    verb: tuple[str, str] = ("resumed", "resuming")) -> tuple[Optional[Path], list[str]]:
    """(the newest complete checkpoint of `run_dir` without a `checkpoint_problem`, notes naming the
    newer ones passed over); raises FileNotFoundError when every complete one has a problem.
    `verb`: what the caller does with it, for the messages (("loaded", "loading") for a read)."""
    problems, saved = [], list_checkpoints(run_dir)
    for ckpt in reversed(saved):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, [f"warning: checkpoint {name} cannot be {verb[0]} ({p}); {verb[1]} {ckpt.name}"
                          for name, p in problems]
        problems.append((ckpt.name, problem))
    if saved:
        raise FileNotFoundError(f"none of the {len(saved)} checkpoint(s) in {Path(run_dir) / CKPT_SUBDIR} can be "
                                f"{verb[0]}: " + "; ".join(f"{name}: {p}" for name, p in problems))
    return None, []


class DamagedCheckpointError(ValueError):
    """A checkpoint's files are incomplete or damaged (`checkpoint_problem`; the message names the file)."""

    def __init__(self, ckpt: Path, problem: str, verb: str = "loaded"):
        super().__init__(f"checkpoint {ckpt} cannot be {verb}: {problem}")
        self.problem = problem


def loadable_checkpoint(path: str | Path,
                        verb: tuple[str, str] = ("loaded", "loading")) -> tuple[Path, list[str]]:
    """(`resolve_checkpoint`, notes), checked by `checkpoint_problem` before anything is read: a damaged
    checkpoint given as such (or by a `latest` file) is a DamagedCheckpointError naming the file; a run dir
    or its `checkpoints` folder gives its newest undamaged checkpoint, with a note naming each newer one
    passed over (FileNotFoundError when none is undamaged). `verb`: as `latest_loadable` takes it."""
    p = Path(path).expanduser()
    ckpt = resolve_checkpoint(p)
    problem = checkpoint_problem(ckpt)
    if problem is None:
        return ckpt, []
    if is_complete(p) or is_latest_marker(p):
        raise DamagedCheckpointError(ckpt, problem, verb[0])
    return latest_loadable(ckpt.parent.parent, verb=verb)


def unshard(shards: list[torch.Tensor], shape: Iterable[int]) -> torch.Tensor:
    """Inverse of `train.zero_compat.partition_slice` over all ranks' flat slices (rank order) -> tensor of `shape`."""
    shape = tuple(shape)
    numel = 1
    for s in shape:
        numel *= s
    return torch.cat([s.reshape(-1) for s in shards])[:numel].reshape(shape)


def consolidate_shards(shards: list[dict]) -> dict[str, torch.Tensor]:
    """Full fp32 tensors from every rank's EMA `state_dict()` (CPU; no process group needed)."""
    shards = sorted(shards, key=lambda d: d["rank"])
    if len(shards) != shards[0]["world_size"]:
        raise ValueError(f"need {shards[0]['world_size']} EMA shards, got {len(shards)}")
    out = {}
    layout = shards[0].get("layout", "zero3" if shards[0]["partitioned"] else "replicated")
    for name, shape in shards[0]["shapes"].items():
        if layout == "zero3":
            out[name] = unshard([d["shadows"][name] for d in shards], shape)
        elif layout == "fragments":  # ZeRO-1/2: each rank's (start, numel) of the flattened tensor
            flat = torch.zeros(math.prod(shape), dtype=torch.float32)
            covered = 0
            for d in shards:
                start, numel = d["fragments"][name]
                flat[start:start + numel] = d["shadows"][name]
                covered += numel
            if covered != flat.numel():
                raise ValueError(f"EMA shards cover {covered} of the {flat.numel()} elements of {name}")
            out[name] = flat.reshape(shape)
        else:
            out[name] = shards[0]["shadows"][name].reshape(shape).clone()
    return out


def load_consolidated(path: str | Path, which: str = "target") -> dict:
    """Full fp32 weights from a checkpoint, on CPU, without GPUs or a distributed launch.

    path: a run dir (its newest loadable checkpoint), its `checkpoints` dir or `latest` file, or one
    checkpoint dir (`loadable_checkpoint`: a damaged one is a DamagedCheckpointError naming the file).
    which: "target" (EMA encoder, the one evaluated and exported) or "online" (trained encoder).
    Returns dict(config=Config, step=int, encoder=state_dict of VisionTransformer3D,
    predictor=state_dict of Predictor, notes=[warnings naming damaged newer checkpoints passed over]).
    Without DeepSpeed: MissingExtraError.
    """
    require_extra("deepspeed", "train", "reading a training checkpoint")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if which not in ("target", "online"):
        raise ValueError(f"which must be 'target' or 'online', got {which!r}")
    ckpt, notes = loadable_checkpoint(path)
    meta = read_meta(ckpt)
    cfg = load_config(ckpt / "config.yaml")
    with _quiet_zero_to_fp32():
        online = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "ds"), tag=DS_TAG)
    online = {k: v.float().clone() for k, v in online.items()}
    encoder = {k[len("encoder."):]: v for k, v in online.items() if k.startswith("encoder.")}
    predictor = {k[len("predictor."):]: v for k, v in online.items() if k.startswith("predictor.")}
    if which == "target":
        target = consolidate_shards(load_ema_shards(ckpt))
        missing = set(encoder) - set(target)
        for k in missing:  # buffers saved with the model (not trained, identical in both)
            target[k] = encoder[k]
        encoder = target
    return {"config": cfg, "step": int(meta["step"]), "encoder": encoder, "predictor": predictor, "notes": notes}


@contextlib.contextmanager
def _quiet_zero_to_fp32():
    """DeepSpeed's consolidation without its chatter: its prints ("Processing zero checkpoint ...",
    "Detected checkpoint of type ...") are swallowed, its logger says only errors and its tqdm bars
    ("Loading checkpoint shards", "Gathering sharded weights") are disabled; errors still raise."""
    from deepspeed.utils import logger as ds_logger
    from deepspeed.utils import zero_to_fp32

    level, bar = ds_logger.level, getattr(zero_to_fp32, "tqdm", None)  # a release without it: bars stay
    ds_logger.setLevel(logging.ERROR)
    if bar is not None:
        zero_to_fp32.tqdm = functools.partial(bar, disable=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ds_logger.setLevel(level)
        if bar is not None:
            zero_to_fp32.tqdm = bar
