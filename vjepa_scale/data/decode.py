"""PyAV (FFmpeg) probing and frame decoding: H.264, HEVC, VP9, MJPEG, AV1 and anything FFmpeg reads.

Every failure (missing, empty, truncated, non-video, undecodable) raises `VideoError` with the path
and a short reason, so datasets can skip and count bad files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


class VideoError(RuntimeError):
    """A video file could not be read; `path` and `reason` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """Header facts about a file's first video stream."""

    path: str
    codec: str          # FFmpeg codec name: h264, hevc, vp9, vp8, mjpeg, av1, mpeg4, ...
    num_frames: int     # declared, or duration * frame rate when the container does not store it
    height: int
    width: int
    fps: float
    variable_frame_rate: bool


def _open(path: str):
    import av

    if not os.path.exists(path):
        raise VideoError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    try:
        container = av.open(path)
    except Exception as e:  # av.error.* subclasses; any failure to open means unreadable
        raise VideoError(path, f"not a readable container ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream")
    return container


def probe_video(path: str) -> VideoInfo:
    """Read the header of `path` (no decoding). Raises VideoError when it is not a usable video."""
    container = _open(path)
    try:
        s = container.streams.video[0]
        rate = s.average_rate or s.guessed_rate or s.base_rate
        if not rate:
            raise VideoError(path, "unknown frame rate")
        fps = float(rate)
        n = int(s.frames or 0)
        if n <= 0:
            if s.duration is not None and s.time_base is not None:
                seconds = float(s.duration * s.time_base)
            elif container.duration:
                seconds = container.duration / 1_000_000
            else:
                seconds = 0.0
            n = int(round(seconds * fps))
        if n <= 0:
            raise VideoError(path, "stream has no frames")
        ctx = s.codec_context
        if not ctx.width or not ctx.height:
            raise VideoError(path, "video stream has no frame size")
        base = s.base_rate  # FFmpeg r_frame_rate: differs from the average rate when timing varies
        vfr = bool(base and s.average_rate and abs(float(base) - float(s.average_rate)) > 0.01 * float(base))
        return VideoInfo(path, ctx.name, n, int(ctx.height), int(ctx.width), fps, vfr)
    finally:
        container.close()


SEEK_MIN_FRAME = 8  # first wanted frame from which decoding seeks (to a keyframe) instead of starting at 0


def _decode_after_seek(container, stream, wanted: set[int], fps: float) -> dict[int, np.ndarray] | None:
    """Seek to the keyframe before min(wanted) and decode; frame numbers from pts (constant frame rate).

    Returns None when that is unreliable (no pts, landed after the window, frames missing), in which
    case the caller decodes from the start.
    """
    tb = stream.time_base
    start = stream.start_time or 0
    first, last = min(wanted), max(wanted)
    container.seek(start + int(first / fps / tb), stream=stream, backward=True, any_frame=False)
    got: dict[int, np.ndarray] = {}
    landed = None
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        idx = int(round(float((frame.pts - start) * tb) * fps))
        if landed is None:
            landed = idx
            if idx > first:
                return None
        if idx in wanted:
            got[idx] = frame.to_ndarray(format="rgb24")
        if idx >= last:
            break
    return got if set(got) == wanted else None


def decode_frames(path: str, indices: list[int], declared_frames: int | None = None,
                  fps: float | None = None) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of `path` as uint8 (len(indices), H, W, 3) RGB.

    Given `fps` and a first index >= SEEK_MIN_FRAME, seeks to the keyframe before the window;
    otherwise (or when seeking is unreliable) decodes sequentially from the start, counting frames.
    Indices past the real end repeat the last frame; a file that ends well before `declared_frames`
    is treated as truncated (VideoError).
    """
    if not indices:
        raise ValueError("decode_frames needs at least one frame index")
    wanted = set(int(i) for i in indices)
    last = max(wanted)
    if fps and min(wanted) >= SEEK_MIN_FRAME and (not declared_frames or last < declared_frames):
        container = _open(path)
        try:
            got = _decode_after_seek(container, container.streams.video[0], wanted, fps)
        except Exception:
            got = None
        finally:
            container.close()
        if got is not None:
            return np.stack([got[int(i)] for i in indices])
    got = {}
    container = _open(path)
    count = 0
    last_frame = None
    try:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if count in wanted:
                got[count] = frame.to_ndarray(format="rgb24")
            last_frame = frame
            count += 1
            if count > last:
                break
    except Exception as e:
        raise VideoError(path, f"decoding failed after {count} frames ({type(e).__name__}: {e})") from None
    finally:
        container.close()
    if count == 0:
        raise VideoError(path, "no frame could be decoded")
    if declared_frames and count <= last and count < declared_frames - max(1, declared_frames // 20):
        raise VideoError(path, f"truncated: decoded {count} of {declared_frames} declared frames")
    if count <= last:  # shorter than declared by a frame or so: pad with the last decoded frame
        tail = got[count - 1] if (count - 1) in got else last_frame.to_ndarray(format="rgb24")
        for i in wanted:
            if i >= count:
                got[i] = tail
    return np.stack([got[int(i)] for i in indices])
