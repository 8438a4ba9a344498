"""Deterministic, resumable per-rank sampling of the sample stream.

`StepBatchSampler`: fixed clips per rank and step; `BudgetStepSampler`: filled to a token budget
(`data.tokens_per_batch`); `ShapePerStepSampler`: one clip shape per step (`data.mixing: per_step`).
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

from vjepa_scale.config import window_clips
from vjepa_scale.data.index import dataset_at, dataset_starts


class MixturePlan:
    """Per-epoch order of a weighted mixture of datasets (concatenated, sizes `sizes`).

    Epoch e holds sum(sizes) draws; dataset d gets k_d of them, k_d proportional to its weight
    (largest remainders, so the counts sum exactly). Dataset d's draws come from its own endless
    stream of seeded permutations of its indices, epoch e taking stream positions [e*k_d, (e+1)*k_d),
    so a dataset repeats a sample only after all its samples were drawn. The epoch's draws are then
    shuffled together. Everything is a pure function of (seed, epoch): deterministic and resumable.
    Weights proportional to sizes give each epoch an exact permutation of all samples.
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int = 0):
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"MixturePlan: every dataset needs samples, got sizes {sizes}")
        if len(weights) != len(sizes) or min(weights) <= 0:
            raise ValueError(f"MixturePlan: need one positive weight per dataset, got {weights}")
        self.sizes = list(sizes)
        self.offsets = [sum(sizes[:d]) for d in range(len(sizes))]
        self.total = sum(sizes)
        self.seed = seed
        share = [self.total * w / sum(weights) for w in weights]
        counts = [int(x) for x in share]
        order = sorted(range(len(sizes)), key=lambda d: (-(share[d] - counts[d]), d))
        for d in order[: self.total - sum(counts)]:
            counts[d] += 1
        self.counts = counts

    def _dataset_stream(self, d: int, start: int, length: int) -> torch.Tensor:
        n = self.sizes[d]
        out = []
        pos = start
        while pos < start + length:
            cycle, off = divmod(pos, n)
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + d) * 7_919 + cycle)
            take = min(n - off, start + length - pos)
            out.append(torch.randperm(n, generator=g)[off:off + take])
            pos += take
        return torch.cat(out) + self.offsets[d] if out else torch.empty(0, dtype=torch.long)

    def epoch(self, epoch: int) -> torch.Tensor:
        """Global indices of epoch `epoch` in stream order (length sum(sizes))."""
        draws = torch.cat([self._dataset_stream(d, epoch * k, k) for d, k in enumerate(self.counts) if k])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return draws[torch.randperm(len(draws), generator=g)]


class StepBatchSampler(Sampler):
    """Yields, for each training step from `start_step`, this rank's batch as [(index, step, slot), ...].

    `slot` is the sample's global slot in the micro-step (rank r's are r*B .. r*B + B - 1, as for
    the masks); with the step it seeds the replacement of an unusable entry (`skips.substitute`).

    The global stream is an endless sequence of epochs, each a seeded permutation of the
    `num_samples` indices (or, with `mixture`, that MixturePlan's weighted epoch order). Step s
    uses stream positions [o + s*W*B, o + (s+1)*W*B) with o = `sample_offset` (0 unless a run
    resumed at a sample position that is not a multiple of its step size: see
    `vjepa_scale.train.elastic`); rank r takes the r-th slice of B. Ranks therefore see disjoint
    samples that together cover each epoch, resuming at step s reproduces exactly the batches an
    uninterrupted run would have drawn, and so does resuming on another number of ranks when
    W*B (the micro-batch over all ranks) stays the same.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, start_step: int = 0, num_steps: Optional[int] = None,
                 mixture: Optional[MixturePlan] = None, sample_offset: int = 0):
        if num_samples <= 0:
            raise ValueError("StepBatchSampler: the dataset is empty")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_step = start_step
        self.num_steps = num_steps
        self.sample_offset = sample_offset
        if start_step * world_size * batch_size + sample_offset < 0:
            raise ValueError(f"StepBatchSampler: sample_offset {sample_offset} puts step {start_step} before the stream start")
        if mixture is not None and mixture.total != num_samples:
            raise ValueError(f"StepBatchSampler: mixture covers {mixture.total} samples, dataset has {num_samples}")
        self.mixture = mixture
        self._perm_epoch = -1
        self._perm: Optional[torch.Tensor] = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            if self.mixture is not None:
                self._perm = self.mixture.epoch(epoch)
            else:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.num_samples, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def batch_indices(self, step: int) -> list[int]:
        first = self.sample_offset + (step * self.world_size + self.rank) * self.batch_size
        out = []
        for pos in range(first, first + self.batch_size):
            epoch, offset = divmod(pos, self.num_samples)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def epoch_of(self, step: int) -> int:
        return (self.sample_offset + step * self.world_size * self.batch_size) // self.num_samples

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.num_steps is None or step < self.start_step + self.num_steps:
            first = self.rank * self.batch_size
            yield [(i, step, first + j) for j, i in enumerate(self.batch_indices(step))]
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("StepBatchSampler is endless unless num_steps is given")
        return self.num_steps


class TokenBudget:
    """Full-clip tokens of each index entry (by its dataset's shape) and the prefix of a window that
    fits `budget` (`data.tokens_per_batch`; at least one clip)."""

    def __init__(self, sizes: list[int], tokens_per_dataset: list[int], budget: int):
        self.starts = dataset_starts(sizes)
        self.tokens_per_dataset = list(tokens_per_dataset)
        self.budget = int(budget)

    def tokens(self, index: int) -> int:
        return self.tokens_per_dataset[dataset_at(self.starts, index)]

    def fit(self, indices: list[int]) -> int:
        """How many of `indices` (in order) fit the budget."""
        total, n = 0, 0
        for i in indices:
            total += self.tokens(i)
            if total > self.budget and n:
                break
            n += 1
        return n

    def window(self) -> int:
        """Clips a rank's window holds: as many of the smallest clips as fit."""
        return window_clips(self.budget, self.tokens_per_dataset)


class BudgetStepSampler(StepBatchSampler):
    """`StepBatchSampler` whose batches are filled to a token budget (`data.tokens_per_batch`).

    Each rank's window per step is `batch_size` = `budget.window()` stream positions (the most clips
    that could fit); the rank takes the window's longest prefix within the budget and the rest of
    the window is passed over (not deferred), so a batch stays a pure function of (seed, step, rank)
    and a resume is exact. The number of clips per step therefore varies; each clip keeps its global
    slot (`rank x window + j`), which keys its masks.
    """

    def __init__(self, *args, budget: TokenBudget, **kw):
        super().__init__(*args, **kw)
        self.budget = budget

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in super().__iter__():
            yield batch[:self.budget.fit([i for i, _, _ in batch])]


class ShapePerStepSampler(Sampler):
    """Each micro-step one clip shape (`data.mixing: per_step`, V-JEPA 2's way).

    Datasets with the same shape form a group; the group of step s is drawn from (seed, s) with
    probability proportional to the group's total dataset weight (the same on every rank). Each group
    has its own endless sample stream (a `MixturePlan` over its datasets) and batch (`batch_sizes[k]`,
    per rank); step s of group k reads stream positions [(c x W + r) x B_k, ... + B_k) where c is
    the number of earlier steps that drew group k. Everything is a pure function of (seed, step,
    rank): deterministic and exactly resumable.
    """

    BLOCK = 4096  # steps whose group draws come from one generator call

    def __init__(self, sizes: list[int], weights: list[float], groups: list[list[int]], batch_sizes: list[int],
                 rank: int = 0, world_size: int = 1, seed: int = 0, start_step: int = 0,
                 num_steps: Optional[int] = None):
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.start_step, self.num_steps = start_step, num_steps
        self.batch_sizes = list(batch_sizes)
        self.batch_size = max(batch_sizes)  # for the skip report's arithmetic
        starts = [sum(sizes[:d]) for d in range(len(sizes))]
        self.plans, self.local_to_global = [], []
        gw = []
        for k, ds in enumerate(groups):
            self.plans.append(MixturePlan([sizes[d] for d in ds], [weights[d] for d in ds], seed * 7_919 + k))
            self.local_to_global.append(torch.cat([torch.arange(starts[d], starts[d] + sizes[d]) for d in ds]))
            gw.append(sum(weights[d] for d in ds))
        self.cum = np.cumsum(gw) / sum(gw)
        self.num_samples = sum(sizes)
        self._blocks: dict[int, np.ndarray] = {}  # the few latest blocks' group draws
        self._before: dict[int, np.ndarray] = {0: np.zeros(len(gw), dtype=np.int64)}  # b -> steps per group in blocks < b
        self._epochs: dict[tuple[int, int], torch.Tensor] = {}

    def _draw_block(self, b: int) -> np.ndarray:
        u = np.random.default_rng([self.seed, 0x5E75, b]).random(self.BLOCK)
        return np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.cum) - 1)

    def _block(self, b: int) -> np.ndarray:
        if b not in self._blocks:
            if len(self._blocks) >= 4:  # bounded: a long run does not keep every block
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[b] = self._draw_block(b)
        return self._blocks[b]

    def _counts_before(self, b: int) -> np.ndarray:
        """Steps of each group in blocks [0, b): running sums, kept per block (a few bytes each), so a
        step costs the same at step 10^6 as at step 10."""
        if b not in self._before:
            j = max(x for x in self._before if x < b)
            c = self._before[j]
            for i in range(j, b):
                c = c + np.bincount(self._draw_block(i), minlength=len(self.cum))
                self._before[i + 1] = c
        return self._before[b]

    def group_at(self, step: int) -> int:
        return int(self._block(step // self.BLOCK)[step % self.BLOCK])

    def count_before(self, k: int, step: int) -> int:
        b, r = divmod(step, self.BLOCK)
        return int(self._counts_before(b)[k]) + int((self._block(b)[:r] == k).sum())

    def _stream(self, k: int, pos: int) -> int:
        n = self.plans[k].total
        epoch, off = divmod(pos, n)
        if (k, epoch) not in self._epochs:
            self._epochs = {key: v for key, v in self._epochs.items() if key[0] != k}
            self._epochs[(k, epoch)] = self.plans[k].epoch(epoch)
        return int(self.local_to_global[k][self._epochs[(k, epoch)][off]])

    def batch_indices(self, step: int) -> list[int]:
        k = self.group_at(step)
        B = self.batch_sizes[k]
        first = (self.count_before(k, step) * self.world_size + self.rank) * B
        return [self._stream(k, p) for p in range(first, first + B)]

    def epoch_of(self, step: int) -> int:
        return step * self.world_size * self.batch_size // self.num_samples

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        step = self.start_step
        while self.num_steps is None or step < self.start_step + self.num_steps:
            B = self.batch_sizes[self.group_at(step)]
            yield [(i, step, self.rank * B + j) for j, i in enumerate(self.batch_indices(step))]
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("ShapePerStepSampler is endless unless num_steps is given")
        return self.num_steps
