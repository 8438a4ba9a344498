"""Small encoded files for the DALI tests: any codec / pixel format / size, VFR, BT.709-tagged, cut, corrupt,
resized mid-stream."""
from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np

from vjepa_scale.data.synthetic_videos import frame_index_frames

FAST = {
    "libx264": {"preset": "ultrafast", "crf": "18"},
    "libx265": {"preset": "ultrafast", "crf": "18", "x265-params": "log-level=error"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "1M"},
    "libsvtav1": {"preset": "12"},
    "mpeg4": {"q:v": "2"},
    "mjpeg": {"q:v": "2"},
}


def encode(path, frames_THWC: np.ndarray, encoder: str, pix_fmt: str = "yuv420p", fps: int = 8,
           pts_ms: list[int] | None = None, colorspace: int | None = None, options: dict | None = None) -> str:
    """Encode RGB frames to `path`. `pts_ms`: explicit timestamps in ms (variable frame rate);
    `colorspace`: AVColorSpace tag and matrix of the RGB -> YUV conversion (1 = BT.709)."""
    import av

    T, H, W, _ = frames_THWC.shape
    with av.open(str(path), "w") as c:
        base = {} if "lossless" in (options or {}) else FAST.get(encoder, {})
        s = c.add_stream(encoder, rate=fps, options={**base, **(options or {})})
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        if pts_ms is not None:
            s.codec_context.time_base = fractions.Fraction(1, 1000)
        if colorspace is not None:
            s.codec_context.colorspace = colorspace
            s.codec_context.color_primaries = colorspace
            s.codec_context.color_trc = colorspace
        for t in range(T):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames_THWC[t]), format="rgb24")
            if colorspace is not None:
                f = f.reformat(format=pix_fmt, dst_colorspace=colorspace)
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[t], fractions.Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def index_video(path, encoder: str, frames: int = 20, height: int = 32, width: int = 32, **kw) -> str:
    """A `frame_index` video (frame i is grey level 4 + 8 i) with `encoder`."""
    return encode(path, frame_index_frames(frames, height, width), encoder, **kw)


def vfr_pts_ms(frames: int) -> list[int]:
    """Timestamps alternating 5 frames at 50 fps and 5 at ~11 fps."""
    pts, t = [], 0
    for i in range(frames):
        pts.append(t)
        t += 20 if (i // 5) % 2 == 0 else 90
    return pts


def colour_frames(frames: int, height: int, width: int) -> np.ndarray:
    """Smooth, moderately saturated colour ramps (inside the BT.601 and BT.709 gamuts)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 60 + 130 * x / max(width - 1, 1)
    g = 170 - 100 * y / max(height - 1, 1)
    b = 90 + 60 * (x + y) / max(width + height - 2, 1)
    img = np.stack([r, g, b], -1).round().astype(np.uint8)
    return np.repeat(img[None], frames, 0)


def cut(src, dst, fraction: float) -> str:
    """The first `fraction` of `src`'s bytes (header intact, data truncated)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return str(dst)


def corrupt(src, dst, from_frame: int) -> str:
    """`src` with the payload of every video packet from the `from_frame`-th on zeroed: container, header and
    packet index intact (a probe counts every frame), data undecodable from there."""
    import av

    data = bytearray(Path(src).read_bytes())
    with av.open(str(src)) as c:
        packets = [(p.pos, bytes(p)) for p in c.demux(c.streams.video[0]) if p.size]
    for pos, payload in packets[from_frame:]:
        at = data.find(payload, pos)  # the payload follows its block header
        data[at:at + len(payload)] = bytes(len(payload))
    Path(dst).write_bytes(bytes(data))
    return str(dst)


def resized_midway(path, first: int = 4, then: int = 20, sizes=((32, 32), (48, 80))) -> str:
    """An H.264 MKV at `path` whose picture size changes mid-stream: `first` frames of sizes[0] (the header's,
    (H, W)), then `then` frames of sizes[1] (two raw H.264 streams joined, one packet per 1/8 s)."""
    import av

    raw = b""
    for n, (h, w) in ((first, sizes[0]), (then, sizes[1])):
        part = Path(path).with_suffix(f".{h}x{w}.h264")
        raw += Path(encode(part, colour_frames(n, h, w), "libx264", options={"bf": "0"})).read_bytes()
    joined = Path(path).with_suffix(".h264")
    joined.write_bytes(raw)
    with av.open(str(joined)) as inp, av.open(str(path), "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        s_out.time_base = fractions.Fraction(1, 8)
        for i, p in enumerate(p for p in inp.demux(s_in) if p.size):
            p.stream, p.pts, p.dts, p.duration, p.time_base = s_out, i, i, 1, fractions.Fraction(1, 8)
            out.mux(p)
    return str(path)
