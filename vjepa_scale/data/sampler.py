"""Deterministic, resumable per-rank sampling of the sample stream."""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler):
    """Yields, for each training step from `start_step`, this rank's batch as [(index, step), ...].

    The global stream is an endless sequence of epochs, each a seeded permutation of the
    `num_samples` indices. Step s uses stream positions [s*W*B, (s+1)*W*B); rank r takes the r-th
    slice of B. Ranks therefore see disjoint samples that together cover each epoch, and resuming
    at step s reproduces exactly the batches an uninterrupted run would have drawn.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, start_step: int = 0, num_steps: Optional[int] = None):
        if num_samples <= 0:
            raise ValueError("StepBatchSampler: the dataset is empty")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_step = start_step
        self.num_steps = num_steps
        self._perm_epoch = -1
        self._perm: Optional[torch.Tensor] = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_samples, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def batch_indices(self, step: int) -> list[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        out = []
        for pos in range(first, first + self.batch_size):
            epoch, offset = divmod(pos, self.num_samples)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def epoch_of(self, step: int) -> int:
        return (step * self.world_size * self.batch_size) // self.num_samples

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.num_steps is None or step < self.start_step + self.num_steps:
            yield [(i, step) for i in self.batch_indices(step)]
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("StepBatchSampler is endless unless num_steps is given")
        return self.num_steps
