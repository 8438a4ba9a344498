"""PyAV (FFmpeg) probing and frame decoding: H.264, HEVC, VP9, MJPEG, AV1 and anything FFmpeg reads.

Every failure (missing, empty, truncated, non-video, undecodable) raises `VideoError` with the path
and a short reason, so datasets can skip and count bad files. A `Deadline` bounds the time spent on
one file (data.decode_timeout_s); passing it raises `DecodeTimeout`, a VideoError.
"""
from __future__ import annotations

import os
import signal
import stat
import threading
import time
from dataclasses import dataclass

import numpy as np


class VideoError(RuntimeError):
    """A video file could not be read; `path` and `reason` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DecodeTimeout(VideoError):
    """Reading one file took longer than its Deadline (data.decode_timeout_s)."""


ALARM_REPEAT_S = 0.05  # after the deadline, SIGALRM repeats this often until the read gives up


class Deadline:
    """Time limit of `seconds` for reading one file (0: none); a context manager around probe + decode.

    `check()` raises DecodeTimeout once the limit has passed; the decode loops call it between frames,
    in any thread. In the main thread (where a DataLoader worker, or a 0-worker loader, decodes) a
    SIGALRM timer also reaches code that does not return to Python: its handler raises DecodeTimeout
    at the next Python instruction, and because the alarm repeats every ALARM_REPEAT_S, a read that
    blocks inside FFmpeg (a stalled pipe or network file) keeps returning EINTR until PyAV's interrupt
    callback (the `timeout` given to av.open, see `_open`) aborts it; so a blocked read is abandoned
    within about twice the limit. Not covered: a read in uninterruptible sleep (process state D), a
    decoder looping inside one C call, a process stopped by SIGSTOP; the DataLoader timeout
    (data.loader_timeout_s) ends those runs instead. The alarm is not used when another ITIMER_REAL
    timer is running.
    """

    def __init__(self, path: str, seconds: float = 0.0):
        self.path = path
        self.seconds = float(seconds or 0.0)
        self.end: float | None = None
        self._previous = None
        self._armed = False
        self._fired = False

    def __enter__(self) -> "Deadline":
        if self.seconds > 0:
            self.end = time.monotonic() + self.seconds
            if (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
                    and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)):
                previous = signal.signal(signal.SIGALRM, self._alarm)
                self._previous = signal.SIG_DFL if previous is None else previous
                signal.setitimer(signal.ITIMER_REAL, self.seconds, ALARM_REPEAT_S)
                self._armed = True
        return self

    def __exit__(self, *exc) -> bool:
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
            self._armed = False
        return False

    def _alarm(self, signum, frame) -> None:
        if not self._fired:  # later alarms only interrupt blocked system calls
            self._fired = True
            raise self.error()

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def remaining(self) -> float | None:
        """Seconds left (None: no limit)."""
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def error(self) -> DecodeTimeout:
        return DecodeTimeout(self.path, f"reading took longer than data.decode_timeout_s={self.seconds:g} s")

    def check(self) -> None:
        if self.expired():
            raise self.error()


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


def _open(path: str, deadline: Deadline | None = None):
    """The PyAV container of `path`; with a `deadline`, its remaining time bounds every blocked read."""
    import av

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoError(path, "file does not exist") from None
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    timeout = deadline.remaining() if deadline is not None else None
    if timeout is not None and timeout <= 0:
        raise deadline.error()
    try:
        container = av.open(path, timeout=timeout)
    except VideoError:
        raise
    except Exception as e:  # av.error.* subclasses; any failure to open means unreadable
        raise VideoError(path, f"not a readable container ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream")
    return container


def probe_video(path: str, deadline: Deadline | None = None) -> VideoInfo:
    """Read the header of `path` (no decoding). Raises VideoError when it is not a usable video."""
    container = _open(path, deadline)
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


def _decode_after_seek(container, stream, wanted: set[int], fps: float,
                       deadline: Deadline | None = None) -> dict[int, np.ndarray] | None:
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
        if deadline is not None:
            deadline.check()
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
                  fps: float | None = None, deadline: Deadline | None = None) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of `path` as uint8 (len(indices), H, W, 3) RGB.

    Given `fps` and a first index >= SEEK_MIN_FRAME, seeks to the keyframe before the window;
    otherwise (or when seeking is unreliable) decodes sequentially from the start, counting frames.
    Indices past the real end repeat the last frame; a file that ends well before `declared_frames`
    is treated as truncated (VideoError). Past `deadline`, DecodeTimeout.
    """
    if not indices:
        raise ValueError("decode_frames needs at least one frame index")
    wanted = set(int(i) for i in indices)
    last = max(wanted)
    if fps and min(wanted) >= SEEK_MIN_FRAME and (not declared_frames or last < declared_frames):
        container = _open(path, deadline)
        try:
            got = _decode_after_seek(container, container.streams.video[0], wanted, fps, deadline)
        except DecodeTimeout:
            raise
        except Exception:
            got = None
        finally:
            container.close()
        if got is not None:
            return np.stack([got[int(i)] for i in indices])
    got = {}
    container = _open(path, deadline)
    count = 0
    last_frame = None
    try:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if deadline is not None:
                deadline.check()
            if count in wanted:
                got[count] = frame.to_ndarray(format="rgb24")
            last_frame = frame
            count += 1
            if count > last:
                break
    except DecodeTimeout:
        raise
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
