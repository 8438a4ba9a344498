"""Frozen-encoder features kept in host memory: every (view, clip) of every video through the encoder once.

A video's features are `(num_views, num_clips * N, D)`: for each spatial view the token sets of its
temporal clips are concatenated, so the probe attends across clips; views are classified separately
and their predictions averaged. Under a distributed launch each rank encodes the videos `rank::world`
(few-shot probes: its share of each subset, `eval.data.rank_share`).
Items whose video is None (an unusable file, see `eval.data.EvalClips`) are left out and listed in
`FeatureSet.skipped`; those marked `padded` (shorter than one clip window) are listed in `FeatureSet.padded`.

The probe reads features through `batches` (training samples: (video, view) pairs) and `videos` (every view
of a video, for evaluation); `eval.stream.StreamedFeatures` has the same two methods and encodes on the fly
when the features would not fit in memory (`run.features`, `feature_bytes`).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol

import torch
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from vjepa_scale.data.loader import StopSafeDataLoader, ignore_stop_signals, stop_workers
from vjepa_scale.data.skips import NoReadableVideosError
from vjepa_scale.distributed import any_rank
from vjepa_scale.train.metrics import is_terminal


class ProbeData(Protocol):
    """What a probe reads its features from (`FeatureSet`, `eval.stream.StreamedFeatures`): this rank's videos."""

    num_views: int
    dim: int  # feature width D

    def __len__(self) -> int: ...

    def batches(self, sels: list[torch.Tensor], device: torch.device, epoch: int = 0) -> Iterator[tuple]:
        """For each `sel` of sample ids (video * num_views + view): (x_SND float32 or None when no sample is
        usable, y_S, kept_S) on `device`; x and y hold the usable samples, kept (bool, len(sel)) marks them.
        `epoch`: the pass (augmented samples differ per epoch)."""

    def videos(self, device: torch.device, chunk: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x_MVND float32, y_M) on `device` over every usable video."""


@dataclass
class FeatureSet:
    feats_MVND: torch.Tensor  # (videos, views, clips * tokens, D)
    labels_M: torch.Tensor  # int64 (videos,)
    index_M: torch.Tensor  # int64 (videos,): position in the index file
    skipped: list = field(default_factory=list)  # (path, "kind: reason") of the videos left out
    padded: list = field(default_factory=list)  # index positions of the videos whose clips repeat their last frame

    def __len__(self) -> int:
        return self.labels_M.shape[0]

    @property
    def num_views(self) -> int:
        return self.feats_MVND.shape[1]

    @property
    def dim(self) -> int:
        return self.feats_MVND.shape[-1]

    def batches(self, sels: list[torch.Tensor], device: torch.device, epoch: int = 0) -> Iterator[tuple]:
        """`ProbeData.batches`; every sample of a FeatureSet is usable and the same every epoch."""
        x_SND, y_S = self.feats_MVND.flatten(0, 1), self.labels_M.repeat_interleave(self.num_views)
        for sel in sels:
            yield (x_SND[sel].to(device, torch.float32), y_S[sel].to(device),
                   torch.ones(len(sel), dtype=torch.bool, device=device))

    def videos(self, device: torch.device, chunk: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`ProbeData.videos`, `chunk` videos at a time."""
        for a in range(0, len(self), chunk):
            yield self.feats_MVND[a:a + chunk].to(device, torch.float32), self.labels_M[a:a + chunk].to(device)


def store_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """Features are kept (or, streamed, rounded) in fp32 under fp32 compute, else in bf16."""
    return torch.float32 if dtype == torch.float32 else torch.bfloat16


def feature_bytes(videos: int, views: int, clips: int, tokens: int, dim: int, dtype: torch.dtype) -> int:
    """Host memory the features of `videos` videos take: videos x views x clips x tokens x dim x bytes."""
    return videos * views * clips * tokens * dim * store_dtype_for(dtype).itemsize


@torch.no_grad()
def encode_videos(encoder: torch.nn.Module, video_BVKCTHW: torch.Tensor, device: torch.device, dtype: torch.dtype,
                  chunk: int) -> torch.Tensor:
    """(B, V, K * N, D) features in the store dtype on `device`, encoding `chunk` videos' clips per call."""
    B, V, K = video_BVKCTHW.shape[:3]
    out = []
    for a in range(0, B, chunk):
        part = video_BVKCTHW[a:a + chunk]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            tok_XND = encoder(part.flatten(0, 2).to(device, non_blocking=True))
        N, D = tok_XND.shape[-2:]
        out.append(tok_XND.reshape(part.shape[0], V, K * N, D).to(store_dtype_for(dtype)))
    return torch.cat(out)


def collate_videos(items: list[dict]) -> dict:
    """The usable items stacked (video None when there is none); `kept`: which items those are."""
    kept = [it for it in items if it["video"] is not None]
    return {"kept": torch.tensor([it["video"] is not None for it in items]),
            "video": torch.stack([it["video"] for it in kept]) if kept else None,
            "label": torch.tensor([it["label"] for it in kept], dtype=torch.int64),
            "index": torch.tensor([it["index"] for it in kept], dtype=torch.int64),
            "skipped": [it["skipped"] for it in items if it["video"] is None],
            "padded": [it["index"] for it in kept if it.get("padded")]}


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                     dtype: torch.dtype = torch.float32, num_workers: int = 0, rank: int = 0,
                     world_size: int = 1, desc: str = "features", progress: bool = True,
                     positions: Optional[list[int]] = None) -> FeatureSet:
    """Encode this rank's share of `dataset` (items {video (V, K, C, T, H, W), label, index}): the items
    at `positions`, by default `rank::world_size`."""
    shard = Subset(dataset, list(range(rank, len(dataset), world_size)) if positions is None else positions)
    loader = StopSafeDataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                collate_fn=collate_videos, worker_init_fn=ignore_stop_signals)
    feats, labels, index, skipped, padded = [], [], [], [], []  # feats: videos per encoded batch
    store, filled = None, 0
    lines = progress and rank == 0 and not is_terminal(sys.stderr)  # a log file: one line when done
    t0 = time.monotonic()
    it = iter(loader)
    try:
        for batch in tqdm(it, total=len(loader), desc=desc, disable=not progress or rank != 0 or lines, leave=False):
            skipped += batch["skipped"]
            padded += batch["padded"]
            video = batch["video"]
            if video is None:
                continue
            encoded = encode_videos(encoder, video, device, dtype, batch_size)
            if store is None:  # every usable video's features, filled in place: no copy at the end
                store = torch.empty((len(shard), *encoded.shape[1:]), dtype=encoded.dtype)
            store[filled:filled + len(encoded)] = encoded.cpu()
            filled += len(encoded)
            feats.append(len(encoded))
            labels.append(batch["label"])
            index.append(batch["index"])
    finally:  # an error in a batch: the workers end now, not at interpreter exit
        stop_workers(it)
    if any_rank(not feats):  # more ranks than videos, or all of a rank's unusable: every rank stops
        bad = "; ".join(f"{p} ({r})" for p, r in skipped[:3])
        mine = (f"rank {rank} of {world_size} got no usable videos ({len(dataset)} in the index"
                + (f"; {len(skipped)} unusable, e.g. {bad})" if skipped else ")"))
        raise NoReadableVideosError(f"{desc}: " + (mine if not feats else
                                                   "another rank got no usable videos (see its error)"))
    if lines:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {desc}: rank 0 encoded {filled} videos in "
              f"{tqdm.format_interval(time.monotonic() - t0)}", flush=True)
    return FeatureSet(store[:filled], torch.cat(labels), torch.cat(index), skipped, padded)


def effective_rank(x_XD: torch.Tensor) -> float:
    """exp(entropy) of the normalized singular-value spectrum of the centred rows (Roy & Vetterli 2007).

    D for isotropic features, 1 for features on a line: a collapse diagnostic for frozen encoders.
    """
    x = x_XD.double()
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def top_pc_share(x_XD: torch.Tensor) -> float:
    """Fraction of the centred rows' variance along their first principal component."""
    x = x_XD.double()
    var = torch.linalg.svdvals(x - x.mean(0)).pow(2)
    return float(var[0] / var.sum())
