"""The batch contract: what every loader (cpu, dali, synthetic) yields and how it is built.

`make_batch` is the one builder: it draws the batch's masks (a pure function of (seed, micro-step,
global slot); rank r's rows are slots r*B .. r*B + B - 1 of the micro-step, every rank holding B rows)
and wraps video, labels and bookkeeping into a `Batch`. `ClipCollator` is the DataLoader collate_fn
of the CPU and synthetic paths; the DALI path calls `make_batch` on the clips it decoded.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from vjepa_scale.masks import MaskBatch, MultiBlockMasker


@dataclass
class Batch:
    """One micro-batch of B clips (B = samples x data.num_clips)."""

    video: torch.Tensor  # (B, C, T, H, W); float32 on the CPU, or bf16 on the GPU from DALI
    label: torch.Tensor  # (B,) int64
    masks: MaskBatch
    step: int  # the micro-step this batch belongs to
    index: list[int]  # index entry behind each clip (synthetic: the sample index)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of files replaced here

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "Batch":
        """Video (cast to `dtype` if given) and masks on `device`; labels and bookkeeping stay on the host."""
        return replace(self, video=self.video.to(device, dtype, non_blocking=True), masks=self.masks.to(device))

    def pin_memory(self) -> "Batch":
        """Page-locked copy of the host tensors (called by DataLoader(pin_memory=True))."""
        return replace(self, video=self.video.pin_memory(), label=self.label.pin_memory(),
                       masks=self.masks.pin_memory())


def make_batch(video: torch.Tensor, labels: Sequence[int], masker: MultiBlockMasker, step: int, rank: int,
               index: list[int], skipped: list[tuple[str, str]]) -> Batch:
    """The Batch of clips `video` (B, C, T, H, W) at `step`, with the masks of this rank's slots."""
    B = len(labels)
    return Batch(video=video, label=torch.tensor([int(l) for l in labels], dtype=torch.int64),
                 masks=masker(B, step, first_slot=rank * B), step=int(step), index=list(index), skipped=list(skipped))


class ClipCollator:
    """DataLoader collate_fn: samples -> Batch, masks drawn in the worker.

    A sample is a dict with `video` (C, T, H, W), or (num_clips, C, T, H, W) flattened into one batch
    row per clip, `label`, `step` (set by the sampler, so masks do not depend on the worker count),
    `index` and `skipped` ((path, reason) of the files it replaced; listed once per sample).
    """

    def __init__(self, masker: MultiBlockMasker, rank: int = 0):
        self.masker = masker
        self.rank = rank

    def __call__(self, samples: list[dict]) -> Batch:
        clips, labels, index = [], [], []
        for s in samples:
            per_sample = s["video"] if s["video"].dim() == 5 else s["video"][None]  # (clips, C, T, H, W)
            clips += list(per_sample)
            labels += [s["label"]] * len(per_sample)
            index += [s["index"]] * len(per_sample)
        skipped = [item for s in samples for item in s["skipped"]]
        return make_batch(torch.stack(clips), labels, self.masker, samples[0]["step"], self.rank, index, skipped)
