"""The video of a mixed-shape batch: one tensor per shape group, samples in group order.

A batch whose clips differ in shape (frames, crop size; images are clips of one tubelet) cannot be
one (B, C, T, H, W) tensor. `MixedVideo.groups[k]` is (B_k, C, T_k, H_k, W_k), and the batch's
samples are the groups' rows in order (group 0's rows first): sample b of the batch is row
b - sum(B_<k) of group k. Labels, index entries and the masks (`MaskBatch.sample_grids`,
`sample_offsets`) follow this order, so the flat token index of sample b's token n is the
concatenation offset `sum of earlier samples' tokens + n`. The models patch-embed each group
(one GEMM per shape) and concatenate the tokens (`VisionTransformer3D`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch


@dataclass
class MixedVideo:
    """Per-shape-group clip tensors; samples are the groups' rows in group order."""

    groups: list[torch.Tensor]  # (B_k, C, T_k, H_k, W_k) each

    @property
    def batch_size(self) -> int:
        return sum(int(g.shape[0]) for g in self.groups)

    @property
    def dtype(self) -> torch.dtype:
        return self.groups[0].dtype

    @property
    def device(self) -> torch.device:
        return self.groups[0].device

    def sample_shapes(self) -> list[tuple[int, ...]]:
        """(C, T, H, W) of each sample, in batch order."""
        return [tuple(g.shape[1:]) for g in self.groups for _ in range(g.shape[0])]

    def to(self, device: Any, dtype: Optional[torch.dtype] = None, non_blocking: bool = True) -> "MixedVideo":
        return MixedVideo([g.to(device, dtype, non_blocking=non_blocking) for g in self.groups])

    def pin_memory(self) -> "MixedVideo":
        return MixedVideo([g.pin_memory() for g in self.groups])

    def samples(self) -> list[torch.Tensor]:
        """Each sample's clip (C, T, H, W), in batch order (views)."""
        return [clip for g in self.groups for clip in g]

    @staticmethod
    def from_clips(clips: Sequence[torch.Tensor]) -> tuple["MixedVideo | torch.Tensor", list[int]]:
        """Clips (C, T, H, W) of any shapes -> (video, order): a plain (B, C, T, H, W) tensor when they
        share one shape, else a MixedVideo with the clips grouped by shape (groups in order of first
        appearance, stable within a group); `order[b]` is the input position of batch sample b."""
        shapes = [tuple(c.shape) for c in clips]
        keys = list(dict.fromkeys(shapes))
        if len(keys) == 1:
            return torch.stack(list(clips)), list(range(len(clips)))
        order = [i for k in keys for i, s in enumerate(shapes) if s == k]
        return MixedVideo([torch.stack([clips[i] for i in order if shapes[i] == k]) for k in keys]), order
