"""PyAV (FFmpeg) probing and frame decoding: H.264, HEVC, VP9, MJPEG, AV1 and anything FFmpeg reads.

`probe_video` gives exact frame counts (the container's stored count, else a packet scan; never
duration x fps), every frame's timestamp for scanned files (`VideoInfo.frame_pts`), the display
rotation, and finds files truncated behind an intact header. `decode_frames` returns exactly the frames asked for
(frame i = the i-th in presentation order), never padded. Every failure (missing, empty, truncated,
non-video, undecodable, too short) raises `VideoError` with the path, a short reason and a kind
(`SKIP_KINDS`), so datasets can skip and count bad files by kind. A `Deadline` bounds the time spent
on one file (data.decode_timeout_s); passing it raises `DecodeTimeout`, a VideoError.
"""
from __future__ import annotations

import os
import signal
import stat
import threading
import time
from dataclasses import dataclass, field

import numpy as np


# Why a file or clip was skipped (`VideoError.kind`): the keys of the skip counts in metrics.
SKIP_KINDS = ("missing", "empty", "unreadable", "no_video", "decode_error", "truncated", "too_short", "timeout",
              "unsupported")


class VideoError(RuntimeError):
    """A video file (or the clip asked of it) is unusable; `path`, `reason` and `kind` (SKIP_KINDS) say why."""

    def __init__(self, path: str, reason: str, kind: str = "unreadable"):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.kind = kind if kind in SKIP_KINDS else "unreadable"

    @property
    def summary(self) -> str:
        """"kind: reason", the form skipped files are recorded in (`skip_kind` reads the kind back)."""
        return f"{self.kind}: {self.reason}"


def skip_kind(summary: str) -> str:
    """The kind of a recorded skip reason ("truncated: ..." -> "truncated"); "unreadable" when unknown."""
    kind = summary.split(":", 1)[0]
    return kind if kind in SKIP_KINDS else "unreadable"


class DecodeTimeout(VideoError):
    """Reading one file took longer than its Deadline (data.decode_timeout_s)."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason, "timeout")


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
                self._armed = True
                try:
                    signal.setitimer(signal.ITIMER_REAL, self.seconds, ALARM_REPEAT_S)
                except BaseException:  # a limit so short that the alarm fired in here: `with` skips __exit__
                    self.__exit__(None, None, None)
                    raise
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
    """Facts about a file's first video stream, from its header and (see `probe_video`) its packets."""

    path: str
    codec: str          # FFmpeg codec name: h264, hevc, vp9, vp8, mjpeg, av1, mpeg4, ...
    num_frames: int     # exact: the container's stored count, else the number of shown packets
    height: int         # coded (stored) size; the picture is shown rotated by `rotation`
    width: int
    fps: float
    variable_frame_rate: bool
    rotation: int = 0   # display rotation, degrees counterclockwise: 0, 90, 180 or 270
    # sorted presentation timestamps of all frames (int64), kept for every packet-scanned file: frame i is
    # the one at frame_pts[i] (WebM/MKV millisecond timestamps do not give frame numbers through fps)
    frame_pts: np.ndarray | None = field(default=None, compare=False, repr=False)
    keyframes: int = 0  # keyframe packets counted (0: not counted, the stored frame count was used)
    sar: float = 1.0    # sample aspect ratio: a stored pixel's width / height (anamorphic footage: not 1)

    @property
    def display_size(self) -> tuple[int, int]:
        """(height, width) of the upright picture: the stored one `sar` times as wide, turned by `rotation`."""
        width = shown_width(self.width, self.sar)
        return (width, self.height) if self.rotation in (90, 270) else (self.height, width)


def shown_width(width: int, sar: float) -> int:
    """The width a picture `width` stored pixels wide shows at sample aspect ratio `sar`."""
    return width if sar == 1 else max(1, int(round(width * sar)))


def sample_aspect_ratio(stream) -> float:
    """A PyAV video stream's sample aspect ratio (stored pixel width / height); 1 when unknown or 0."""
    sar = float(stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or 1)
    return sar if sar > 0 else 1.0


def _open(path: str, deadline: Deadline | None = None):
    """The PyAV container of `path`; with a `deadline`, its remaining time bounds every blocked read."""
    import av

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoError(path, "file does not exist", "missing") from None
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)", "empty")
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
        raise VideoError(path, "no video stream", "no_video")
    return container


TRUNCATED_SHARE = 0.05  # a stream ending this share (or 2 frames) before its declared duration is truncated


def display_rotation(degrees) -> int:
    """A frame's display rotation (PyAV `frame.rotation`) rounded to 0, 90, 180 or 270 (counterclockwise)."""
    return int(round(float(degrees or 0) / 90.0)) % 4 * 90


def probe_video(path: str, deadline: Deadline | None = None) -> VideoInfo:
    """Header facts of `path` plus its exact frame count; raises VideoError when it is not a usable video.

    The first frame is decoded (its display matrix gives the rotation; a file whose data does not
    decode fails here). The frame count is the container's stored count (MP4, AVI, ...); without
    one (WebM/MKV, TS), when the frame rate varies, or when an MP4's count disagrees with its stream's
    duration x rate (an edit list hides frames), the packets are counted (a demux pass over the
    file, no decoding; packets flagged discard, hidden by an edit list and dropped by the decoder, do
    not count): their timestamps are kept (`frame_pts`, frame i = the i-th smallest) and give the mean
    frame rate. Never duration x fps. A scanned stream whose packets end well before the duration its
    header declares for it (see `_check_complete`) is truncated (VideoError kind "truncated").
    """
    container = _open(path, deadline)
    try:
        s = container.streams.video[0]
        rate = s.average_rate or s.guessed_rate or s.base_rate
        if not rate:
            raise VideoError(path, "unknown frame rate")
        fps = float(rate)
        ctx = s.codec_context
        if not ctx.width or not ctx.height:
            raise VideoError(path, "video stream has no frame size")
        base = s.base_rate  # FFmpeg r_frame_rate: differs from the average rate when timing varies
        vfr = bool(base and s.average_rate and abs(float(base) - float(s.average_rate)) > 0.01 * float(base))
        n = int(s.frames or 0)
        scan = n <= 0 or vfr or edit_list_hides_frames(container, s, n)
        rotation, pts, keyframes, end, last_end = _read_packets(container, s, path, scan, deadline)
        frame_pts = None
        if scan:
            n = len(pts)
            tb = float(s.time_base)
            _check_complete(container, s, path, (end - (s.start_time or (pts[0] if pts else 0))) * tb, last_end, fps)
            if n <= 0:
                raise VideoError(path, "stream has no frames", "no_video")
            frame_pts = np.asarray(pts, dtype=np.int64)
            frame_pts.flags.writeable = False
            steps = np.diff(frame_pts)
            if len(steps):
                vfr = bool(steps.max() - steps.min() > max(1, 0.01 * np.median(steps)))
                fps = (n - 1) / (float(frame_pts[-1] - frame_pts[0]) * tb) if steps.min() > 0 else fps
        if rotation is None:
            raise VideoError(path, "no frame could be decoded", "decode_error")
        if n <= 0:
            raise VideoError(path, "stream has no frames", "no_video")
        return VideoInfo(path, ctx.name, n, int(ctx.height), int(ctx.width), fps, vfr, rotation, frame_pts,
                         keyframes, sample_aspect_ratio(s))
    finally:
        container.close()


def first_readable(paths, check, timeout_s: float) -> list[VideoError]:
    """`check(path, deadline)` (`probe_video`, `check_opens`) on `paths` in order, each within `timeout_s`,
    until one passes: then []; else the VideoError of each."""
    failures = []
    for path in paths:
        try:
            with Deadline(path, timeout_s) as deadline:
                check(path, deadline)
            return []
        except VideoError as e:
            failures.append(e)
    return failures


def check_opens(path: str, deadline: Deadline | None = None) -> None:
    """The cheap part of `probe_video`, for pre-flight checks: the container opens, its first video stream
    has a frame size, and its first frame decodes (no packet scan, no frame count, so a long WebM costs no
    more than an MP4). Raises VideoError as `probe_video` does."""
    container = _open(path, deadline)
    try:
        s = container.streams.video[0]
        if not s.codec_context.width or not s.codec_context.height:
            raise VideoError(path, "video stream has no frame size")
        if _read_packets(container, s, path, False, deadline)[0] is None:
            raise VideoError(path, "no frame could be decoded", "decode_error")
    finally:
        container.close()


def edit_list_hides_frames(container, stream, n: int) -> bool:
    """Whether an MP4/MOV edit list may hide some of the `n` frames the stream stores (they are counted, but
    the decoder does not yield them): the count disagrees with the stream's duration x average rate by
    more than a frame."""
    if n <= 0 or "mov" not in container.format.name.split(",") or not (stream.duration and stream.average_rate):
        return False  # n 0: no stored count (a fragmented MP4), which is scanned anyway
    return abs(float(stream.duration * stream.time_base * stream.average_rate) - n) > 1


def _read_packets(container, stream, path: str, scan: bool, deadline: Deadline | None):
    """(rotation, sorted packet pts, keyframe count, end pts, latest end) of `stream`: decodes until its first
    frame; with `scan`, goes on demuxing (no decoding) every stream to the last packet, and the latest end
    is where the last packet of any stream ends (seconds, None without a scan). Rotation None: no frame
    decoded."""
    rotation = None
    pts, keyframes, end, last_end = [], 0, 0, None
    try:
        for packet in (container.demux() if scan else container.demux(stream)):
            if deadline is not None:
                deadline.check()
            if packet.size == 0:
                continue
            if packet.stream.index != stream.index:  # audio, subtitles: only where they end
                if packet.pts is None:
                    continue
                t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                last_end = t if last_end is None else max(last_end, t)
                continue
            if rotation is None:
                try:
                    frames = packet.decode()
                except Exception:
                    frames = []
                if frames:
                    rotation = display_rotation(frames[0].rotation)
                    if not scan:
                        break
            if scan and packet.pts is not None and not packet.is_discard:  # discard: hidden by an edit list
                pts.append(int(packet.pts))
                keyframes += bool(packet.is_keyframe)
                end = max(end, int(packet.pts) + int(packet.duration or 0))
        if rotation is None:  # frames held back by the decoder (B-frames): flush it
            frames = stream.codec_context.decode(None)
            if frames:
                rotation = display_rotation(frames[0].rotation)
    except DecodeTimeout:
        raise
    except Exception as e:
        if rotation is None or not scan:
            raise VideoError(path, f"reading packets failed ({type(e).__name__}: {e})", "decode_error") from None
        # a damaged tail: the packets read so far count, _check_complete decides
    if pts:
        t = float(end * stream.time_base)
        last_end = t if last_end is None else max(last_end, t)
    return rotation, sorted(pts), keyframes, end, last_end


def _tag_seconds(metadata) -> float | None:
    """The stream duration Matroska/WebM muxers store as a DURATION tag ('00:00:01.333000000'), in seconds."""
    value = next((v for k, v in (metadata or {}).items() if k.lower() == "duration"), None)
    try:
        h, m, sec = str(value).split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None


def _check_complete(container, stream, path: str, seconds: float, last_end: float | None, fps: float) -> None:
    """VideoError "truncated" when the video's packets (`seconds` long) end well before the video's declared
    duration (the stream's, else its Matroska DURATION tag), or, when the video declares none, every
    stream's packets (the last ending at `last_end`, seconds) end well before the container's duration
    (which includes audio that may run longer than the video)."""
    what = "frames"
    if stream.duration is not None and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
    elif _tag_seconds(stream.metadata) is not None:
        declared = _tag_seconds(stream.metadata)
    elif container.duration and last_end is not None:
        declared, what = container.duration / 1_000_000, "streams"
        seconds = last_end - (container.start_time or 0) / 1_000_000
    else:
        return
    if declared - seconds > max(2.0 / fps, TRUNCATED_SHARE * declared):
        raise VideoError(path, f"truncated: its {what} end at {seconds:.2f} s of the {declared:.2f} s its header "
                               f"declares", "truncated")


SEEK_MIN_FRAME = 8  # first wanted frame from which decoding seeks (to a keyframe) instead of starting at 0


def _rgb(frame, size: tuple[int, int] | None, path: str) -> np.ndarray:
    """`frame` as uint8 (H, W, 3) RGB; VideoError "unsupported" when it is not (height, width) `size` (the
    picture size changes inside the stream)."""
    if size is not None and (frame.height, frame.width) != size:
        raise VideoError(path, f"frame size changes inside the stream: {frame.width}x{frame.height} frames after "
                               f"{size[1]}x{size[0]}", "unsupported")
    return frame.to_ndarray(format="rgb24")


def _decode_after_seek(container, stream, wanted: set[int], fps: float, deadline: Deadline | None = None,
                       frame_pts: np.ndarray | None = None,
                       size: tuple[int, int] | None = None) -> dict[int, np.ndarray] | None:
    """Seek to the keyframe before min(wanted) and decode; frame numbers from pts.

    With `frame_pts` (every frame's timestamp, sorted) a frame's number is its position there; else
    it is pts x fps (a stored frame count, constant frame rate). The numbers must run on one by one.
    Returns None when that is unreliable (no pts, a pts not in `frame_pts`, landed after the window,
    a gap or repeat, frames missing), in which case the caller decodes from the start. A wanted frame
    whose size is not `size` (default: the first wanted frame's) raises VideoError "unsupported".
    """
    tb = stream.time_base
    start = stream.start_time or 0
    first, last = min(wanted), max(wanted)
    target = int(frame_pts[first]) if frame_pts is not None else start + int(first / fps / tb)
    container.seek(target, stream=stream, backward=True, any_frame=False)
    got: dict[int, np.ndarray] = {}
    previous = None
    for frame in container.decode(stream):
        if deadline is not None:
            deadline.check()
        if frame.pts is None:
            return None
        if frame_pts is not None:
            idx = int(np.searchsorted(frame_pts, frame.pts))
            if idx >= len(frame_pts) or frame_pts[idx] != frame.pts:
                return None
        else:
            idx = int(round(float((frame.pts - start) * tb) * fps))
        if previous is None and idx > first:
            return None
        if previous is not None and idx != previous + 1:
            return None
        previous = idx
        if idx in wanted:
            size = size or (frame.height, frame.width)
            got[idx] = _rgb(frame, size, container.name)
        if idx >= last:
            break
    return got if set(got) == wanted else None


def decode_frames(path: str, indices: list[int], declared_frames: int | None = None,
                  fps: float | None = None, deadline: Deadline | None = None,
                  frame_pts: np.ndarray | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of `path` as uint8 (len(indices), H, W, 3) RGB, as stored
    (not rotated).

    Frame i is the i-th frame in presentation order. Given `fps` and a first index >= SEEK_MIN_FRAME,
    seeks to the keyframe before the window (`frame_pts`: every frame's timestamp, sorted, see
    `probe_video`); otherwise (or when seeking is unreliable) decodes sequentially from the start, counting
    frames. Nothing is padded: a file that ends before the last index is truncated (VideoError kind
    "truncated", or "too_short" when `declared_frames` says the file never had that frame). A wanted
    frame whose (height, width) is not `size` (default: the first wanted frame's), i.e. the picture
    size changes mid-stream, raises VideoError "unsupported".
    Past `deadline`, DecodeTimeout.
    """
    if not indices:
        raise ValueError("decode_frames needs at least one frame index")
    wanted = set(int(i) for i in indices)
    last = max(wanted)
    if declared_frames and last >= declared_frames:
        raise VideoError(path, f"frame {last} asked of a {declared_frames}-frame video", "too_short")
    if fps and min(wanted) >= SEEK_MIN_FRAME:
        container = _open(path, deadline)
        try:
            got = _decode_after_seek(container, container.streams.video[0], wanted, fps, deadline, frame_pts, size)
        except VideoError:  # a timeout, or a frame of another size
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
    try:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if deadline is not None:
                deadline.check()
            if count in wanted:
                size = size or (frame.height, frame.width)
                got[count] = _rgb(frame, size, path)
            count += 1
            if count > last:
                break
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(path, f"decoding failed after {count} frames ({type(e).__name__}: {e})",
                         "decode_error") from None
    finally:
        container.close()
    if count == 0:
        raise VideoError(path, "no frame could be decoded", "decode_error")
    if count <= last:
        of = f" of {declared_frames} declared" if declared_frames else ""
        raise VideoError(path, f"truncated: decoded {count}{of} frames, frame {last} asked", "truncated")
    return np.stack([got[int(i)] for i in indices])


def decode_clip_frames(info: VideoInfo, indices: list[int], deadline: Deadline | None = None) -> np.ndarray:
    """`decode_frames` of a probed file: uint8 (len(indices), H, W, 3) as stored (see `clips.orient_clip`), each
    frame of the probed size."""
    return decode_frames(info.path, indices, info.num_frames, info.fps, deadline, info.frame_pts,
                         (info.height, info.width))
