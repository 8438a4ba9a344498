"""Clip sampling and augmentation parameters shared by every decoding backend: what a good clip is.

A sample's randomness is drawn from a generator seeded by (seed, step, index), so the frames, crop box
and flip of a sample are the same whichever backend, worker or process produces it. `plan_video` is
the one decision every backend makes the same way: frames are indices in presentation order (exact
counts from `decode.probe_video`, also for variable frame rates) at the video's frame step
(`video_frame_step`: `data.frame_step`, or from the video's rate with `data.fps`), exactly or spread
as the reference repos do (`data.frame_spacing`, `frame_offsets`); a file shorter than one clip
window is skipped (VideoError kind "too_short") or, with `data.short_videos: pad`, sampled with its
last frame repeated (`short_frame_indices`, `ClipPlan.padded`); boxes are drawn on the upright
(display) picture, non-square pixels shown at their aspect (`VideoInfo.sar`). Backends only execute a
`ClipPlan`: decode `frames` (all of them, or fail: the decoders never pad; a padded plan's repeated
indices are real frames), crop `box` (in stored pixels), resize to the crop size, turn upright by
`rotation`, flip, normalize with ImageNet mean/std, and lay out as (C, T, H, W).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vjepa_scale.data.decode import VideoError, VideoInfo, shown_width

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClipPlan:
    """What one clip is: frame indices into the video, crop box (top, left, height, width) in stored pixels,
    h-flip (of the upright clip), the counterclockwise rotation (degrees) that makes it upright, and
    whether the video is shorter than the clip window (`frames` repeat its last frame)."""

    frames: tuple[int, ...]
    box: tuple[int, int, int, int]
    flip: bool
    rotation: int = 0
    padded: bool = False


def sample_generator(seed: int, step: int, index: int) -> np.random.Generator:
    """The per-sample generator: depends only on (seed, step, index)."""
    return np.random.default_rng([int(seed), int(step), int(index)])


def frame_offsets(frames_per_clip: int, frame_step: int, spacing: str = "exact") -> list[int]:
    """A clip's frames as offsets from its first one (`data.frame_spacing`).

    exact: i x frame_step. linspace: the reference repos' rule, floor(linspace(0, fpc x step, fpc)) with
    the last offset clamped to fpc x step - 1 (16 frames at step 4: 0, 4, 8, 12, 17, ..., 59, 63, so
    the frames sit ~4.27 apart and the clip spans 64 frames instead of 61).
    """
    if spacing == "exact":
        return [i * frame_step for i in range(frames_per_clip)]
    if spacing != "linspace":
        raise ValueError(f"frame spacing must be 'exact' or 'linspace', got {spacing!r}")
    span = frames_per_clip * frame_step
    return np.clip(np.linspace(0, span, num=frames_per_clip), 0, span - 1).astype(np.int64).tolist()


def short_frame_indices(num_frames: int, frames_per_clip: int, frame_step: int, spacing: str = "exact") -> list[int]:
    """The frames of a clip from a video shorter than one clip window (`data.short_videos: pad`), its
    last frame repeated. exact: from frame 0 at the step. linspace (the reference's rule):
    num_frames // step frames spread evenly over the video, then its last frame repeated."""
    if spacing != "linspace":
        return [min(o, num_frames - 1) for o in frame_offsets(frames_per_clip, frame_step)]
    n = min(frames_per_clip, num_frames // frame_step)
    spread = np.clip(np.linspace(0, num_frames, num=n), 0, num_frames - 1).astype(np.int64).tolist()
    return spread + [num_frames - 1] * (frames_per_clip - n)


def clip_window(frames_per_clip: int, frame_step: int, spacing: str = "exact") -> int:
    """Frames one clip spans: (frames_per_clip - 1) x frame_step + 1 with exact spacing,
    frames_per_clip x frame_step with the reference's linspace (`frame_offsets`)."""
    return frame_offsets(frames_per_clip, frame_step, spacing)[-1] + 1


def clips_at(num_frames: int, frames_per_clip: int, frame_step: int, spacing: str, num_clips: int,
             start_of: Callable[[int, int], int]) -> list[list[int]]:
    """`num_clips` lists of `frames_per_clip` frame indices, `frame_offsets` apart (`spacing`): clip c
    starts at `start_of(c, last_start)`, in [0, last_start] (the last start of a whole window), called
    in clip order. A video shorter than one window gets `short_frame_indices` for every clip."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    offsets = frame_offsets(frames_per_clip, frame_step, spacing)
    last_start = num_frames - (offsets[-1] + 1)
    if last_start < 0:
        return [short_frame_indices(num_frames, frames_per_clip, frame_step, spacing) for _ in range(num_clips)]
    return [[start + o for o in offsets] for start in (start_of(c, last_start) for c in range(num_clips))]


def clip_frame_indices(num_frames: int, frames_per_clip: int, frame_step: int, num_clips: int,
                       rng: np.random.Generator, spacing: str = "exact") -> list[list[int]]:
    """Training's `clips_at`: the valid starts [0, last_start] are split into `num_clips` equal ranges and
    each clip draws its start uniformly from its own range (clips spread over the video). A video
    shorter than the window gets `short_frame_indices` (its last frame repeated): what
    `data.short_videos: pad` trains on (`plan_video`)."""
    def draw(c: int, last_start: int) -> int:
        if last_start == 0:
            return 0
        lo = (last_start + 1) * c // num_clips
        hi = max(lo, (last_start + 1) * (c + 1) // num_clips - 1)
        return int(rng.integers(lo, hi + 1))

    return clips_at(num_frames, frames_per_clip, frame_step, spacing, num_clips, draw)


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            rng: np.random.Generator, attempts: int = 10) -> tuple[int, int, int, int]:
    """(top, left, h, w) with area fraction ~U(scale) and aspect w/h ~log-U(ratio); center crop fallback."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the largest centred box whose aspect lies within `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def plan_clips(num_frames: int, height: int, width: int, data_cfg, seed: int, step: int, index: int,
               frame_step: int | None = None) -> list[ClipPlan]:
    """The `num_clips` ClipPlans of sample `index` at `step` (one crop box and flip per clip), frames
    `frame_step` apart (None: data_cfg.frame_step)."""
    rng = sample_generator(seed, step, index)
    frame_lists = clip_frame_indices(num_frames, data_cfg.frames_per_clip,
                                     data_cfg.frame_step if frame_step is None else frame_step,
                                     data_cfg.num_clips, rng, data_cfg.frame_spacing)
    plans = []
    for frames in frame_lists:
        box = random_resized_crop_box(height, width, tuple(data_cfg.random_resize_scale),
                                      tuple(data_cfg.random_resize_aspect_ratio), rng)
        flip = bool(data_cfg.horizontal_flip and rng.random() < 0.5)
        plans.append(ClipPlan(tuple(frames), box, flip))
    return plans


def video_frame_step(video_fps: float, data_cfg) -> int:
    """Frames between a clip's frames in a video of `video_fps` frames per second: with `data.fps`,
    max(1, ceil(video_fps) // data.fps) (V-JEPA 2's rule: 7 at 30 fps, 6 at 24 or 25, 3 at 12 for
    fps 4); without it, `data.frame_step` for every video."""
    if data_cfg.fps is None:
        return int(data_cfg.frame_step)
    return max(1, int(math.ceil(video_fps) // data_cfg.fps))


def stored_box(box: tuple[int, int, int, int], rotation: int, height: int, width: int,
               sar: float = 1.0) -> tuple[int, int, int, int]:
    """The box in stored pixels (`height` x `width`) that shows as `box` on the upright picture.

    The upright picture is the stored one shown `sar` times as wide (non-square pixels, `VideoInfo.sar`),
    then turned `rotation` degrees counterclockwise (np.rot90 with k = rotation / 90).
    """
    top, left, h, w = box
    shown = shown_width(width, sar)  # of the shown, unturned picture
    k = (rotation // 90) % 4
    if k == 1:
        top, left, h, w = left, shown - top - h, w, h
    elif k == 2:
        top, left = height - top - h, shown - left - w
    elif k == 3:
        top, left, h, w = height - left - w, top, w, h
    if sar != 1:  # shown columns -> stored columns
        first = min(width - 1, int(round(left / sar)))
        w = max(1, min(width, int(round((left + w) / sar))) - first)
        left = first
    return top, left, h, w


def plan_video(info: VideoInfo, data_cfg, seed: int, step: int, key: int) -> list[ClipPlan]:
    """The ClipPlans of probed file `info` for the sample keyed `key` at `step` (boxes in stored pixels),
    frames `video_frame_step` apart (spaced as `data.frame_spacing` says).

    A file with fewer frames than one clip spans raises VideoError (kind "too_short"), or with
    `data.short_videos: pad` gets plans that repeat its last frame (`padded`).
    """
    frame_step = video_frame_step(info.fps, data_cfg)
    window = clip_window(data_cfg.frames_per_clip, frame_step, data_cfg.frame_spacing)
    padded = info.num_frames < window
    if padded and data_cfg.short_videos != "pad":
        how = (f"frame step {frame_step} for data.fps={data_cfg.fps:g} at {info.fps:.3g} fps"
               if data_cfg.fps is not None else f"data.frame_step={frame_step}")
        raise VideoError(info.path, f"too short: {info.num_frames} frames, a clip spans {window} ({how}; "
                                    f"data.short_videos: pad keeps it)", "too_short")
    height, width = info.display_size
    plans = plan_clips(info.num_frames, height, width, data_cfg, seed, step, key, frame_step)
    return [dataclasses.replace(p, box=stored_box(p.box, info.rotation, info.height, info.width, info.sar),
                                rotation=info.rotation, padded=padded) for p in plans]


def orient_clip(x_THW: torch.Tensor, rotation: int, flip: bool) -> torch.Tensor:
    """Turn a clip (..., H, W) upright (`rotation` degrees counterclockwise), then mirror it if `flip`."""
    if rotation % 360:
        x_THW = torch.rot90(x_THW, (rotation // 90) % 4, dims=(-2, -1))
    return x_THW.flip(-1) if flip else x_THW


def normalize_clip(frames_THWC: torch.Tensor, box: tuple[int, int, int, int], flip: bool, crop_size: int,
                   rotation: int = 0) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, crop, crop): crop box, bilinear resize (antialiased), turn upright
    by `rotation`, flip, normalize."""
    top, left, h, w = box
    x_TCHW = frames_THWC[:, top:top + h, left:left + w].permute(0, 3, 1, 2).float()
    if (h, w) != (crop_size, crop_size):
        x_TCHW = F.interpolate(x_TCHW, size=(crop_size, crop_size), mode="bilinear", align_corners=False,
                               antialias=True)
    if rotation % 360:
        x_TCHW = torch.rot90(x_TCHW, (rotation // 90) % 4, dims=(2, 3))
    if flip:
        x_TCHW = x_TCHW.flip(-1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    x_TCHW = (x_TCHW - mean) / std
    return x_TCHW.permute(1, 0, 2, 3).contiguous()


def random_erase_(video_CTHW: torch.Tensor, prob: float, rng: np.random.Generator, area: tuple[float, float] = (0.02, 1 / 3),
                  aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10) -> torch.Tensor:
    """With chance `prob`, fill one box (area fraction ~U(area), height / width ~log-U(aspect)) of every frame
    with standard normal noise, the same box in every frame (the reference's random erasing, `cube` mode, on
    normalized pixels); in place. No box after `attempts` draws that do not fit: unchanged."""
    if prob <= 0 or rng.random() >= prob:
        return video_CTHW
    C, T, H, W = video_CTHW.shape
    for _ in range(attempts):
        target = H * W * rng.uniform(*area)
        ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        h, w = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < h < H and 0 < w < W:
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            noise = torch.from_numpy(rng.standard_normal((C, T, h, w), dtype=np.float32))
            video_CTHW[:, :, top:top + h, left:left + w] = noise.to(video_CTHW.dtype)
            break
    return video_CTHW


def denormalize_clip(video_CTHW: torch.Tensor) -> torch.Tensor:
    """Inverse of the normalization: (3, T, H, W) float -> pixel values in [0, 255] (float)."""
    kw = dict(dtype=video_CTHW.dtype, device=video_CTHW.device)
    mean = torch.tensor(IMAGENET_MEAN, **kw).view(3, 1, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, **kw).view(3, 1, 1, 1) * 255.0
    return video_CTHW * std + mean
