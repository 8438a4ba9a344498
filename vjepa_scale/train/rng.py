"""Random number generators of a training process: per-rank seeding and draws kept off the stream.

The models are built from `train.seed` alone (identical on every rank, `engine.build_models`); then
`seed_everything(train.seed, rank)` seeds torch, numpy and python with `rank_seed`, a different
stream per rank. Checkpoints save and restore these states (`train.checkpoint.rng_state`), so a
resumed run's generators equal the uninterrupted run's at the same step, as long as setup work
that happens in one run but not the other (building the data iterator after the restore) draws
nothing: `untouched()`.
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


@contextlib.contextmanager
def untouched():
    """Run a block without moving the global torch (CPU), numpy and python generators: e.g. a
    DataLoader iterator draws its base seed from torch's generator when it is created."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)
