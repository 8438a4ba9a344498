"""Streamed frozen features: the encoder runs on the fly for every probe batch and every evaluation pass.

For evaluations whose features do not fit in host memory (Kinetics-size sets with a ViT-H: terabytes;
`run.features`, `eval.features.feature_bytes`), as the reference evaluations do. `StreamedFeatures` reads
like a `FeatureSet` (`batches`, `videos`): the same sample ids, so a probe sees the same batches in the
same order and reaches the same result (up to the encoder's rounding on other batch shapes), at the cost
of encoding the train videos once per epoch and seed and the val videos once per epoch. A training sample
is one view of a video: with `data.num_views` > 1 each sample decodes its video again (V decodes of a video
per epoch, each cropping one view). Worker processes ignore SIGTERM / SIGUSR1 as training's do, so a stop
sent to the whole job reaches the ranks, which save (`eval.resume`). Streaming is also what
lets the probe train on new augmented clips every epoch (`data.train_augment`: `eval.data.AugmentedClips`).

An unusable video (`eval.data.EvalClips`: None) is left out of its batch, which is then smaller (a batch
with none left trains with zero gradient); it is listed in `skipped`, and videos shorter than one clip
window in `padded`, as `extract_features` does.
"""
from __future__ import annotations

import sys
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from vjepa_scale.data.loader import StopSafeDataLoader, ignore_stop_signals, stop_workers
from vjepa_scale.eval.features import collate_videos, encode_videos
from vjepa_scale.train.metrics import is_terminal


class _ViewSamples(Dataset):
    """Sample s -> the item of video `positions[s // views]` with only its view s % views."""

    def __init__(self, videos: Dataset, positions: list[int], views: int):
        self.videos, self.positions, self.views = videos, positions, views

    def __len__(self) -> int:
        return len(self.positions) * self.views

    def __getitem__(self, s: int) -> dict:
        i, v = self.positions[s // self.views], s % self.views
        if hasattr(self.videos, "item"):  # `EvalClips`: crops the one view (the video is decoded all the same)
            return self.videos.item(i, views=[v])
        item = dict(self.videos[i])
        if item["video"] is not None:
            item["video"] = item["video"][v:v + 1]
        return item


class StreamedFeatures:
    """This rank's videos (`positions` in `dataset`, a dataset of {video (V, K, C, T, H, W), label, index}),
    encoded by the frozen `encoder` whenever they are read."""

    def __init__(self, encoder: torch.nn.Module, dataset: Dataset, positions: list[int], num_views: int,
                 batch_size: int, device: torch.device, dtype: torch.dtype, num_workers: int = 0,
                 bar: str = ""):
        self.bar = bar  # a progress bar of this name over each `videos` pass (rank 0, on a terminal); "": none
        self.encoder, self.dataset, self.positions = encoder, dataset, positions
        self.num_views, self.batch_size, self.num_workers = num_views, batch_size, num_workers
        self.device, self.dtype = device, dtype
        self.skipped: dict = {}  # path -> "kind: reason", over every pass so far
        self.padded: set = set()  # index positions

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def dim(self) -> int:
        return self.encoder.embed_dim

    def _encode(self, loader: DataLoader) -> Iterator[tuple[dict, torch.Tensor]]:
        it = iter(loader)
        try:
            for batch in it:
                self.skipped.update(dict(batch["skipped"]))
                self.padded.update(batch["padded"])
                feats = None
                if batch["video"] is not None:
                    feats = encode_videos(self.encoder, batch["video"], self.device, self.dtype, self.batch_size)
                yield batch, feats
        finally:  # a pass left early (an error, a stop, enough for a sample): its workers end now
            stop_workers(it)

    def batches(self, sels: list[torch.Tensor], device: torch.device, epoch: int = 0) -> Iterator[tuple]:
        """`ProbeData.batches`: `kept_S` is false for the samples whose video is unusable. A dataset with
        `set_epoch` (`eval.data.AugmentedClips`) draws the epoch's augmentations."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # before the loader's workers copy the dataset
        samples = _ViewSamples(self.dataset, self.positions, self.num_views)
        loader = StopSafeDataLoader(samples, batch_sampler=[sel.tolist() for sel in sels],
                                    num_workers=self.num_workers, collate_fn=collate_videos,
                                    worker_init_fn=ignore_stop_signals)
        for batch, feats in self._encode(loader):
            x_SND = None if feats is None else feats[:, 0].to(device, torch.float32)  # None: nothing usable
            yield x_SND, batch["label"].to(device), batch["kept"].to(device)

    def videos(self, device: torch.device, chunk: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`ProbeData.videos`, `data.batch_size` videos at a time (`chunk` is not used)."""
        loader = StopSafeDataLoader(Subset(self.dataset, self.positions), batch_size=self.batch_size, shuffle=False,
                                    num_workers=self.num_workers, collate_fn=collate_videos,
                                    worker_init_fn=ignore_stop_signals)
        if self.bar and is_terminal(sys.stderr):
            loader = tqdm(loader, desc=self.bar, leave=False)
        for batch, feats in self._encode(loader):
            if feats is not None:
                yield feats.to(device, torch.float32), batch["label"].to(device)
