"""The batch contract: what every loader (cpu, dali, synthetic) yields and how it is built.

`make_batch` is the one builder: it draws the batch's masks (a pure function of (seed, micro-step,
global slot); rank r's rows are slots r*B .. r*B + B - 1 of the micro-step, every rank holding B rows)
and wraps video, labels and bookkeeping into a `Batch`. `ClipCollator` is the DataLoader collate_fn
of the CPU and synthetic paths; the DALI path calls `make_batch` on the clips it decoded.

Mixed shapes: when a batch's clips differ in shape (datasets with their own frames / crop, images),
`Batch.video` is a `vjepa_scale.mixed.MixedVideo` (one tensor per shape group, samples in group
order; labels, index and masks follow that order) and the masks use the packed mixed layout
(`MaskBatch.sample_grids`). Each clip's masks are keyed by its global slot (from the sampler), so
a batch filled to a token budget (fewer clips than its window) keeps every clip's masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from vjepa_scale.masks import MaskBatch, MultiBlockMasker
from vjepa_scale.mixed import MixedVideo


@dataclass
class Batch:
    """One micro-batch of B clips (B = samples x data.num_clips)."""

    video: torch.Tensor | MixedVideo  # (B, C, T, H, W) (float32 on the CPU, bf16 on the GPU from DALI), or mixed
    label: torch.Tensor  # (B,) int64
    masks: MaskBatch
    step: int  # the micro-step this batch belongs to
    index: list[int]  # index entry behind each clip (synthetic: the sample index)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of files replaced here
    clips_per_sample: int = 1  # data.num_clips: a sample (one draw of the sampler) gives that many rows
    padded: int = 0  # samples from videos shorter than one clip, their last frame repeated (data.short_videos: pad)

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "Batch":
        """Video (cast to `dtype` if given) and masks on `device`; labels and bookkeeping stay on the host."""
        return replace(self, video=self.video.to(device, dtype, non_blocking=True), masks=self.masks.to(device))

    @property
    def num_clips(self) -> int:
        return self.masks.batch_size

    @property
    def num_samples(self) -> int:
        """Sampler draws behind the batch (clips / data.num_clips): the unit the skip policy counts in."""
        return self.num_clips // self.clips_per_sample

    @property
    def num_tokens(self) -> int:
        """Full-clip tokens of the batch."""
        return self.masks.total_tokens

    def pin_memory(self) -> "Batch":
        """Page-locked copy of the host tensors (called by DataLoader(pin_memory=True))."""
        return replace(self, video=self.video.pin_memory(), label=self.label.pin_memory(),
                       masks=self.masks.pin_memory())


def make_batch(video: torch.Tensor | MixedVideo, labels: Sequence[int], masker: MultiBlockMasker, step: int,
               rank: int, index: list[int], skipped: list[tuple[str, str]],
               grids: Sequence[tuple[int, int, int]] | None = None, slots: Sequence[int] | None = None,
               clips_per_sample: int = 1, padded: int = 0) -> Batch:
    """The Batch of clips `video` (B, C, T, H, W) at `step`, with the masks of this rank's slots
    (rank x B + j); a mixed batch (`MixedVideo`) gives each sample's token grid and global slot;
    `padded`: how many of its samples repeat their video's last frame."""
    B = len(labels)
    return Batch(video=video, label=torch.tensor([int(l) for l in labels], dtype=torch.int64),
                 masks=masker(B, step, first_slot=rank * B, grids=grids, slots=slots), step=int(step),
                 index=list(index), skipped=list(skipped), clips_per_sample=clips_per_sample, padded=int(padded))


class ClipCollator:
    """DataLoader collate_fn: samples -> Batch, masks drawn in the worker.

    A sample is a dict with `video` (C, T, H, W), or (num_clips, C, T, H, W) flattened into one batch
    row per clip, `label`, `step` (set by the sampler, so masks do not depend on the worker count),
    `index`, `skipped` ((path, reason) of the files it replaced; listed once per sample) and, from
    file datasets, `padded` (1: its video's last frame is repeated).
    """

    def __init__(self, masker: MultiBlockMasker, rank: int = 0, tubelet: int = 2, patch: int = 16):
        self.masker = masker
        self.rank = rank
        self.tubelet, self.patch = tubelet, patch

    def grid(self, clip_CTHW: torch.Tensor) -> tuple[int, int, int]:
        _, T, H, W = clip_CTHW.shape
        return (T // self.tubelet, H // self.patch, W // self.patch)

    def __call__(self, samples: list[dict]) -> Batch:
        if len({tuple(s["video"].shape[-4:]) for s in samples}) > 1 or any(
                s.get("slot", self.rank * len(samples) + j) != self.rank * len(samples) + j
                for j, s in enumerate(samples)):
            return self.mixed(samples)
        return self.uniform(samples)

    def mixed(self, samples: list[dict]) -> Batch:
        """Clips of several shapes (or slots that are not rank x B + j: a token-budget batch)."""
        video, order = MixedVideo.from_clips([s["video"] for s in samples])
        return make_batch(video, [samples[i]["label"] for i in order], self.masker, samples[0]["step"], self.rank,
                          [samples[i]["index"] for i in order], [item for s in samples for item in s["skipped"]],
                          grids=[self.grid(samples[i]["video"]) for i in order],
                          slots=[samples[i]["slot"] for i in order], padded=_padded(samples))

    def uniform(self, samples: list[dict]) -> Batch:
        clips, labels, index = [], [], []
        for s in samples:
            per_sample = s["video"] if s["video"].dim() == 5 else s["video"][None]  # (clips, C, T, H, W)
            clips += list(per_sample)
            labels += [s["label"]] * len(per_sample)
            index += [s["index"]] * len(per_sample)
        skipped = [item for s in samples for item in s["skipped"]]
        # the masks on these clips' own grid (a per_step shape, a dataset's own frames/crop, images), not data.*'s
        return make_batch(torch.stack(clips), labels, self.masker, samples[0]["step"], self.rank, index, skipped,
                          grids=[self.grid(clips[0])] * len(clips), clips_per_sample=len(clips) // len(samples),
                          padded=_padded(samples))


def _padded(samples: list[dict]) -> int:
    """Samples whose clip repeats its video's last frame (an item without `padded`: not padded)."""
    return sum(int(s.get("padded", 0)) for s in samples)
