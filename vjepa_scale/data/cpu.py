"""CPU backend: decode with PyAV inside DataLoader workers, augment with torch.

`VideoClips[(index, step)]` returns {video (C, T, H, W) float32 normalized (or (num_clips, C, T, H,
W) when data.num_clips > 1), label, step, index (the entry actually used), skipped}. A file that
fails (missing, empty, truncated, non-video, undecodable) is replaced by `skips.substitute` (the next
index entry, at most `max_retries` times); every failure is listed in the item's `skipped` as (path,
reason), so counts survive DataLoader worker processes and reach the trainer inside the batch. Probing and decoding one file may take at most data.decode_timeout_s
(`decode.Deadline`); a file that takes longer is skipped like an unreadable one.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from vjepa_scale.data.clips import normalize_clip, plan_clips
from vjepa_scale.data.decode import Deadline, DecodeTimeout, VideoError, VideoInfo, decode_frames, probe_video
from vjepa_scale.data.index import VideoIndex
from vjepa_scale.data.skips import NoReadableVideosError, substitute


class VideoClips(Dataset):
    """Clips of the videos listed in `index`, sampled and augmented per `data_cfg` (a DataConfig)."""

    def __init__(self, index: VideoIndex, data_cfg, max_retries: int = 16):
        self.index = index
        self.cfg = data_cfg
        self.max_retries = max_retries
        self._info: dict[str, VideoInfo] = {}
        self._bad: dict[str, str] = {}  # per-process memo: path -> reason

    def __len__(self) -> int:
        return len(self.index)

    def probe(self, i: int, deadline: Deadline | None = None) -> VideoInfo:
        path = self.index.paths[i]
        if path in self._bad:
            raise VideoError(path, self._bad[path])
        info = self._info.get(path)
        if info is None:
            try:
                info = probe_video(path, deadline)
            except VideoError as e:
                self._bad[path] = e.reason
                raise
            if len(self._info) < 200_000:
                self._info[path] = info
        return info

    def load(self, i: int, step: int) -> torch.Tensor:
        """The augmented clip(s) of entry `i` at `step`; raises VideoError if the file is unusable.

        Raises DecodeTimeout (a VideoError) when probing and decoding take longer than
        data.decode_timeout_s, whatever failure the interruption caused on the way.
        """
        with Deadline(self.index.paths[i], self.cfg.decode_timeout_s) as deadline:
            try:
                return self._load(i, step, deadline)
            except VideoError as e:
                if isinstance(e, DecodeTimeout) or not deadline.expired():
                    raise
                self._bad[e.path] = deadline.error().reason
                raise deadline.error() from None

    def _load(self, i: int, step: int, deadline: Deadline) -> torch.Tensor:
        info = self.probe(i, deadline)
        plans = plan_clips(info.num_frames, info.height, info.width, self.cfg, self.cfg.seed, step, i)
        frames = [f for p in plans for f in p.frames]
        try:
            pixels_THWC = torch.from_numpy(decode_frames(info.path, frames, info.num_frames, info.fps, deadline))
        except VideoError as e:
            self._bad[info.path] = e.reason
            raise
        T = self.cfg.frames_per_clip
        clips = [normalize_clip(pixels_THWC[c * T:(c + 1) * T], p.box, p.flip, self.cfg.crop_size)
                 for c, p in enumerate(plans)]
        return clips[0] if len(clips) == 1 else torch.stack(clips)

    def __getitem__(self, key) -> dict:
        index, step = key if isinstance(key, tuple) else (key, 0)
        i, video, skipped = substitute(index, len(self.index), lambda i: self.load(i, step), self.max_retries)
        return {"video": video, "label": self.index.labels[i], "step": int(step), "index": i, "skipped": skipped}


def check_readable(index: VideoIndex, max_failures: int = 256) -> None:
    """Fail fast when an index file has no decodable video: probe entries until one opens.

    Stops at the first readable file of each dataset (cheap for healthy data); raises
    NoReadableVideosError naming the index file and sample failures when none is found among the
    first `max_failures` entries.
    """
    start = 0
    for source, size in zip(index.sources, index.sizes):
        failures = []
        for i in range(start, start + min(size, max_failures)):
            try:
                probe_video(index.paths[i])
                break
            except VideoError as e:
                failures.append(f"{e.path} ({e.reason})")
        else:
            scope = "any" if size <= max_failures else f"the first {max_failures}"
            raise NoReadableVideosError(f"index file '{source}': none of {scope} of its {size} videos can be "
                                        f"read, e.g. " + "; ".join(failures[:3]))
        start += size
