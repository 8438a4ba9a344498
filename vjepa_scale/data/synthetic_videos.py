"""Real encoded synthetic videos: moving textured shapes labelled by their direction of motion.

`write_synthetic_videos(out_dir, num_videos, ...)` writes H.264 (.mp4), VP9 (.webm) or MJPEG (.avi)
files through PyAV plus `train.txt` / `val.txt` index files (`path label` lines, absolute paths; no
`val.txt` when the split holds no video, e.g. val_fraction=0).
The label is the direction a textured square moves in (0 right, 1 left, 2 down, 3 up) over a static
textured background: no single frame reveals it, so a model must use time.

`pattern="noisy_square"`: a checkered square moving over block noise redrawn every frame (round 3 of
docs/EXPERIMENT.md). `pattern="frame_index"` writes flat frames whose grey level encodes the frame
number (`frame_index_level(i)`), so tests can read back which frames a clip holds after crop and resize.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

DIRECTIONS = ("right", "left", "down", "up")
_VELOCITY = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}  # (dy, dx) per label
# codec name -> (PyAV encoder, container extension, pixel format, encoder options)
CODECS = {
    "h264": ("libx264", ".mp4", "yuv420p", {"preset": "ultrafast", "crf": "18"}),
    "vp9": ("libvpx-vp9", ".webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    "mjpeg": ("mjpeg", ".avi", "yuvj420p", {"q:v": "2"}),
    "hevc": ("libx265", ".mp4", "yuv420p", {"preset": "ultrafast", "crf": "18", "x265-params": "log-level=error"}),
}
PATTERNS = ("shapes", "noisy_square", "frame_index")
INDEX_LEVEL_STEP = 8  # grey levels between consecutive frame indices in pattern="frame_index"


def frame_index_level(i: int) -> int:
    """Grey level (0-255) of frame `i` in a `frame_index` video; distinct for i < 32 (levels 4 to 252)."""
    return 4 + INDEX_LEVEL_STEP * i


def write_video(path: str | os.PathLike, frames_THWC, fps: int = 8, codec: str = "h264",
                options: dict | None = None, rotation: int = 0,
                timestamps_ms: Optional[Sequence[int]] = None, container_options: dict | None = None) -> None:
    """Encode uint8 RGB frames (T, H, W, 3), or an iterable of (H, W, 3) frames, to `path` with `codec`
    (a key of `CODECS`).

    `options` add to / override the codec's encoder options (e.g. {"g": "4"}: a keyframe every 4).
    `rotation`: display rotation stored in the file (degrees counterclockwise; players show the frames
    turned by it, like a phone video). `timestamps_ms`: each frame's presentation time in ms (a
    variable frame rate); default: constant `fps`. `container_options`: the muxer's (e.g. {"movflags":
    "frag_keyframe+empty_moov"}: a fragmented MP4).
    """
    from fractions import Fraction

    import av

    if codec not in CODECS:
        raise ValueError(f"unknown codec '{codec}' (choose from {sorted(CODECS)})")
    encoder, _, pix_fmt, codec_options = CODECS[codec]
    frames = iter(frames_THWC)  # an array, or any iterable of (H, W, 3) frames (long videos: a generator)
    first = next(frames)
    H, W, _ = first.shape
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(encoder, rate=fps, options={**codec_options, **(options or {})})
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        if timestamps_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for t, pixels in enumerate(itertools.chain([first], frames)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            if timestamps_ms is not None:
                frame.pts, frame.time_base = int(timestamps_ms[t]), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _smooth_texture(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency colour texture (size, size, 3) in [0, 255] (bilinear upsampling of noise)."""
    low = rng.uniform(0, 255, size=(cells + 1, cells + 1, 3))
    x = np.linspace(0, cells, size, endpoint=False)
    i0 = np.floor(x).astype(int)
    f = (x - i0)[:, None]
    rows = low[i0] * (1 - f[..., None]) + low[i0 + 1] * f[..., None]                  # (size, cells+1, 3)
    out = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]       # (size, size, 3)
    return out


def moving_shape_frames(label: int, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(T, size, size, 3) uint8: a checkered square moving in direction `label` over a textured background."""
    background = 0.5 * _smooth_texture(rng, size, 4) + 40
    side = max(4, size // 3)
    checker = ((np.arange(side)[:, None] // max(1, side // 4) + np.arange(side)[None] // max(1, side // 4)) % 2)
    color_a, color_b = rng.uniform(150, 255, 3), rng.uniform(0, 90, 3)
    patch = np.where(checker[..., None] == 1, color_a, color_b)
    dy, dx = _VELOCITY[int(label)]
    speed = max(1, size // 16)
    y0, x0 = rng.integers(0, size, 2)
    out = np.empty((frames, size, size, 3), np.uint8)
    ys, xs = np.arange(side), np.arange(side)
    for t in range(frames):
        img = background.copy()
        y = (y0 + dy * speed * t + ys) % size
        x = (x0 + dx * speed * t + xs) % size
        img[np.ix_(y, x)] = patch
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def noisy_square_frames(label: int, frames: int, size: int, rng: np.random.Generator, side: int = 16,
                        speed: float = 2.0, count: int = 1, noise: float = 200.0, cell: int = 4) -> np.ndarray:
    """(T, size, size, 3) uint8: `count` checkered squares moving together in direction `label`.

    The background is block noise (cells of `cell` px, uniform in [0, noise)) redrawn every frame, or
    flat dark grey with noise=0, so only what persists and moves (the squares) is predictable.
    """
    q = max(1, side // 4)
    checker = (np.arange(side)[:, None] // q + np.arange(side)[None] // q) % 2
    patch = np.where(checker[..., None] == 1, 230.0, 120.0)
    dy, dx = _VELOCITY[int(label)]
    starts = rng.integers(0, size, (count, 2))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        img = np.full((size, size, 3), 20.0)
        if noise:
            cells = rng.uniform(0, noise, (size // cell, size // cell, 3))
            img = np.repeat(np.repeat(cells, cell, 0), cell, 1)
        for y0, x0 in starts:
            y = (y0 + int(round(dy * speed * t)) + np.arange(side)) % size
            x = (x0 + int(round(dx * speed * t)) + np.arange(side)) % size
            img[np.ix_(y, x)] = patch
        out[t] = img.astype(np.uint8)
    return out


def frame_index_frames(frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 flat grey frames, frame t at level `frame_index_level(t)`."""
    if frame_index_level(frames - 1) > 255:
        raise ValueError(f"pattern frame_index supports at most 32 frames, got {frames}")
    levels = np.array([frame_index_level(t) for t in range(frames)], np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()


def num_val_videos(num_videos: int, val_fraction: float) -> int:
    """Videos `write_synthetic_videos` puts in val.txt: round(val_fraction * num_videos), at least one left for training."""
    return min(max(int(round(val_fraction * num_videos)), 0), num_videos - 1)


def write_synthetic_videos(out_dir: str | os.PathLike, num_videos: int = 32, frames: int = 16, size: int = 64,
                           codecs: Sequence[str] = ("h264", "vp9"), fps: int = 8, val_fraction: float = 0.25,
                           seed: int = 0, pattern: str = "shapes",
                           square: Optional[dict] = None) -> dict[str, Path]:
    """Write `num_videos` videos (codecs alternate) and `train.txt` / `val.txt`; returns their paths.

    Labels cycle through the four directions, so every class appears in both splits. When no video goes
    to validation (`num_val_videos` is 0: val_fraction=0, or one video), no val.txt is written (an
    earlier one in `out_dir`, listing videos now rewritten, is removed) and the result has no "val" key.
    `square`: keyword arguments of `noisy_square_frames` (side, speed, count, noise, cell) for that pattern.
    """
    if num_videos < 1 or frames < 1 or size < 16 or size % 2:
        raise ValueError(f"need num_videos >= 1, frames >= 1, an even size >= 16; got {num_videos}, {frames}, {size}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    square = dict(square or {})
    if square and pattern != "noisy_square":
        raise ValueError(f"square settings {sorted(square)} apply to pattern noisy_square, not {pattern!r}")
    unknown = set(square) - {"side", "speed", "count", "noise", "cell"}
    if unknown:
        raise ValueError(f"unknown noisy_square settings {sorted(unknown)} (known: side, speed, count, noise, cell)")
    out = Path(out_dir).expanduser().resolve()  # `~/data` quoted (or from a script): the home folder, not ./~
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(num_videos):
        codec = codecs[i % len(codecs)]
        label = i % len(DIRECTIONS)
        if pattern == "shapes":
            clip = moving_shape_frames(label, frames, size, rng)
        elif pattern == "noisy_square":
            clip = noisy_square_frames(label, frames, size, rng, **square)
        else:
            clip = frame_index_frames(frames, size, size)
        path = out / "videos" / f"{i:05d}_{DIRECTIONS[label]}{CODECS[codec][1]}"
        write_video(path, clip, fps, codec)
        lines.append(f"{path} {label}")
    num_val = num_val_videos(num_videos, val_fraction)
    order = rng.permutation(num_videos)
    val_ids = set(order[:num_val].tolist())
    split = {"train": [l for i, l in enumerate(lines) if i not in val_ids],
             "val": [l for i, l in enumerate(lines) if i in val_ids]}
    paths = {}
    for name, rows in split.items():
        path = out / f"{name}.txt"
        if rows:
            path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
            paths[name] = path
        elif path.exists():  # an empty index is refused by evaluation; a stale one would list rewritten videos
            path.unlink()
    return paths


def panning_frames(frames: int, height: int, width: int, seed: int = 0, speed: int = 4):
    """Generator of `frames` uint8 (height, width, 3) frames: a smooth colour texture panning sideways
    `speed` px per frame, with a checkered square crossing it (footage-like motion at any resolution)."""
    rng = np.random.default_rng(seed)
    side = max(height, width)
    texture = (0.6 * _smooth_texture(rng, side, 12) + 0.4 * _smooth_texture(rng, side, 48))[:height].astype(np.uint8)
    square = max(8, height // 6)
    for t in range(frames):
        img = np.roll(texture, speed * t, axis=1)
        y = (t * 3) % max(1, height - square)
        x = (t * 5) % max(1, width - square)
        img[y:y + square, x:x + square] = np.where(
            (np.add.outer(np.arange(square), np.arange(square)) // max(1, square // 4)) % 2 == 0, 230, 25)[..., None]
        yield img
