"""Video data: index files, clip sampling, augmentation, decoding backends, per-rank sampling.

`build_dataloader(cfg, rank, world_size, start_step)` is the one entry point the trainer uses.
It yields batches from `MaskCollator`: dict(video (B,C,T,H,W), label (B,), masks (MaskBatch), step).
"""
from __future__ import annotations

from torch.utils.data import DataLoader

from vjepa_scale.config import Config
from vjepa_scale.data.sampler import StepBatchSampler
from vjepa_scale.data.synthetic import SyntheticClips
from vjepa_scale.masks import MaskCollator, MultiBlockMasker


def build_dataset(cfg: Config):
    """The dataset for `cfg.data.backend` (synthetic here; file backends are added beside it)."""
    d = cfg.data
    if d.backend == "synthetic":
        return SyntheticClips(d.synthetic_size, d.frames_per_clip, d.crop_size, seed=d.seed)
    raise NotImplementedError(f"data.backend={d.backend!r} is not available yet")


def build_dataloader(cfg: Config, rank: int = 0, world_size: int = 1, start_step: int = 0,
                     num_steps: int | None = None) -> DataLoader:
    """Endless (or `num_steps`-long) per-rank loader starting at `start_step`, masks drawn in workers."""
    dataset = build_dataset(cfg)
    sampler = StepBatchSampler(len(dataset), cfg.data.batch_size, rank, world_size, cfg.data.seed,
                               start_step, num_steps)
    collate = MaskCollator(MultiBlockMasker(cfg.mask, cfg.grid), rank)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers,
                      pin_memory=cfg.data.pin_memory and __import__("torch").cuda.is_available(),
                      persistent_workers=cfg.data.num_workers > 0)
