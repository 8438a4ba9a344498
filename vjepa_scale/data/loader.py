"""Backend choice and the per-rank loaders: `build_dataloader` and what it is made of."""
from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader

from vjepa_scale.config import Config, ConfigError
from vjepa_scale.data.batch import ClipCollator
from vjepa_scale.data.sampler import MixturePlan, StepBatchSampler
from vjepa_scale.data.skips import SkipTracker
from vjepa_scale.data.synthetic import SyntheticClips
from vjepa_scale.masks import MultiBlockMasker


def dali_available() -> bool:
    """True when `nvidia.dali` imports."""
    try:
        import nvidia.dali  # noqa: F401
        return True
    except Exception:
        return False


def resolve_data_backend(backend: str) -> str:
    """The one place a decoding backend is chosen: `auto` -> dali (CUDA + DALI) else cpu."""
    if backend == "auto":
        return "dali" if torch.cuda.is_available() and dali_available() else "cpu"
    if backend == "dali" and not dali_available():
        raise ConfigError("data.backend=dali but nvidia-dali is not installed "
                          "(pip install nvidia-dali-cuda130, or use data.backend: cpu)")
    if backend not in ("cpu", "dali", "synthetic"):
        raise ConfigError(f"data.backend must be one of auto, cpu, dali, synthetic; got {backend!r}")
    return backend


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
    if check:
        check_readable(index)
    return VideoClips(index, d)


class VideoLoader:
    """Iterable over a backend's batches that tracks skipped files (`skipped_files`: path -> count)."""

    def __init__(self, loader, sampler: StepBatchSampler, rank: int, world_size: int = 1):
        self.loader = loader
        self.sampler = sampler
        self.tracker = SkipTracker(rank, sampler.epoch_of, world_size)

    @property
    def skipped_files(self) -> dict[str, int]:
        return dict(self.tracker.total)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.loader:
            self.tracker.update(batch)
            yield batch
        self.tracker.flush()


def build_sampler(cfg: Config, dataset_len: int, rank: int, world_size: int, start_step: int,
                  num_steps: int | None, index=None) -> StepBatchSampler:
    """The per-rank step sampler; a weighted MixturePlan when several index files are mixed."""
    mixture = None
    if index is not None and len(index.sizes) > 1:
        mixture = MixturePlan(index.sizes, index.weights, cfg.data.seed)
    return StepBatchSampler(dataset_len, cfg.data.batch_size, rank, world_size, cfg.data.seed,
                            start_step, num_steps, mixture=mixture)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM / SIGUSR1, which SLURM and the `deepspeed` launcher send to
    every process: their rank finishes its step and checkpoints first (vjepa_scale.train.preempt),
    then shuts its workers down."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def build_dataloader(cfg: Config, rank: int = 0, world_size: int = 1, start_step: int = 0,
                     num_steps: int | None = None):
    """Endless (or `num_steps`-long) per-rank iterable of `Batch`es from micro-step `start_step` on.

    Masks are drawn on the CPU (in the DataLoader workers, or in DALI's helper thread).
    """
    backend = resolve_data_backend(cfg.data.backend)
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    if backend == "dali":
        from vjepa_scale.data.dali import DaliLoader
        from vjepa_scale.data.index import load_index

        index = load_index(cfg.data.datasets)
        sampler = build_sampler(cfg, len(index), rank, world_size, start_step, num_steps, index)
        return DaliLoader(cfg, index, sampler, masker, rank, "gpu" if torch.cuda.is_available() else "cpu")
    dataset = build_dataset(cfg)
    index = None if backend == "synthetic" else dataset.index
    sampler = build_sampler(cfg, len(dataset), rank, world_size, start_step, num_steps, index)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=ClipCollator(masker, rank),
                        num_workers=cfg.data.num_workers, worker_init_fn=_ignore_stop_signals,
                        pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
                        persistent_workers=cfg.data.num_workers > 0)
    return loader if backend == "synthetic" else VideoLoader(loader, sampler, rank, world_size)
