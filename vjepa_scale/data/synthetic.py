"""Synthetic clips (random tensors, deterministic per index): smoke runs and benchmarks, no files."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class SyntheticClips(Dataset):
    """`num_samples` clips of shape (C, T, H, W); index i always gives the same clip and label.

    Items have the layout of `cpu.VideoClips` items (video, label, step, index, skipped=[], padded=0).
    """

    def __init__(self, num_samples: int, frames: int, crop_size: int, seed: int = 0, num_classes: int = 2):
        self.num_samples = num_samples
        self.frames = frames
        self.crop_size = crop_size
        self.seed = seed
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key) -> dict:
        index, step, slot = (tuple(key) + (0, 0))[:3] if isinstance(key, tuple) else (key, 0, 0)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        # Smooth, low-frequency content so the objective is learnable (pure noise is not).
        low = torch.randn(3, max(1, self.frames // 4), 4, 4, generator=g)
        video = torch.nn.functional.interpolate(low[None], size=(self.frames, self.crop_size, self.crop_size),
                                                mode="trilinear", align_corners=False)[0]
        return {"video": video, "label": int(index) % self.num_classes, "step": int(step), "index": int(index),
                "skipped": [], "slot": int(slot), "padded": 0}
