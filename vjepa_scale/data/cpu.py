"""CPU backend: decode with PyAV inside DataLoader workers, augment with torch.

`VideoClips[(index, step, slot)]` returns {video (C, T, H, W) float32 normalized (or (num_clips, C, T,
H, W) when data.num_clips > 1), label, step, index (the entry actually used), skipped, padded (1 when
that entry is shorter than one clip and its last frame is repeated: data.short_videos: pad)}. An entry
that is unusable (missing, empty, truncated, non-video, undecodable, shorter than one clip unless
padded: see `clips.plan_video`) is replaced by `skips.substitute` (uniform seeded draws); every failure is listed
in the item's `skipped` as (path, "kind: reason"), so counts survive DataLoader worker processes and
reach the trainer inside the batch. Probing and decoding one file may take at most
data.decode_timeout_s (`decode.Deadline`); a file that takes longer is skipped like an unreadable one.

Mixed shapes: each dataset of the index may have its own clip shape (`DataConfig.dataset_shape`);
image datasets (`DatasetSpec.is_image`) decode a still with PIL, take one random-resized-crop box and
flip (`clips.random_resized_crop_box`, same seeding as videos) and repeat it to one tubelet.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from vjepa_scale.data.clips import normalize_clip, plan_video, random_resized_crop_box, sample_generator
from vjepa_scale.data.decode import (Deadline, DecodeTimeout, VideoError, VideoInfo, decode_clip_frames,
                                     probe_video)
from vjepa_scale.data.index import VideoIndex
from vjepa_scale.data.skips import READABLE_PROBES, check_datasets_readable, substitute

INFO_CACHE_MAX = 200_000  # probed files remembered per process (exact frame counts cost a packet scan)


class VideoClips(Dataset):
    """Clips of the videos listed in `index`, sampled and augmented per `data_cfg` (a DataConfig)."""

    def __init__(self, index: VideoIndex, data_cfg, tubelet: int = 2):
        self.index = index
        self.cfg = data_cfg
        # per dataset: its data config (own frames / crop) and whether it holds images
        self.images = [ds.is_image() for ds in data_cfg.datasets] if data_cfg.datasets else [False] * len(index.sizes)
        shapes = [data_cfg.dataset_shape(d, tubelet) if data_cfg.datasets else
                  (data_cfg.frames_per_clip, data_cfg.crop_size) for d in range(len(index.sizes))]
        self.cfgs = [data_cfg if (f, c) == (data_cfg.frames_per_clip, data_cfg.crop_size)
                     else dataclasses.replace(data_cfg, frames_per_clip=f, crop_size=c) for f, c in shapes]
        self._info: dict[str, VideoInfo] = {}
        self._bad: dict[str, VideoError] = {}  # per-process memo: path -> why it is unusable

    def __len__(self) -> int:
        return len(self.index)

    def probe(self, i: int, deadline: Deadline | None = None) -> VideoInfo:
        path = self.index.paths[i]
        if path in self._bad:
            raise self._bad[path]
        info = self._info.get(path)
        if info is None:
            try:
                info = probe_video(path, deadline)
            except VideoError as e:
                self._bad[path] = e
                raise
            if len(self._info) < INFO_CACHE_MAX:
                self._info[path] = info
        return info

    def load(self, i: int, step: int, key: int | None = None) -> torch.Tensor:
        """The augmented clip(s) of entry `i` at `step` (randomness keyed by `key`, default `i`); raises
        VideoError if the file or the clip is unusable. See `load_entry`."""
        return self.load_entry(i, step, key)[0]

    def load_entry(self, i: int, step: int, key: int | None = None) -> tuple[torch.Tensor, bool]:
        """(`load`'s clip(s), whether they repeat the video's last frame: `ClipPlan.padded`).

        Raises DecodeTimeout (a VideoError) when probing and decoding take longer than
        data.decode_timeout_s, whatever failure the interruption caused on the way. Any other exception
        (not MemoryError) becomes a VideoError "decode_error" naming the file, so the file is skipped.
        """
        path = self.index.paths[i]
        with Deadline(path, self.cfg.decode_timeout_s) as deadline:
            try:
                return self._load(i, step, i if key is None else key, deadline)
            except MemoryError:
                raise
            except Exception as e:
                if deadline.expired() and not isinstance(e, DecodeTimeout):  # what the interruption caused
                    self._bad[path] = deadline.error()
                    raise self._bad[path] from None
                if isinstance(e, VideoError):
                    raise
                self._bad[path] = VideoError(path, f"reading failed ({type(e).__name__}: {e})", "decode_error")
                raise self._bad[path] from e

    def _load_image(self, i: int, step: int, key: int) -> tuple[torch.Tensor, bool]:
        from PIL import Image

        d = self.index.dataset_of(i)
        cfg = self.cfgs[d]
        path = self.index.paths[i]
        try:
            with Image.open(path) as im:
                pixels_HWC = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
        except Exception as e:  # PIL raises many kinds on broken files
            raise VideoError(path, f"image unreadable: {e}", "unreadable") from None
        H, W, _ = pixels_HWC.shape
        rng = sample_generator(cfg.seed, step, key)
        box = random_resized_crop_box(H, W, tuple(cfg.random_resize_scale), tuple(cfg.random_resize_aspect_ratio), rng)
        flip = bool(cfg.horizontal_flip and rng.random() < 0.5)
        frames = pixels_HWC[None].expand(cfg.frames_per_clip, H, W, 3)  # one tubelet of the same image
        return normalize_clip(frames, box, flip, cfg.crop_size), False

    def _load(self, i: int, step: int, key: int, deadline: Deadline) -> tuple[torch.Tensor, bool]:
        d = self.index.dataset_of(i)
        if self.images[d]:
            return self._load_image(i, step, key)
        cfg = self.cfgs[d]
        info = self.probe(i, deadline)
        try:
            plans = plan_video(info, cfg, cfg.seed, step, key)
            pixels_THWC = torch.from_numpy(decode_clip_frames(info, [f for p in plans for f in p.frames], deadline))
        except VideoError as e:
            self._bad[info.path] = e
            raise
        T = cfg.frames_per_clip
        clips = [normalize_clip(pixels_THWC[c * T:(c + 1) * T], p.box, p.flip, cfg.crop_size, p.rotation)
                 for c, p in enumerate(plans)]
        return (clips[0] if len(clips) == 1 else torch.stack(clips)), plans[0].padded

    def resolve(self, index: int, step: int, slot: int, try_entry) -> tuple:
        """`skips.substitute` with this dataset's seed and data.max_bad_fraction."""
        return substitute(index, len(self.index), try_entry, seed=self.cfg.seed, step=step, slot=slot,
                          max_bad_fraction=self.cfg.max_bad_fraction, span=self.index.span(index))

    def __getitem__(self, key) -> dict:
        index, step, slot = (tuple(key) + (0, 0))[:3] if isinstance(key, tuple) else (key, 0, 0)
        i, (video, padded), skipped = self.resolve(index, step, slot, lambda j: self.load_entry(j, step, key=index))
        return {"video": video, "label": self.index.labels[i], "step": int(step), "index": i, "skipped": skipped,
                "slot": int(slot), "padded": int(padded)}


def check_readable(index: VideoIndex, max_failures: int = READABLE_PROBES, images: list[bool] | None = None) -> None:
    """Fail fast when an index file has no decodable video (`skips.check_datasets_readable` with PyAV
    probes; image datasets, `images[d]`, are not probed)."""

    def error_of(i: int) -> VideoError | None:
        try:
            probe_video(index.paths[i])
        except VideoError as e:
            return e
        return None

    check_datasets_readable(index, error_of, max_failures, skip=images)
