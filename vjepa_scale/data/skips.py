"""Unusable files: the one substitution policy of every file backend, the bad-share limit, and the report.

`substitute` tries the sample's own index entry; when that entry is unusable (a VideoError: missing,
unreadable, truncated, too short, ...) it draws replacements uniformly from the whole index with a
generator seeded by (seed, step, slot), so a replacement is no likelier to be a bad entry's neighbour
than any other file, two slots of a batch do not get the same stand-in, and resuming at a step
redraws the same replacements. Each unusable entry met is recorded as (path, "kind: reason") in the
batch (`Batch.skipped`), which carries it out of DataLoader worker processes.

`SkipTracker` (in the process that iterates the loader) counts draws, skips and padded samples
(videos shorter than one clip, kept with data.short_videos: pad), logs a summary of skips per epoch on rank 0 (the last epoch's when the last batch arrives), gives the counts to the trainer's
metrics (`skip_metrics`), and ends the run with NoReadableVideosError when the share of unusable
draws is, beyond sampling noise, above `data.max_bad_fraction`. Never because of a run of bad
entries: a missing folder in a sorted index is as harmless as the same files spread out.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Callable, TypeVar

import numpy as np

from vjepa_scale.data.decode import SKIP_KINDS, VideoError, skip_kind

log = logging.getLogger("vjepa_scale.data")

T = TypeVar("T")

SUBSTITUTE_STREAM = 0x5B5B  # tells the replacement generator apart from the clip-plan one
MISS_PROBABILITY = 1e-9  # substitute gives up after draws this unlikely under data.max_bad_fraction
CONFIDENCE_Z = 3.0  # the bad share must exceed data.max_bad_fraction by this many standard errors
READABLE_PROBES = 256  # entries of a dataset probed at most before it counts as having no readable file


class NoReadableVideosError(RuntimeError):
    """An index has no usable video, or more of its entries are unusable than data.max_bad_fraction allows."""


def unreadable_index_error(source: str, size: int, checked: int, failures: list[str]) -> NoReadableVideosError:
    """The error for index file `source` ("size" entries) none of whose first `checked` videos can be read;
    `failures`: "path (reason)" examples."""
    scope = "any" if checked >= size else f"the first {checked}"
    return NoReadableVideosError(f"index file '{source}': none of {scope} of its {size} videos can be read, e.g. "
                                 + "; ".join(failures[:3]))


def check_datasets_readable(index, error_of: Callable[[int], VideoError | None], max_probes: int = READABLE_PROBES,
                            skip: list[bool] | None = None) -> None:
    """Fail fast when a dataset of `index` (a VideoIndex) has no readable file: probe its entries in
    order until one reads (`error_of(i)`: None, else why entry i is unusable), at most `max_probes` of
    them; NoReadableVideosError naming the index file otherwise. Datasets with `skip[d]` are not checked."""
    for d, (start, source, size) in enumerate(zip(index.starts, index.sources, index.sizes)):
        if skip is not None and skip[d]:
            continue
        checked, failures = min(size, max_probes), []
        for i in range(start, start + checked):
            error = error_of(i)
            if error is None:
                break
            failures.append(f"{error.path} ({error.reason})")
        else:
            raise unreadable_index_error(source, size, checked, failures)


def max_draws(max_bad_fraction: float) -> int:
    """Replacement draws before `substitute` gives up: all failing has probability < MISS_PROBABILITY
    when at most `max_bad_fraction` of the entries are unusable."""
    if max_bad_fraction <= 0:
        return 0
    if max_bad_fraction >= 1:
        raise ValueError(f"max_bad_fraction must be < 1, got {max_bad_fraction}")
    return math.ceil(math.log(MISS_PROBABILITY) / math.log(max_bad_fraction))


def substitute(index: int, n: int, try_entry: Callable[[int], T], *, seed: int, step: int, slot: int,
               max_bad_fraction: float, failure: str = "could not be used",
               span: tuple[int, int] | None = None) -> tuple[int, T, list[tuple[str, str]]]:
    """(entry used, try_entry's result, skipped) for sample `index` of an `n`-entry index at (step, slot).

    `try_entry(i)` raises VideoError when entry i is unusable; then entries drawn uniformly from
    `span` = [lo, hi) (default [0, n); the loaders pass the bad entry's own dataset, so a replacement
    has that dataset's clip shape) by a generator seeded by (seed, step, slot) are tried until one works. After
    `max_draws(max_bad_fraction)` failing draws, NoReadableVideosError says `failure`.
    """
    skipped: list[tuple[str, str]] = []
    limit = max_draws(max_bad_fraction)
    rng = None
    i = int(index)
    for draw in range(limit + 1):
        try:
            return i, try_entry(i), skipped
        except VideoError as e:
            skipped.append((e.path, e.summary))
        if draw < limit:
            rng = rng or np.random.default_rng([int(seed), int(step), int(slot), SUBSTITUTE_STREAM])
            lo, hi = span if span is not None else (0, n)
            i = lo + int(rng.integers(hi - lo))
    names = "; ".join(f"{p} ({r})" for p, r in skipped[:5])
    raise NoReadableVideosError(
        f"entry #{index} and {len(skipped) - 1} random replacements {failure}, which is unlikely unless far more "
        f"than data.max_bad_fraction={max_bad_fraction:g} of the {(span[1] - span[0]) if span else n} entries it draws from are "
        f"unusable: {names}")


def wilson_lower(bad: int, draws: int, z: float = CONFIDENCE_Z) -> float:
    """Lower end of the Wilson score interval of the share bad / draws."""
    if draws <= 0:
        return 0.0
    p = bad / draws
    centre = p + z * z / (2 * draws)
    spread = z * math.sqrt(p * (1 - p) / draws + z * z / (4 * draws * draws))
    return (centre - spread) / (1 + z * z / draws)


class SkipTracker:
    """Counts draws and skipped files per epoch and in total; logs a summary on rank 0 when an epoch ends.

    Draws: the clips of each batch (a token-budget batch holds a varying number) plus one per
    recorded skip. With an initialized process group of `world_size` ranks, the
    epoch's counts of all ranks are gathered (all ranks cross an epoch boundary at the same step, so
    the collective lines up) and rank 0's summary names every rank's skipped files. `final_step`:
    the last micro-step the loader yields (None: endless); its batch closes the last epoch.

    `deferred` (set by `defer_skip_reports`): `update` only closes epochs, and the caller gathers and
    logs them (`report`, a collective) at points where every rank is known to have loaded its batch:
    the trainer, after it agreed on a step's loading. Otherwise a rank whose loading failed before its
    `update` would leave the others in the gather (they are in it inside their next(), it is not).
    """

    def __init__(self, rank: int, epoch_of, world_size: int = 1, max_bad_fraction: float = 0.5,
                 final_step: int | None = None):
        self.rank = rank
        self.world_size = world_size
        self.epoch_of = epoch_of
        self.max_bad_fraction = max_bad_fraction
        self.final_step = final_step
        self.epoch: int | None = None
        self.current: Counter = Counter()
        self.reasons: dict[str, str] = {}
        self.total: Counter = Counter()  # path -> skips (since this process started)
        self.kinds: Counter = Counter()  # kind -> skips
        self.draws = 0
        self.padded = 0  # samples whose clip repeats its video's last frame (data.short_videos: pad)
        self.deferred = False
        self.closed: list[tuple[int, list]] = []  # (epoch, [(path, reason, count)]) not yet reported

    def update(self, batch) -> None:
        """Count `batch.skipped` (a Batch) in the epoch of `batch.step`, closing the previous epoch
        (and reporting it, unless `deferred`)."""
        epoch = self.epoch_of(int(batch.step))
        if self.epoch is not None and epoch != self.epoch:
            self._close()
        self.epoch = epoch
        for path, reason in batch.skipped:
            self.current[path] += 1
            self.total[path] += 1
            self.kinds[skip_kind(reason)] += 1
            self.reasons[path] = reason
        self.draws += batch.num_samples + len(batch.skipped)  # both in sampler draws (a sample is num_clips rows)
        self.padded += batch.padded
        self.check()
        if self.final_step is not None and int(batch.step) >= self.final_step:
            self._close()
        if not self.deferred:
            self.report()

    @property
    def skipped(self) -> int:
        return sum(self.kinds.values())

    def check(self) -> None:
        """NoReadableVideosError when the share of unusable draws is surely above max_bad_fraction."""
        if self.skipped and wilson_lower(self.skipped, self.draws) > self.max_bad_fraction:
            kinds = ", ".join(f"{k} {n}" for k, n in self.kinds.most_common())
            names = ", ".join(f"{p} ({self.reasons[p]})" for p, _ in self.total.most_common(5))
            raise NoReadableVideosError(
                f"rank {self.rank}: {self.skipped} of {self.draws} draws hit unusable index entries "
                f"({kinds}), more than data.max_bad_fraction={self.max_bad_fraction:g} beyond sampling noise; "
                f"check the index paths, or raise data.max_bad_fraction. E.g. {names}")

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

    def _close(self) -> None:
        """End the current epoch's count (no collective); `report` logs it."""
        if self.epoch is None:
            return
        self.closed.append((self.epoch, [(p, self.reasons[p], n) for p, n in sorted(self.current.items())]))
        self.current = Counter()
        self.epoch = None

    def flush(self) -> None:
        """Close the current epoch and report every closed one (the end of an iteration)."""
        self._close()
        self.report()

    def report(self) -> None:
        """Collective over the ranks (every rank has the same closed epochs: they cross epoch boundaries at
        the same step): gather each closed epoch's skipped files and log the summary on rank 0."""
        closed, self.closed = self.closed, []
        for epoch, entries in closed:
            entries, scope = self._gather(entries)
            if entries and self.rank == 0:
                kinds = Counter()
                for _, reason, n in entries:
                    kinds[skip_kind(reason)] += n
                names = ", ".join(f"{p} ({r}; x{n})" for p, r, n in entries)
                log.warning("data epoch %s: skipped %d unusable file(s) %s (%s): %s", epoch, len(entries), scope,
                            ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())), names)

    def totals(self, device=None, base: dict | None = None) -> dict:
        """{"draws", "skipped", "padded", "kinds": {kind: n}}: this tracker's counts summed over ranks when a process
        group is up (a collective: every rank calls it at the same step), plus `base` (the run's totals
        before this tracker, already summed over ranks: an earlier phase's loader, a resumed checkpoint's)."""
        import torch
        import torch.distributed as dist

        v = torch.tensor([self.draws, self.skipped, self.padded] + [self.kinds[k] for k in SKIP_KINDS],
                         dtype=torch.float64, device=device)
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(v)
        draws, skipped, padded, *kinds = [int(x) for x in v.tolist()]
        return add_totals(base, {"draws": draws, "skipped": skipped, "padded": padded,
                                 "kinds": dict(zip(SKIP_KINDS, kinds))})

    def metrics(self, device=None, base: dict | None = None) -> dict:
        """Skip counts of the run so far (`totals`: a collective): data_skipped, data_skipped_<kind> (kinds
        seen), data_bad_share, data_padded (samples whose video's last frame was repeated)."""
        t = self.totals(device, base)
        out = {"data_skipped": t["skipped"], "data_bad_share": t["skipped"] / t["draws"] if t["draws"] else 0.0,
               "data_padded": t["padded"]}
        out.update({f"data_skipped_{k}": n for k, n in t["kinds"].items()})
        return out


def add_totals(a: dict | None, b: dict | None) -> dict:
    """The sum of two `SkipTracker.totals` records (None or {}: nothing; a record without "padded", from a
    checkpoint written before that count existed: 0); kinds with no skips are left out."""
    a, b = a or {}, b or {}
    kinds = Counter(a.get("kinds", {}))
    kinds.update(b.get("kinds", {}))
    order = [k for k in SKIP_KINDS if kinds[k]] + sorted(k for k in kinds if k not in SKIP_KINDS and kinds[k])
    return {"draws": int(a.get("draws", 0)) + int(b.get("draws", 0)),
            "skipped": int(a.get("skipped", 0)) + int(b.get("skipped", 0)),
            "padded": int(a.get("padded", 0)) + int(b.get("padded", 0)), "kinds": {k: int(kinds[k]) for k in order}}


def skip_metrics(loader, device=None, base: dict | None = None) -> dict:
    """`SkipTracker.metrics` of a file loader (run totals: `base` plus the loader's); {} for one that reads
    no files (synthetic)."""
    tracker = getattr(loader, "tracker", None)
    return tracker.metrics(device, base) if tracker is not None else {}


def skip_totals(loader, device=None, base: dict | None = None) -> dict:
    """`SkipTracker.totals` of a file loader (a collective), `base` plus nothing for a loader without files
    (or None): what a checkpoint records so that a resumed run's counts continue."""
    tracker = getattr(loader, "tracker", None)
    return tracker.totals(device, base) if tracker is not None else add_totals(base, None)


def defer_skip_reports(loader) -> None:
    """From now on the caller reports a file loader's closed epochs itself (`report_skips`, a collective)
    at points where every rank has its batch; see `SkipTracker`. No-op for a loader without files."""
    tracker = getattr(loader, "tracker", None)
    if tracker is not None:
        tracker.deferred = True


def report_skips(loader) -> None:
    """Collective: log the epochs `loader` closed since the last call (rank 0); see `defer_skip_reports`."""
    tracker = getattr(loader, "tracker", None)
    if tracker is not None:
        tracker.report()


def skip_tracker(sampler, rank: int, max_bad_fraction: float) -> SkipTracker:
    """The SkipTracker of a file loader over `sampler` (a `StepBatchSampler`; its last step closes the last
    epoch's report)."""
    final = None if sampler.num_steps is None else sampler.start_step + sampler.num_steps - 1
    return SkipTracker(rank, sampler.epoch_of, sampler.world_size, max_bad_fraction, final)
