"""Backend choice and the per-rank loaders: `build_dataloader` and what it is made of."""
from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader

from vjepa_scale.config import Config, ConfigError
from vjepa_scale.data.batch import ClipCollator
from vjepa_scale.data.sampler import (BudgetStepSampler, MixturePlan, ShapePerStepSampler, StepBatchSampler,
                                     TokenBudget)
from vjepa_scale.data.skips import skip_tracker
from vjepa_scale.data.synthetic import SyntheticClips
from vjepa_scale.masks import MultiBlockMasker


def dali_available() -> bool:
    """True when `nvidia.dali` imports."""
    try:
        import nvidia.dali  # noqa: F401
        return True
    except Exception:
        return False


@dataclass(frozen=True)
class DataBackend:
    """What `resolve_data_backend` decided: `name` (cpu, dali or synthetic), DALI's `device` (gpu or
    cpu; None for the others) and `note`, why the configured backend was changed ("" if it was not)."""

    name: str
    device: Optional[str] = None
    note: str = ""


def resolve_data_backend(cfg: Config) -> DataBackend:
    """The one place a decoding backend is chosen: `auto` -> dali (CUDA + DALI) else cpu; dali with
    batches its fixed-shape pipelines cannot read (image sets, datasets with their own shape, a token
    budget) -> cpu, with a note; DALI decodes on the GPU when CUDA is available, else on the CPU."""
    backend = cfg.data.backend
    if backend == "auto":
        backend = "dali" if torch.cuda.is_available() and dali_available() else "cpu"
    elif backend == "dali" and not dali_available():
        raise ConfigError("data.backend=dali but nvidia-dali is not installed "
                          "(pip install nvidia-dali-cuda130, or use data.backend: cpu)")
    elif backend not in ("cpu", "dali", "synthetic"):
        raise ConfigError(f"data.backend must be one of auto, cpu, dali, synthetic; got {backend!r}")
    if backend == "dali" and not cfg.data.one_video_shape(cfg.model.tubelet_size):
        return DataBackend("cpu", note=(
            "data.backend=dali: image sets, datasets with their own frames_per_clip / crop_size, mixed clip "
            "shapes and data.tokens_per_batch are decoded by the cpu backend (PyAV, PIL); DALI's pipelines "
            "read videos of data.frames_per_clip x data.crop_size only"))
    if backend == "dali":
        return DataBackend("dali", "gpu" if torch.cuda.is_available() else "cpu")
    return DataBackend(backend)


def build_dataset(cfg: Config, check: bool = True):
    """The map-style dataset for `cfg.data.backend`: SyntheticClips, or VideoClips (cpu decoding).

    For `dali` this is the CPU dataset over the same index (DALI reads through `DaliLoader`).
    With `check`, an index file none of whose videos opens raises NoReadableVideosError.
    """
    d = cfg.data
    if d.backend == "synthetic":
        return SyntheticClips(d.synthetic_size, d.frames_per_clip, d.crop_size, seed=d.seed)
    from vjepa_scale.data.cpu import VideoClips, check_readable
    from vjepa_scale.data.index import load_index

    index = load_index(d.datasets)
    dataset = VideoClips(index, d, cfg.model.tubelet_size)
    if check:
        check_readable(index, images=dataset.images)
    return dataset


class LoaderTimeoutError(RuntimeError):
    """No batch arrived from the DataLoader workers within data.loader_timeout_s."""


class DataLoadError(RuntimeError):
    """Some rank could not load its batch of a step; raised on every rank at that step
    (`agree_loaded`). On the failing rank it is caused by that rank's own error."""


def agree_loaded(error: BaseException | None, step: int, rank: int) -> None:
    """Collective, after every rank loaded (or failed to load) the batches of optimizer step `step`:
    raises DataLoadError on every rank when any rank failed. One small all-reduce per step, so a data
    error on some ranks only (one node without its data mount) ends all of them at once, instead
    of leaving the others waiting in their next collective until the hang watchdog ends them."""
    from vjepa_scale.distributed import ranks_with

    failed = ranks_with(error is not None)
    if not failed:
        return
    if error is not None:
        raise DataLoadError(f"rank {rank}: could not load its batch for step {step}: "
                            f"{type(error).__name__}: {error}") from error
    raise DataLoadError(f"rank(s) {', '.join(map(str, failed))} could not load their batch for step {step} "
                        f"(their error is in their output); rank {rank} stops with them")


def _forget_workers(it) -> None:
    """Unregister the workers of DataLoader iterator `it` from torch's SIGCHLD check, so their deaths
    are not reported as a crash (at whatever line the main thread is on)."""
    from torch.utils.data._utils.signal_handling import _remove_worker_pids

    if getattr(it, "_worker_pids_set", False):
        _remove_worker_pids(id(it))
        it._worker_pids_set = False


def _kill_workers(it) -> None:
    """SIGKILL the live workers of DataLoader iterator `it` (a stopped worker ignores SIGTERM)."""
    _forget_workers(it)
    for w in getattr(it, "_workers", []):
        if w.is_alive():
            w.kill()


def stop_workers(it) -> None:
    """Kill the worker processes of DataLoader iterator `it` and shut the iterator down.

    A stopped (SIGSTOP) worker ignores the SIGTERM the DataLoader's shutdown sends, and
    multiprocessing's exit handler would then wait for it forever; SIGKILL ends it.
    """
    _kill_workers(it)
    for w in getattr(it, "_workers", []):
        w.join(timeout=5)
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _next_within(it, seconds: float):
    """next(it), with the workers of DataLoader iterator `it` killed if it takes more than `seconds`.

    The DataLoader's own `timeout` covers an empty queue only. A batch a worker queued just before it
    froze also blocks: under torch's default `file_descriptor` sharing, taking it needs the worker to
    hand over its shared-memory descriptors. Killing the workers ends that wait with an error.
    Returns (batch, expired): `expired` when the workers were killed (the batch may still have come).
    Raises what next() raises (StopIteration included), marked `loader_expired` when they were killed.
    """
    lock = threading.Lock()
    state = {"done": False, "expired": False}

    def expire():  # the timer's thread: kills only while next() is still waiting
        with lock:
            if state["done"]:
                return
            state["expired"] = True
            _kill_workers(it)

    def finish() -> bool:
        with lock:
            state["done"] = True
            return state["expired"]

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        batch = next(it)
    except BaseException as e:
        timer.cancel()
        e.loader_expired = finish()
        raise
    timer.cancel()
    return batch, finish()


class VideoLoader:
    """Iterable over a backend's batches that tracks skipped files (`skipped_files`: path -> count).

    With `timeout` > 0 (the DataLoader's own `timeout`, data.loader_timeout_s), a batch that does not
    arrive in time ends the iteration with LoaderTimeoutError naming the rank and the micro-step,
    after the workers are killed (so the process can exit).
    """

    def __init__(self, loader, sampler: StepBatchSampler, rank: int, timeout: float = 0.0,
                 max_bad_fraction: float = 0.5, index=None):
        self.loader = loader
        self.index = index  # the VideoIndex the batches' entries are of (`dataset_clips`)
        self.sampler = sampler
        self.rank = rank
        self.timeout = timeout
        self.tracker = skip_tracker(sampler, rank, max_bad_fraction)

    @property
    def skipped_files(self) -> dict[str, int]:
        return dict(self.tracker.total)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        # created here, not at the first batch: the DataLoader draws its base seed from torch's generator
        # now, where the trainer's `rng.untouched()` keeps the global generators as a resume restored them
        return self._batches(iter(self.loader))

    def _batches(self, it):
        step = self.sampler.start_step  # the micro-step of the next batch (they arrive in step order)
        while True:
            try:
                if self.timeout > 0:
                    batch, expired = _next_within(it, self.timeout)
                else:
                    batch, expired = next(it), False
            except StopIteration:
                break
            except Exception as e:
                timed_out = isinstance(e, RuntimeError) and str(e).startswith("DataLoader timed out")
                if not (timed_out or getattr(e, "loader_expired", False)):
                    raise
                self._timed_out(it, step, e)
            if expired:  # arrived as the workers were killed: they are gone, so the iteration ends here
                self._timed_out(it, batch.step + 1, None)
            step = batch.step + 1
            self.tracker.update(batch)
            yield batch
        self.tracker.flush()

    def _timed_out(self, it, step: int, cause: BaseException | None):
        stop_workers(it)
        raise LoaderTimeoutError(
            f"rank {self.rank}: no batch for micro-step {step} from the DataLoader workers within "
            f"data.loader_timeout_s={self.timeout:g} s; a worker is frozen (stopped, or hung in I/O "
            f"or decoding) or loading is far too slow. If loading is just slow, raise "
            f"data.loader_timeout_s (0 waits forever)") from cause


def build_sampler(cfg: Config, dataset_len: int, rank: int, world_size: int, start_step: int,
                  num_steps: int | None, index=None, sample_offset: int = 0):
    """The per-rank step sampler; a weighted MixturePlan when several index files are mixed.

    `data.mixing: per_step` with several clip shapes: a `ShapePerStepSampler` (batch per shape: the
    token budget's clips, else data.batch_size); `data.tokens_per_batch`: a `BudgetStepSampler`.
    """
    d = cfg.data
    tokens = cfg.dataset_tokens() if index is not None else None
    if index is not None and d.mixing == "per_step" and d.several_shapes(cfg.model.tubelet_size):
        shapes = d.shapes(cfg.model.tubelet_size)
        keys = list(dict.fromkeys(shapes))
        groups = [[i for i, s in enumerate(shapes) if s == k] for k in keys]
        sizes = [max(1, d.tokens_per_batch // tokens[g[0]]) if d.tokens_per_batch else d.batch_size for g in groups]
        if sample_offset:
            raise ValueError("data.mixing: per_step continues its streams per step; a sample_offset (elastic "
                             "resume with another global batch, phases) is not supported")
        return ShapePerStepSampler(index.sizes, index.weights, groups, sizes, rank, world_size, d.seed,
                                   start_step, num_steps)
    mixture = None
    if index is not None and len(index.sizes) > 1:
        mixture = MixturePlan(index.sizes, index.weights, d.seed)
    if d.tokens_per_batch is not None:
        budget = TokenBudget(index.sizes if index is not None else [dataset_len],
                             tokens if tokens is not None else cfg.dataset_tokens(), d.tokens_per_batch)
        return BudgetStepSampler(dataset_len, cfg.budget_window(), rank, world_size, d.seed, start_step, num_steps,
                                 mixture=mixture, sample_offset=sample_offset, budget=budget)
    return StepBatchSampler(dataset_len, d.batch_size, rank, world_size, d.seed,
                            start_step, num_steps, mixture=mixture, sample_offset=sample_offset)


def dataset_clips(loader, batches) -> Optional[list[int]]:
    """Clips of `batches` per dataset of the file loader's index (`data.datasets` order); None for a loader
    without an index of several datasets (synthetic data, one index file)."""
    index = getattr(loader, "index", None)
    if index is None or len(index.sizes) < 2:
        return None
    counts = [0] * len(index.sizes)
    for b in batches:
        for i in b.index:
            counts[index.dataset_of(i)] += 1
    return counts


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # vjepa_scale.train.preempt's


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM / SIGUSR1, which SLURM and the `deepspeed` launcher send to
    every process: their rank finishes its step and checkpoints first (vjepa_scale.train.preempt),
    then shuts its workers down. A worker starts with them blocked (`StopSafeDataLoader`): one that
    came before this point stays pending and is discarded once ignored."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()  # worker iterators of this process (`_track_workers`)
_EXIT_HOOK_PID: int | None = None  # the process whose atexit runs `_stop_live_workers`


def _stop_live_workers() -> None:
    """At interpreter exit: stop the workers of every live DataLoader iterator (persistent workers of a
    loader kept until then: `stop_workers`). Workers ignore SIGTERM (`ignore_stop_signals`),
    so multiprocessing's own exit handler, which terminates them and then joins them, would wait forever."""
    if _EXIT_HOOK_PID != os.getpid():  # inherited by a forked child: not its workers
        return
    for it in list(_LIVE_ITERATORS):
        try:
            stop_workers(it)
        except Exception:  # exiting anyway: never let one iterator keep the others' workers alive
            pass


def _track_workers(it) -> None:
    """Stop the workers of DataLoader iterator `it` at interpreter exit unless it is gone before. The hook is
    registered once per process, after multiprocessing's (atexit runs the latest first), so it runs first."""
    global _EXIT_HOOK_PID
    if _EXIT_HOOK_PID != os.getpid():
        _LIVE_ITERATORS.clear()  # a forked child's copy of its parent's
        atexit.register(_stop_live_workers)
        _EXIT_HOOK_PID = os.getpid()
    _LIVE_ITERATORS.add(it)


class StopSafeDataLoader(DataLoader):
    """A DataLoader whose workers are born with SIGTERM / SIGUSR1 blocked (a forked child inherits the
    forking thread's signal mask) until `ignore_stop_signals` ignores them: without that, a signal to
    the whole job (SLURM, a process group) between a worker's fork and its `worker_init_fn` runs
    torch's worker handler, the worker dies and the rank fails with a DataLoader error instead of
    saving. The rank's own handlers still run meanwhile (another thread takes the signal, or this one
    once it unblocks). Workers still alive at interpreter exit (persistent ones of a loader kept until
    then) are shut down before multiprocessing's exit handler would wait for them (`_track_workers`)."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            it = super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        _track_workers(it)
        return it


def worker_start_method() -> str | None:
    """How DataLoader workers start: the default fork, or a fork server once this process runs DALI
    pipelines (a process that benchmarks or tests both backends), whose threads make fork unsafe."""
    dali = sys.modules.get("vjepa_scale.data.dali")
    return "forkserver" if dali is not None and dali.pipelines_built() else None


def build_dataloader(cfg: Config, rank: int = 0, world_size: int = 1, start_step: int = 0,
                     num_steps: int | None = None, sample_offset: int = 0):
    """Endless (or `num_steps`-long) per-rank iterable of `Batch`es from micro-step `start_step` on.

    Masks are drawn on the CPU (in the DataLoader workers, or in DALI's helper thread), for rank r's
    global slots r*B .. r*B + B - 1 of each micro-step. `sample_offset`: see `StepBatchSampler`.
    With workers, the cpu backend waits at most data.loader_timeout_s for a batch (LoaderTimeoutError).
    """
    choice = resolve_data_backend(cfg)
    backend = choice.name
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    if choice.note:
        logging.getLogger("vjepa_scale.data").warning(choice.note)
    if backend == "dali":
        from vjepa_scale.data.dali import DaliLoader
        from vjepa_scale.data.index import load_index

        index = load_index(cfg.data.datasets)
        sampler = build_sampler(cfg, len(index), rank, world_size, start_step, num_steps, index, sample_offset)
        return DaliLoader(cfg, index, sampler, masker, rank, choice.device)
    dataset = build_dataset(cfg)
    index = None if backend == "synthetic" else dataset.index
    sampler = build_sampler(cfg, len(dataset), rank, world_size, start_step, num_steps, index, sample_offset)
    timeout = cfg.data.loader_timeout_s if cfg.data.num_workers > 0 and backend != "synthetic" else 0.0
    collate = ClipCollator(masker, rank, cfg.model.tubelet_size, cfg.model.patch_size)
    loader = StopSafeDataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                num_workers=cfg.data.num_workers, worker_init_fn=ignore_stop_signals,
                                pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
                                persistent_workers=cfg.data.num_workers > 0, timeout=timeout,
                                multiprocessing_context=worker_start_method() if cfg.data.num_workers > 0 else None)
    if backend == "synthetic":
        return loader
    return VideoLoader(loader, sampler, rank, timeout, cfg.data.max_bad_fraction, index)
