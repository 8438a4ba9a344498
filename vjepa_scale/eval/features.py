"""Frozen-encoder features: every (view, clip) of every video through the encoder once, kept in memory.

A video's features are `(num_views, num_clips * N, D)`: for each spatial view the token sets of its
temporal clips are concatenated, so the probe attends across clips; views are classified separately
and their predictions averaged. Under a distributed launch each rank encodes the videos `rank::world`
(few-shot probes: its share of each subset, `eval.data.rank_share`).
Items whose video is None (an unusable file, see `eval.data.EvalClips`) are left out and listed in
`FeatureSet.skipped`; those marked `padded` (shorter than one clip window) are listed in `FeatureSet.padded`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from vjepa_scale.data.skips import NoReadableVideosError
from vjepa_scale.distributed import any_rank


@dataclass
class FeatureSet:
    feats_MVND: torch.Tensor  # (videos, views, clips * tokens, D)
    labels_M: torch.Tensor  # int64 (videos,)
    index_M: torch.Tensor  # int64 (videos,): position in the index file
    skipped: list = field(default_factory=list)  # (path, "kind: reason") of the videos left out
    padded: list = field(default_factory=list)  # index positions of the videos whose clips repeat their last frame

    def __len__(self) -> int:
        return self.labels_M.shape[0]


def _collate(items: list[dict]) -> dict:
    kept = [it for it in items if it["video"] is not None]
    return {"video": torch.stack([it["video"] for it in kept]) if kept else None,
            "label": torch.tensor([it["label"] for it in kept], dtype=torch.int64),
            "index": torch.tensor([it["index"] for it in kept], dtype=torch.int64),
            "skipped": [it["skipped"] for it in items if it["video"] is None],
            "padded": [it["index"] for it in kept if it.get("padded")]}


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                     dtype: torch.dtype = torch.float32, num_workers: int = 0, rank: int = 0,
                     world_size: int = 1, store_dtype: Optional[torch.dtype] = None,
                     desc: str = "features", progress: bool = True,
                     positions: Optional[list[int]] = None) -> FeatureSet:
    """Encode this rank's share of `dataset` (items {video (V, K, C, T, H, W), label, index}): the items
    at `positions`, by default `rank::world_size`."""
    shard = Subset(dataset, list(range(rank, len(dataset), world_size)) if positions is None else positions)
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    store_dtype = store_dtype or (torch.float32 if dtype == torch.float32 else torch.bfloat16)
    feats, labels, index, skipped, padded = [], [], [], [], []
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    for batch in tqdm(loader, desc=desc, disable=not progress or rank != 0, leave=False):
        skipped += batch["skipped"]
        padded += batch["padded"]
        video = batch["video"]
        if video is None:
            continue
        B, V, K = video.shape[:3]
        with autocast:
            tok_XND = encoder(video.flatten(0, 2).to(device, non_blocking=True))
        N, D = tok_XND.shape[-2:]
        feats.append(tok_XND.reshape(B, V, K * N, D).to("cpu", store_dtype))
        labels.append(batch["label"])
        index.append(batch["index"])
    if any_rank(not feats):  # more ranks than videos, or all of a rank's unusable: every rank stops
        bad = "; ".join(f"{p} ({r})" for p, r in skipped[:3])
        mine = (f"rank {rank} of {world_size} got no usable videos ({len(dataset)} in the index"
                + (f"; {len(skipped)} unusable, e.g. {bad})" if skipped else ")"))
        raise NoReadableVideosError(f"{desc}: " + (mine if not feats else
                                                   "another rank got no usable videos (see its error)"))
    return FeatureSet(torch.cat(feats), torch.cat(labels), torch.cat(index), skipped, padded)


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
