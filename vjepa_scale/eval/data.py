"""Labeled eval data: strict `path label` index reading and deterministic multi-clip, multi-view sampling.

Each video gives `num_views` x `num_clips` clips. Clips are `frames_per_clip` frames, their windows
evenly spread over the video (one clip: the centred window). The frame step is `data.frame_step`, or
with `data.fps` set max(1, ceil(video fps) // fps) per video (`data.clips.video_frame_step`, as in
training); `data.frame_spacing` places the frames: `exact` one step apart, `linspace` spread over
`frames_per_clip` x step frames (`data.clips.frame_offsets`). Views are square crops of side
min(H, W) / resize_ratio spread evenly along the longer side (one view: the centre), resized to
`crop_size`. No randomness: the same video always gives the same tensors (`AugmentedClips`, the train items
of `data.train_augment`, draw from (seed, epoch, video)).
Decoding and normalization are the data pipeline's (`vjepa_scale.data.decode` / `.clips`), rotation
included. An unusable file (missing, unreadable, truncated, ...: a `VideoError`) is not replaced, as in
training, but left out: its item has video None and `skipped` (path, "kind: reason"); feature
extraction drops it and counts it (`FeatureSet.skipped`, `result.json`'s `skipped_videos`). A video
shorter than one clip window is kept, its last frame repeated (every video of an eval set is scored);
its item is marked `padded`, and the evaluation counts and reports those videos (`FeatureSet.padded`,
`result.json`'s `padded_videos`).
"""
from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np
import torch
from torch.utils.data import Dataset

from vjepa_scale.config import ConfigError
from vjepa_scale.data.clips import (clip_window, clips_at, normalize_clip, plan_video, random_erase_, stored_box,
                                    video_frame_step)
from vjepa_scale.data.decode import (Deadline, VideoError, VideoInfo, decode_clip_frames, first_readable,
                                     probe_video)
from vjepa_scale.data.index import read_index
from vjepa_scale.eval.config import EvalDataConfig

log = logging.getLogger("vjepa_scale.eval")


def read_labeled_index(path: str | os.PathLike, key: str) -> tuple[list[str], list[int]]:
    """(paths, labels) of an index whose every line is `path label` with an integer label >= 0.

    Relative paths resolve against the index's folder. Errors name `key`, the file and the line; a folder
    (images, no labels) is refused.
    """
    return read_index(path, key, require_labels=True)


def probe_classes(train_labels: list[int], val_labels: list[int], val_paths: list[str], cfg: EvalDataConfig,
                  warn: bool = True) -> int:
    """The probe's number of classes: `data.num_classes`, else 1 + the largest label of either index.

    ConfigError when a label is not below it, or when the train videos do not have two distinct labels.
    With `warn` (rank 0), a log warning when it is over twice the distinct train labels (gaps in the
    numbering: every unused label is a head output), when val videos have labels no train video has
    (they cannot be predicted), and when the val index lists a video more than once (scored each time)."""
    classes = sorted(set(train_labels))
    if len(classes) < 2:
        raise ConfigError(f"data.train_index: every train video has label {classes[0]}; a probe needs at least 2 "
                          f"classes")
    num_classes = cfg.num_classes or 1 + max(train_labels + val_labels)
    for key, labels in (("data.train_index", train_labels), ("data.val_index", val_labels)):
        if max(labels) >= num_classes:
            raise ConfigError(f"{key}: label {max(labels)} >= data.num_classes={num_classes}")
    if not warn:
        return num_classes
    if num_classes > 2 * len(classes):
        shown = ", ".join(map(str, classes[:6])) + (", ..." if len(classes) > 6 else "")
        fix = ("lower data.num_classes or check the labels" if cfg.num_classes else
               f"number the classes 0..{len(classes) - 1} (or set data.num_classes)")
        log.warning("eval: the probe head has %d outputs (%s) but the train videos use %d distinct labels (%s): "
                    "each unused label is an output that never trains; %s", num_classes,
                    "data.num_classes" if cfg.num_classes else "1 + the largest label", len(classes), shown, fix)
    unseen = sorted(set(val_labels) - set(classes))
    if unseen:
        count = sum(y in set(unseen) for y in val_labels)
        log.warning("eval: %d val videos have labels no train video has (%s): the probe cannot predict them, so "
                    "they count as errors in val top-1", count, ", ".join(map(str, unseen[:6])) +
                    (", ..." if len(unseen) > 6 else ""))
    listed = Counter(os.path.normpath(p) for p in val_paths)
    repeated = [(p, n) for p, n in listed.items() if n > 1]
    if repeated:
        log.warning("eval: data.val_index lists %d videos more than once (e.g. %s, %d times): each listing is "
                    "scored, so those videos weigh more in val top-1", len(repeated), *repeated[0])
    return num_classes


VAL_PROBES = 8  # val videos probed (in index order, until one reads) before any train video is encoded


def check_val_readable(paths: list[str], index: str, key: str = "data.val_index",
                       timeout_s: float = 60.0) -> None:
    """NoReadableVideosError naming `key` and the index when none of the first VAL_PROBES videos of `paths`
    can be read (`probe_video`, at most `timeout_s` each): checked before the train features are extracted,
    which on a large train set takes hours that an unusable val set would waste."""
    from vjepa_scale.data.skips import unreadable_index_error

    failures = [f"{e.path} ({e.reason})" for e in first_readable(paths[:VAL_PROBES], probe_video, timeout_s)]
    if paths and not failures:  # one read
        return
    error = unreadable_index_error(index, len(paths), len(failures), failures)
    raise type(error)(f"{key}: {error} (checked before any train video is encoded)")


def check_disjoint(train_paths: list[str], val_paths: list[str], cfg: EvalDataConfig) -> None:
    """`ConfigError` naming both index files, the count and an example when a video (by resolved path,
    symlinks followed) is in both, unless `data.allow_overlap`."""
    if cfg.allow_overlap:
        return
    train = {os.path.realpath(p) for p in train_paths}
    both = [p for p in dict.fromkeys(val_paths) if os.path.realpath(p) in train]
    if both:
        raise ConfigError(f"data.train_index {cfg.train_index} and data.val_index {cfg.val_index} share {len(both)} "
                          f"videos (e.g. {both[0]}): the probe would be scored on videos it trained on; "
                          f"set data.allow_overlap=true if that is intended")


def per_class_subset(labels: list[int], per_class: int, seed: int, key: str = "data.train_per_class") -> list[int]:
    """Sorted positions of `per_class` videos of each class, drawn without replacement with `seed`."""
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == c]
        if len(members) < per_class:
            raise ConfigError(f"{key}={per_class} but class {c} has only {len(members)} videos in the index")
        chosen += [members[j] for j in torch.randperm(len(members), generator=g)[:per_class].tolist()]
    return sorted(chosen)


def rank_share(chosen: list[int], rank: int, world: int, per_class: int,
               key: str = "data.train_per_class") -> list[int]:
    """This rank's share `chosen[rank::world]` of a few-shot subset that every rank chose identically.

    Sharding the chosen positions (not the index) spreads them evenly over ranks. Raises `ConfigError`
    on every rank, before any collective, when some rank would get none (fewer videos than ranks).
    """
    if len(chosen) < world:
        raise ConfigError(f"{key}={per_class} selects {len(chosen)} train videos, fewer than the {world} ranks "
                          f"(world size): every rank needs one; raise {key} or launch fewer processes")
    return chosen[rank::world]


def eval_frame_indices(num_frames: int, frames_per_clip: int, frame_step: int, num_clips: int,
                       spacing: str = "exact") -> list[list[int]]:
    """`num_clips` windows of `frames_per_clip` frames `frame_offsets` apart (`spacing`), evenly spread.

    A video shorter than one window gets `short_frame_indices` (its last frame repeated).
    """
    def spread(c: int, last_start: int) -> int:
        return last_start // 2 if num_clips == 1 else round(c * last_start / (num_clips - 1))

    return clips_at(num_frames, frames_per_clip, frame_step, spacing, num_clips, spread)


def view_boxes(height: int, width: int, num_views: int, resize_ratio: float) -> list[tuple[int, int, int, int]]:
    """`num_views` square (top, left, side, side) boxes of side min(H, W) / resize_ratio.

    Spread evenly along the longer side (the width when square), centred on the other.
    """
    side = max(1, int(round(min(height, width) / resize_ratio)))
    along_w = width >= height
    room = (width if along_w else height) - side
    across = ((height if along_w else width) - side) // 2
    if num_views == 1:
        offsets = [room // 2]
    else:
        offsets = [round(v * room / (num_views - 1)) for v in range(num_views)]
    return [(across, o, side, side) if along_w else (o, across, side, side) for o in offsets]


EVAL_DECODE_TIMEOUT_S = 60.0  # reading one file longer than this: left out like an unreadable one


class EvalClips(Dataset):
    """item i -> {video (num_views, num_clips, C, T, crop, crop) float32 (None: unusable), label, index, skipped,
    padded}.

    `skipped`: None, or (path, "kind: reason") of the file when it is unusable. `padded`: the video is
    shorter than one clip window (`clip_window`), so its clips repeat its last frame.
    """

    def __init__(self, paths: list[str], labels: list[int], cfg: EvalDataConfig,
                 decode_timeout_s: float = EVAL_DECODE_TIMEOUT_S):
        self.paths, self.labels, self.cfg = paths, labels, cfg
        self.decode_timeout_s = decode_timeout_s

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return self.item(i)

    def item(self, i: int, views: list[int] | None = None) -> dict:
        """Item i with only `views` (indices into its `num_views` views; None: all of them)."""
        item = {"video": None, "label": self.labels[i], "index": i, "skipped": None, "padded": False}
        try:
            with Deadline(self.paths[i], self.decode_timeout_s) as deadline:
                info = probe_video(self.paths[i], deadline)
                item["video"] = self.clips(i, deadline, info, views)
        except VideoError as e:
            item["skipped"] = (e.path, e.summary)
            return item
        item["padded"] = info.num_frames < clip_window(self.cfg.frames_per_clip, video_frame_step(info.fps, self.cfg),
                                                       self.cfg.frame_spacing)
        return item

    def clips(self, i: int, deadline: Deadline | None = None, info: VideoInfo | None = None,
              views: list[int] | None = None) -> torch.Tensor:
        """(num_views, num_clips, C, T, crop, crop) of video i (`info`: its `probe_video`, probed here when
        None; `views`: only those, in that order); VideoError when the file is unusable."""
        c = self.cfg
        info = info if info is not None else probe_video(self.paths[i], deadline)
        windows = eval_frame_indices(info.num_frames, c.frames_per_clip, video_frame_step(info.fps, c), c.num_clips,
                                     c.frame_spacing)
        pixels_THWC = torch.from_numpy(decode_clip_frames(info, [f for w in windows for f in w], deadline))
        T = c.frames_per_clip
        out = []
        boxes = view_boxes(*info.display_size, c.num_views, c.resize_ratio)
        for box in boxes if views is None else [boxes[v] for v in views]:
            box = stored_box(box, info.rotation, info.height, info.width, info.sar)
            out.append(torch.stack([normalize_clip(pixels_THWC[k * T:(k + 1) * T], box, False, c.crop_size,
                                                   info.rotation) for k in range(c.num_clips)]))
        return torch.stack(out)


class AugmentedClips(EvalClips):
    """Training items of `data.train_augment`: item i -> video (1, num_clips, C, T, crop, crop), one sample whose
    clips take random windows spread over the video, each a random resized crop and flip
    (`data.clips.plan_video`, as pretraining draws them) and random erasing (`data.clips.random_erase_`).

    The draws depend on (seed, epoch, i) only, whichever rank, worker or world size reads the item;
    `set_epoch` picks the epoch before a pass.
    """

    def __init__(self, paths: list[str], labels: list[int], cfg: EvalDataConfig, seed: int,
                 decode_timeout_s: float = EVAL_DECODE_TIMEOUT_S):
        super().__init__(paths, labels, cfg, decode_timeout_s)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def clips(self, i: int, deadline: Deadline | None = None, info: VideoInfo | None = None,
              views: list[int] | None = None) -> torch.Tensor:
        c = self.cfg  # one sample per video: `views` does not apply
        info = info if info is not None else probe_video(self.paths[i], deadline)
        plans = plan_video(info, c, self.seed, self.epoch, i)
        pixels_THWC = torch.from_numpy(decode_clip_frames(info, [f for p in plans for f in p.frames], deadline))
        erase_rng = np.random.default_rng([self.seed, self.epoch, i, 1])  # apart from plan_video's draws
        T = c.frames_per_clip
        return torch.stack([random_erase_(normalize_clip(pixels_THWC[k * T:(k + 1) * T], p.box, p.flip, c.crop_size,
                                                         p.rotation), c.random_erase_prob, erase_rng)
                            for k, p in enumerate(plans)])[None]
