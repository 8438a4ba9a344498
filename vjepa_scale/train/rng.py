"""Random number generators of a training process: per-rank seeding and draws kept off the stream.

The models are built from `train.seed` alone (identical on every rank, `engine.build_models`); then
`seed_everything(train.seed, rank)` seeds torch, numpy and python with `rank_seed`, a different
stream per rank. Checkpoints save and restore these states (`rng_state` / `set_rng_state`, one
file per rank: `train.checkpoint`), so a resumed run's generators equal the uninterrupted run's at
the same step, as long as setup work that happens in one run but not the other (building the data
iterator after the restore) draws nothing: `untouched()`.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def rank_seed(seed: int, rank: int) -> int:
    """The seed of `rank`'s generators: distinct per rank, fits numpy's 32 bits."""
    return (int(seed) * 1_000_003 + 7_919 * int(rank) + 1) % 2 ** 32


def seed_everything(seed: int, rank: int) -> int:
    """Seed torch (CPU and CUDA), numpy and python for `rank`; returns the seed used."""
    s = rank_seed(seed, rank)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
    return s


def rng_state() -> dict:
    """This process's torch (CPU, and CUDA when present), numpy and python generator states."""
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    """Restore an `rng_state()` (its CUDA state only where CUDA is present)."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


@contextlib.contextmanager
def untouched():
    """Run a block without moving the global torch (CPU), numpy and python generators: e.g. a
    DataLoader iterator draws its base seed from torch's generator when it is created."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)
