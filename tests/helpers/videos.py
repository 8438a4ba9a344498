"""Encoded test videos: the small sets the data tests share, VP9 clips that stream from a pipe, a set with
broken entries, a config reading index files, an index writer, and the frame numbers stamped into
`frame_index` clips, and long numbered clips (`numbered_frames`, read back by `frame_numbers`)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from vjepa_scale.config import Config, DatasetSpec

from .builders import tiny_config


def write_video_sets(base: Path) -> dict[str, dict[str, Path]]:
    """Small encoded sets (name -> {"train": index}): frame-index videos in 4 codecs ("index") and VP9
    only ("index_vp9"), 5-frame ones ("short"), moving shapes in VP9 + H.264 ("shapes")."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    return {
        "index": write_synthetic_videos(base / "index", 4, 20, 32, ("h264", "vp9", "hevc", "mjpeg"), val_fraction=0,
                                        pattern="frame_index"),
        "index_vp9": write_synthetic_videos(base / "index_vp9", 2, 20, 32, ("vp9",), val_fraction=0,
                                            pattern="frame_index"),
        "short": write_synthetic_videos(base / "short", 2, 5, 32, ("h264", "vp9"), val_fraction=0,
                                        pattern="frame_index"),
        "shapes": write_synthetic_videos(base / "shapes", 12, 12, 32, ("vp9", "h264"), val_fraction=0),
    }


def streamable_videos(folder: Path, n: int = 4) -> list[str]:
    """`n` small VP9 videos (12 frames, 32 px) written in `folder`: WebM needs no seek, so they can be read
    from a pipe. Returns their paths."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    index = write_synthetic_videos(folder, n, 12, 32, ("vp9",), val_fraction=0)["train"]
    return [line.split()[0] for line in open(index).read().splitlines()]


def write_bad_set(shapes_index: Path, folder: Path) -> tuple[Path, list[str]]:
    """An index of 6 good videos (from `shapes_index`) mixed with corrupt, empty, truncated, non-video
    and missing entries, written in `folder`. Returns (index, the bad entries)."""
    good = [l.split()[0] for l in open(shapes_index).read().splitlines()[:6]]
    mp4 = next(p for p in good if p.endswith(".mp4"))
    webm = next(p for p in good if p.endswith(".webm"))
    bad = {
        "corrupt.mp4": os.urandom(3000),
        "empty.webm": b"",
        "truncated.mp4": open(mp4, "rb").read()[: os.path.getsize(mp4) // 2],
        "truncated.webm": open(webm, "rb").read()[: os.path.getsize(webm) // 3],
        "notes.txt": b"this is not a video\n",
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    entries = good[:3] + [str(folder / n) for n in bad] + [str(folder / "missing.mp4")] + good[3:]
    index = folder / "mixed.txt"
    index.write_text("".join(f"{p} 1\n" for p in entries))
    return index, [e for e in entries if e not in good]


def video_cfg(index_paths, backend="cpu", frames=4, step=3, crop=32, batch=2, workers=0, **data_kw) -> Config:
    """A tiny config reading the weighted index files `index_paths` [(path, weight)]."""
    cfg = tiny_config(crop=crop, frames=frames, batch_size=batch, depth=1)
    datasets = [DatasetSpec(str(p), w) for p, w in index_paths]
    cfg.data = dataclasses.replace(cfg.data, backend=backend, datasets=datasets, frame_step=step,
                                   num_workers=workers, **data_kw)
    return cfg.validate()


def write_index(path: Path, entries, label: int = 0) -> Path:
    """An index file at `path` listing `entries` (video paths), each with `label`."""
    path.write_text("".join(f"{e} {label}\n" for e in entries))
    return path


def frame_ids(video_CTHW: torch.Tensor) -> list[int]:
    """Read back the frame numbers stamped into a frame_index clip (grey level per frame)."""
    from vjepa_scale.data.clips import denormalize_clip
    from vjepa_scale.data.synthetic_videos import INDEX_LEVEL_STEP, frame_index_level

    level = denormalize_clip(video_CTHW.float()).mean(dim=(0, 2, 3))
    return [int(round((v.item() - frame_index_level(0)) / INDEX_LEVEL_STEP)) for v in level]


def numbered_frames(frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 grey frames numbered up to 899: the top half shows frame t % 30, the bottom half
    t // 30, each as a `frame_index` level."""
    from vjepa_scale.data.synthetic_videos import frame_index_level

    assert frames <= 900
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        out[t, : height // 2] = frame_index_level(t % 30)
        out[t, height // 2:] = frame_index_level(t // 30)
    return out


def frame_numbers(frames_THWC: np.ndarray) -> list[int]:
    """Read back the numbers of decoded `numbered_frames` (uint8 (T, H, W, 3))."""
    from vjepa_scale.data.synthetic_videos import INDEX_LEVEL_STEP, frame_index_level

    h = frames_THWC.shape[1]
    # the rows next to the middle mix both halves (chroma, deblocking): read each half's centre
    top = frames_THWC[:, h // 8: 3 * h // 8].reshape(len(frames_THWC), -1).mean(1)
    bottom = frames_THWC[:, 5 * h // 8: 7 * h // 8].reshape(len(frames_THWC), -1).mean(1)
    level = lambda v: int(round((v - frame_index_level(0)) / INDEX_LEVEL_STEP))  # noqa: E731
    return [level(b) * 30 + level(t) for t, b in zip(top, bottom)]
