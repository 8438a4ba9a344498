"""Video data: index files, clip sampling, augmentation, decoding backends, per-rank sampling.

`build_dataloader(cfg, rank, world_size, start_step, num_steps)` is the one entry point the trainer
uses. It yields batches dict(video (B*num_clips, C, T, H, W), label (B*num_clips,), masks
(MaskBatch), step, index, skipped): `index` lists the index entry behind each clip and `skipped`
lists (path, reason) for every file this batch had to replace. Backends (`data.backend`, chosen in `resolve_backend`):

- `cpu`: PyAV decoding in DataLoader workers (H.264, HEVC, VP9, MJPEG, ...); video is float32 on the
  CPU and the trainer casts it to bf16 when it moves it to the GPU.
- `dali`: NVIDIA DALI decoding (NVDEC) and augmentation on the GPU; video comes out bf16 on the GPU
  (cast in `DaliLoader`). On a CPU-only host the same pipeline runs with device "cpu" (VP9, VP8, MJPEG).
- `auto`: `dali` when CUDA and DALI are both available, else `cpu`.
- `synthetic`: random tensors, no files.

Both file backends draw every random choice from `clips.plan_clips(seed, step, index)`, so they pick
the same frames, crop box and flip for a sample. Skipped files are summarized per epoch on rank 0
(logger `vjepa_scale.data`; all ranks' files when a process group is up) and counted per rank in
`loader.skipped_files`.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch
from torch.utils.data import DataLoader

from vjepa_scale.config import Config, ConfigError
from vjepa_scale.data.sampler import MixturePlan, StepBatchSampler
from vjepa_scale.data.synthetic import SyntheticClips
from vjepa_scale.masks import MaskCollator, MultiBlockMasker

log = logging.getLogger("vjepa_scale.data")


def dali_available() -> bool:
    """True when `nvidia.dali` imports."""
    try:
        import nvidia.dali  # noqa: F401
        return True
    except Exception:
        return False


def resolve_backend(backend: str) -> str:
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


class ClipCollator:
    """Flattens multi-clip samples into one sample per clip, then applies MaskCollator.

    Each batch's `skipped` becomes one flat list of (path, reason) for the whole batch.
    """

    def __init__(self, mask_collator: MaskCollator):
        self.mask_collator = mask_collator

    def __call__(self, samples: list[dict]) -> dict:
        flat = []
        for s in samples:
            if s["video"].dim() == 5:
                for c in range(s["video"].shape[0]):
                    flat.append({**s, "video": s["video"][c], "skipped": s.get("skipped", []) if c == 0 else []})
            else:
                flat.append(s)
        batch = self.mask_collator(flat)
        batch["skipped"] = [item for s in flat for item in (s.get("skipped") or [])]
        return batch


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

    def update(self, batch: dict) -> None:
        epoch = self.epoch_of(int(batch["step"]))
        if self.epoch is not None and epoch != self.epoch:
            self.flush()
        self.epoch = epoch
        for path, reason in batch.get("skipped") or []:
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


def build_dataloader(cfg: Config, rank: int = 0, world_size: int = 1, start_step: int = 0,
                     num_steps: int | None = None):
    """Endless (or `num_steps`-long) per-rank loader starting at `start_step`, masks drawn on the CPU."""
    backend = resolve_backend(cfg.data.backend)
    collate = MaskCollator(MultiBlockMasker(cfg.mask, cfg.grid), rank)
    if backend == "synthetic":
        dataset = build_dataset(cfg)
        sampler = build_sampler(cfg, len(dataset), rank, world_size, start_step, num_steps)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers,
                          pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
                          persistent_workers=cfg.data.num_workers > 0)
    if backend == "dali":
        from vjepa_scale.data.dali import build_dali_loader

        return build_dali_loader(cfg, rank, world_size, start_step, num_steps)
    dataset = build_dataset(cfg)
    sampler = build_sampler(cfg, len(dataset), rank, world_size, start_step, num_steps, dataset.index)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=ClipCollator(collate),
                        num_workers=cfg.data.num_workers,
                        pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
                        persistent_workers=cfg.data.num_workers > 0)
    return VideoLoader(loader, sampler, rank, world_size)
