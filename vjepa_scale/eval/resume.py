"""Resumable evaluations: the probe training's state in `run.output_dir/probe_state.pt`.

A long evaluation (streamed Kinetics-size features: hours) survives preemption as training does: SIGTERM
/ SIGUSR1 (`train.preempt`) stops every rank after the same probe step, rank 0 writes the state there
and tools/eval_probe.py exits 75 (`EXIT_PREEMPTED`); the state is also written after every epoch. The
same command then continues where it stopped, with the same result as an uninterrupted run: the
finished seeds' results, the current probe and optimizer, the epoch and step, the history and the
epoch's partial train metrics are kept, and each rank's sample order is replayed from its seed. The
features are not kept: memory mode encodes them again. A stop request during that encoding takes effect
at the first probe step.

A state belongs to one evaluation: the same config (but for the keys in `FREE_KEYS`), encoder checkpoint,
world size, precision and feature mode. On a stop, rank 0 also writes `OUTPUT/PREEMPTED` (as training
does: torchrun reports exit 1, not 75), removed when the evaluation runs again. Another one's state is refused naming the keys that differ (`run.overwrite` discards it). The
file is replaced atomically and removed once `result.json` is written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from vjepa_scale.config import ConfigError

STATE_FILE = "probe_state.pt"
# keys that may change between a stopped evaluation and its continuation
FREE_KEYS = {"run.output_dir", "run.overwrite", "run.progress_bar", "run.tensorboard", "run.num_threads",
             "run.device", "data.num_workers"}


def identity(config: dict, encoder: str, world_size: int, resolved: dict) -> dict:
    """What a state must match to be continued: the config's keys (dotted; `FREE_KEYS` left out), the
    encoder (`FrozenEncoder.source`: a run's checkpoint with its step, so a newer save of the run is another
    encoder), the world size (each rank's videos depend on it) and what `auto` keys resolved to
    (`resolved`: the compute dtype, the feature mode)."""
    flat = {f"{section}.{key}": value for section, keys in config.items() if isinstance(keys, dict)
            for key, value in keys.items()}
    flat.update({key: value for key, value in config.items() if not isinstance(value, dict)})  # model: null
    return {"config": {k: v for k, v in flat.items() if k not in FREE_KEYS}, "encoder": encoder,
            "world_size": world_size, **resolved}


def load_state(out: Path, ident: dict, overwrite: bool) -> Optional[dict]:
    """The state of this evaluation in `out` to continue from, None to start afresh (no state, or
    `overwrite`: then it is deleted, by the caller's rank 0). ConfigError for another evaluation's
    state or an unreadable one, naming the file."""
    path = out / STATE_FILE
    if not path.is_file() or overwrite:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        theirs = state["identity"]
    except Exception as e:  # noqa: BLE001 - any unreadable file: named, not a traceback
        raise ConfigError(f"{path}: cannot read the stopped evaluation's state ({type(e).__name__}: {e}); delete "
                          f"it to start over (or run.overwrite=true)") from None
    if theirs != ident:
        what = []
        for key in sorted(set(ident["config"]) | set(theirs["config"])):
            if ident["config"].get(key) != theirs["config"].get(key):
                what.append(f"{key}: {theirs['config'].get(key)!r} there, {ident['config'].get(key)!r} now")
        for key in sorted(set(ident) - {"config"}):
            if ident[key] != theirs.get(key):
                what.append(f"{key}: {theirs.get(key)!r} there, {ident[key]!r} now")
        raise ConfigError(f"{path} holds the state of another evaluation ({'; '.join(what[:6])}"
                          f"{'; ...' if len(what) > 6 else ''}): continue it with its own settings, give another "
                          f"--output (run.output_dir), or run.overwrite=true to discard it")
    return state


def save_state(out: Path, state: dict) -> None:
    """Write `state` to `out/probe_state.pt` through a temporary file and a rename (rank 0 only)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{STATE_FILE}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, out / STATE_FILE)


def clear_state(out: Path) -> None:
    (out / STATE_FILE).unlink(missing_ok=True)
