"""Re-encode a video dataset for GPU decoding: short GOP, size near the training crop, an index file.

NVDEC decodes every frame from the keyframe before a wanted one, so a clip of 16 frames at stride 4
from a camera file with a 250-frame GOP costs up to ~300 decoded frames at full resolution. After
`transcode_index` (H.264, 8-bit 4:2:0, a keyframe every `gop` frames, short side `short_side`, even
sizes, all frames kept at their timestamps, rotated sources turned upright, non-square pixels made
square) a clip costs at most gop - 1 + 61 decoded frames of a
small picture. Files are decoded and encoded with PyAV (FFmpeg's libx264), one process per file.
Each output is written to a hidden temporary file beside it and renamed into place when complete, so
a failed or interrupted transcode leaves no truncated output and never touches an existing one.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from vjepa_scale.data.index import read_index


class UnreadableVideo(Exception):
    """A source that holds nothing to transcode (e.g. no video stream); the message is the reason."""


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled so the short side is `short_side` (never upscaled), both even."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def transcode_video(src: str, dst: str, gop: int = 16, short_side: int = 256, crf: int = 20,
                    preset: str = "veryfast") -> dict:
    """Re-encode the first video stream of `src` to `dst` (H.264 yuv420p, keyframe every `gop` frames).

    Frames keep their timestamps (variable frame rate stays variable). A rotated source (a phone video's
    display rotation) is written upright, sized from its upright picture, without a rotation tag; an
    anamorphic one (sample aspect ratio not 1) is resampled to square pixels at its displayed aspect. `dst`
    appears only once complete (written beside it, then renamed); a source without a video stream (or
    without a decodable frame) raises UnreadableVideo. Returns {frames, width, height}.
    """
    import av

    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with av.open(src) as inp:
        if not inp.streams.video:
            raise UnreadableVideo("no video stream")
        tmp = str(Path(dst).parent / f".{Path(dst).name}.{os.getpid()}.part")  # one per process: no clash
        try:
            with av.open(tmp, "w", format="mp4") as out:
                n, width, height = _encode(inp, out, gop, short_side, crf, preset)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return {"frames": n, "width": width, "height": height}


def _encode(inp, out, gop: int, short_side: int, crf: int, preset: str) -> tuple[int, int, int]:
    """Encode the first video stream of open container `inp` into open container `out`, each frame turned
    upright by its display rotation and resampled to square pixels (the output has neither a rotation nor
    a sample aspect ratio); (frames, w, h) of the upright output."""
    import av
    import numpy as np

    from vjepa_scale.data.decode import display_rotation, sample_aspect_ratio, shown_width

    s_in = inp.streams.video[0]
    rate = s_in.average_rate or s_in.guessed_rate or 30
    sar = sample_aspect_ratio(s_in)
    s_out, n, width, height = None, 0, 0, 0
    for frame in inp.decode(s_in):
        pts = frame.pts
        k = display_rotation(frame.rotation) // 90  # quarter turns counterclockwise that make the picture upright
        if s_out is None:  # the first frame's rotation gives the upright size (of its displayed width)
            shown_w = shown_width(frame.width, sar)
            up_w, up_h = (frame.height, shown_w) if k % 2 else (shown_w, frame.height)
            width, height = target_size(up_w, up_h, short_side)
            s_out = out.add_stream("libx264", rate=rate, options={
                "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "0", "crf": str(crf),
                "preset": preset, "x264-params": "log-level=error"})
            s_out.width, s_out.height, s_out.pix_fmt = width, height, "yuv420p"
            s_out.codec_context.time_base = s_in.time_base
        if k:
            stored_w, stored_h = (height, width) if k % 2 else (width, height)
            rgb = frame.reformat(width=stored_w, height=stored_h, format="rgb24").to_ndarray()
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(rgb, k)), format="rgb24")
        frame = frame.reformat(width=width, height=height, format="yuv420p")
        frame.pts, frame.time_base = pts, s_in.time_base
        for packet in s_out.encode(frame):
            out.mux(packet)
        n += 1
    if s_out is None:
        raise UnreadableVideo("no frame could be decoded")
    for packet in s_out.encode():
        out.mux(packet)
    return n, width, height


def _one(args):
    src, dst, gop, short_side = args
    try:
        transcode_video(src, dst, gop, short_side)
        return src, dst, None
    except UnreadableVideo as e:
        return src, dst, str(e)
    except Exception as e:  # a file FFmpeg cannot read stays out of the new index
        return src, dst, f"{type(e).__name__}: {e}"


def transcode_index(index: str, out_dir: str, gop: int = 16, short_side: int = 256, workers: int = 1,
                    out_index: str | None = None) -> tuple[Path | None, list[tuple[str, str]]]:
    """Transcode every video of index file `index` into `out_dir`; write the new index file.

    Output files keep their relative layout (sources outside the index's folder: their base name,
    numbered by entry) and their full name, plus ".mp4" unless it ends so (x.webm -> x.webm.mp4, x.avi ->
    x.avi.mp4, x.mp4 -> x.mp4), so distinct sources do not share an output (if two still would, a
    ValueError names the index before any work). A source listed twice is transcoded once and keeps both
    lines. Every line gets a label (-1 for an unlabeled entry, which `read_index` reads back as no
    label), so paths with spaces stay readable. An output that is a source video, or a new index that is
    `index` (or a video), is a ValueError before any work. Returns (new index path, [(source, reason)] of
    files left out); the path is None, and no index is written, when every file was left out.
    """
    paths, labels = read_index(index)
    out = Path(out_dir).expanduser().resolve()  # the new index lists absolute paths
    dst_of: dict[str, str] = {}  # source -> output, in index order
    for k, p in enumerate(paths):
        if p not in dst_of:
            rel = os.path.relpath(p, Path(index).resolve().parent)
            name = rel if not rel.startswith("..") else f"{k:07d}_{Path(p).name}"
            dst_of[p] = str(out / "videos" / (name if name.lower().endswith(".mp4") else f"{name}.mp4"))
    if len(set(dst_of.values())) < len(dst_of):
        raise ValueError(f"{index}: two sources would be written to the same output file under {out / 'videos'}")
    new_index = Path(out_index) if out_index else out / Path(index).name
    _check_no_overwrite(index, new_index, dst_of)
    jobs = [(src, dst, gop, short_side) for src, dst in dst_of.items()]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_one, jobs))
    else:
        results = [_one(j) for j in jobs]
    failed = [(src, err) for src, _, err in results if err is not None]
    left_out = {src for src, _ in failed}
    if len(left_out) == len(dst_of):
        return None, failed  # nothing to index: an empty index would only be refused later
    new_index.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_index.parent / f".{new_index.name}.{os.getpid()}.part"
    with open(tmp, "w", encoding="utf-8") as f:  # read back as UTF-8 (`config.index_file_lines`)
        for src, label in zip(paths, labels):
            if src not in left_out:
                f.write(f"{dst_of[src]} {label}\n")
    os.replace(tmp, new_index)
    return new_index, failed


def _check_no_overwrite(index: str, new_index: Path, dst_of: dict[str, str]) -> None:
    """ValueError, before any work, when an output (a video or the new index) is a source or the index."""
    sources = {os.path.realpath(p): p for p in dst_of}
    for src, dst in dst_of.items():
        hit = sources.get(os.path.realpath(dst))
        if hit is not None:
            raise ValueError(f"{index}: output {dst} is the source video {hit}; choose another output folder")
    if os.path.realpath(new_index) == os.path.realpath(index):
        raise ValueError(f"the new index {new_index} would overwrite the source index {index}; "
                         "choose another output folder or --out-index")
    hit = sources.get(os.path.realpath(new_index))
    if hit is not None or os.path.realpath(new_index) in {os.path.realpath(d) for d in dst_of.values()}:
        raise ValueError(f"the new index {new_index} would overwrite the video {hit or new_index}; "
                         "choose another --out-index")
