"""Unreadable files: the one substitution policy of every file backend, and the per-epoch report.

`substitute` replaces a failing index entry by the next one (i+1, i+2, ... modulo the index), at most
`max_retries` times, and records (path, reason) of each file it passed over; the record travels
inside the batch (`Batch.skipped`), so it survives DataLoader worker processes. `SkipTracker` counts
the records per epoch and logs a summary on rank 0.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, TypeVar

from vjepa_scale.data.decode import VideoError

log = logging.getLogger("vjepa_scale.data")

T = TypeVar("T")


class NoReadableVideosError(RuntimeError):
    """No file of an index (or of a run of `max_retries` consecutive entries) can be decoded."""


def substitute(index: int, n: int, try_entry: Callable[[int], T], max_retries: int,
               failure: str = "could not be decoded") -> tuple[int, T, list[tuple[str, str]]]:
    """(entry used, try_entry's result, skipped) for sample `index` of an `n`-entry index.

    `try_entry(i)` raises VideoError when entry i is unusable; then i+1 is tried, up to `max_retries`
    times (at most n-1: each entry once). When all fail, NoReadableVideosError says `failure`.
    """
    retries = max(0, min(max_retries, n - 1))
    skipped: list[tuple[str, str]] = []
    for attempt in range(retries + 1):
        i = (int(index) + attempt) % n
        try:
            return i, try_entry(i), skipped
        except VideoError as e:
            skipped.append((e.path, e.reason))
    names = "; ".join(f"{p} ({r})" for p, r in skipped[:5])
    raise NoReadableVideosError(f"{len(skipped)} consecutive index entries from #{index} {failure} "
                                f"(max_retries={retries}): {names}")


class SkipTracker:
    """Counts skipped files per epoch and logs a summary on rank 0 when an epoch ends.

    With an initialized process group of `world_size` ranks, the epoch's counts of all ranks are
    gathered (all ranks cross an epoch boundary at the same step, so the collective lines up) and
    rank 0's summary names every rank's skipped files.
    """

    def __init__(self, rank: int, epoch_of, world_size: int = 1):
        self.rank = rank
        self.world_size = world_size
        self.epoch_of = epoch_of
        self.epoch: int | None = None
        self.current: Counter = Counter()
        self.reasons: dict[str, str] = {}
        self.total: Counter = Counter()

    def update(self, batch) -> None:
        """Count `batch.skipped` (a Batch) in the epoch of `batch.step`, flushing the previous epoch."""
        epoch = self.epoch_of(int(batch.step))
        if self.epoch is not None and epoch != self.epoch:
            self.flush()
        self.epoch = epoch
        for path, reason in batch.skipped:
            self.current[path] += 1
            self.total[path] += 1
            self.reasons[path] = reason

    def _gather(self, entries: list) -> tuple[list, str]:
        import torch.distributed as dist

        if (self.world_size > 1 and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() == self.world_size):
            parts = [None] * self.world_size
            dist.all_gather_object(parts, entries)
            merged: Counter = Counter()
            reasons = {}
            for part in parts:
                for path, reason, n in part:
                    merged[path] += n
                    reasons[path] = reason
            return [(p, reasons[p], n) for p, n in sorted(merged.items())], f"on {self.world_size} ranks"
        return entries, f"on rank {self.rank}"

    def flush(self) -> None:
        if self.epoch is None:
            return
        entries = [(p, self.reasons[p], n) for p, n in sorted(self.current.items())]
        entries, scope = self._gather(entries)
        if entries and self.rank == 0:
            names = ", ".join(f"{p} ({r}; x{n})" for p, r, n in entries)
            log.warning("data epoch %s: skipped %d unreadable file(s) %s: %s", self.epoch, len(entries), scope, names)
        self.current = Counter()
