"""tools/transcode.py end to end: short GOP, short side as asked, index lines kept, bad files reported, one output
per source, a readable index."""
from __future__ import annotations

import os
import sys

import numpy as np

from helpers import ROOT, run
from helpers.dali_videos import index_video
from vjepa_scale.data.decode import decode_frames, probe_video
from vjepa_scale.data.index import read_index
from vjepa_scale.data.synthetic_videos import INDEX_LEVEL_STEP


def test_transcode_tool_short_gop_size_and_index(tmp_path):
    """tools/transcode.py: output decodes, keyframes at most 16 frames apart, short side as asked, index right."""
    import av

    src = tmp_path / "src"
    src.mkdir()
    a = index_video(src / "a.mp4", "libx264", frames=30, height=96, width=160, options={"g": "250"})
    index_video(src / "b.webm", "libvpx-vp9", frames=20, height=64, width=64)
    (src / "bad.mp4").write_bytes(b"not a video")
    index = src / "train.txt"
    index.write_text(f"{a} 3\nb.webm 1\nbad.mp4 0\n")
    out = tmp_path / "out"
    r = run([sys.executable, ROOT / "tools" / "transcode.py", index, out, "--gop", "8", "--short-side", "48"])
    assert r.returncode == 0, r.stderr
    assert "bad.mp4" in r.stderr
    lines = (out / "train.txt").read_text().splitlines()
    assert [l.rsplit(" ", 1)[1] for l in lines] == ["3", "1"]
    for line, (frames, size) in zip(lines, [(30, (80, 48)), (20, (48, 48))]):
        path = line.rsplit(" ", 1)[0]
        assert path.endswith(".mp4") and os.path.isabs(path)
        with av.open(path) as c:
            s = c.streams.video[0]
            assert (s.codec_context.name, s.codec_context.width, s.codec_context.height) == ("h264", *size)
            keys = [k for k, p in enumerate(p for p in c.demux(s) if p.size) if p.is_keyframe]
        assert keys[0] == 0 and max(np.diff(keys + [frames])) <= 8
        got = decode_frames(path, list(range(frames)))
        assert len(got) == frames
        assert [int(round((x.mean() - 4) / INDEX_LEVEL_STEP)) for x in got] == list(range(frames))


def test_transcode_tool_keeps_every_source_and_a_readable_index(tmp_path):
    """Sources that differ only by suffix (x.webm / x.avi, clip.part1 / clip.part2) each get their own output,
    also with 2 workers; an unlabeled entry is written with label -1, so the new index reads back even
    though its paths hold a space."""
    src = tmp_path / "src"
    src.mkdir()
    index_video(src / "x.webm", "libvpx-vp9", frames=10)
    index_video(src / "x.avi", "mpeg4", frames=12)
    for name, frames in (("clip.part1", 14), ("clip.part2", 16)):
        os.rename(index_video(src / "clip.mp4", "libx264", frames=frames), src / name)
    index_video(src / "x.mp4", "libx264", frames=8)  # an .mp4 keeps its name, beside x.webm's x.webm.mp4
    index = src / "train.txt"
    index.write_text("x.webm 0\nx.avi 1\nclip.part1 2\nclip.part2\nx.mp4 3\n")
    out = tmp_path / "out dir"
    r = run([sys.executable, ROOT / "tools" / "transcode.py", index, out, "--workers", "2"])
    assert r.returncode == 0, r.stderr
    paths, labels = read_index(out / "train.txt")
    assert labels == [0, 1, 2, -1, 3]
    assert [os.path.basename(p) for p in paths] == ["x.webm.mp4", "x.avi.mp4", "clip.part1.mp4", "clip.part2.mp4",
                                                    "x.mp4"]
    assert [probe_video(p).num_frames for p in paths] == [10, 12, 14, 16, 8]
    # a relative OUT and the index written elsewhere: its paths are absolute, so they resolve from there
    r = run([sys.executable, ROOT / "tools" / "transcode.py", index, "rel", "--out-index", tmp_path / "i" / "t.txt"],
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "i" / "t.txt").read_text().splitlines()
    assert all(os.path.isabs(l.rsplit(" ", 1)[0]) for l in lines) and read_index(tmp_path / "i" / "t.txt")[1] == labels


def test_transcode_tool_refuses_overwriting_a_source_and_fails_when_nothing_transcodes(tmp_path):
    """OUT such that videos/a.mp4 would be written onto itself: exit 2 naming it, the source intact; an index
    of unreadable files only: exit 1, each file listed, no index written."""
    videos = tmp_path / "videos"
    videos.mkdir()
    a = index_video(videos / "a.mp4", "libx264", frames=6)
    before = open(a, "rb").read()
    (videos / "idx.txt").write_text("a.mp4 0\n")
    r = run([sys.executable, ROOT / "tools" / "transcode.py", "videos/idx.txt", "."], cwd=tmp_path)
    assert r.returncode == 2 and "videos/a.mp4 is the source video" in r.stderr
    assert "Traceback" not in r.stderr and open(a, "rb").read() == before

    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    (tmp_path / "bad.txt").write_text("bad.mp4 0\n")
    r = run([sys.executable, ROOT / "tools" / "transcode.py", tmp_path / "bad.txt", tmp_path / "out"])
    assert r.returncode == 1 and "left out" in r.stderr and "bad.mp4" in r.stderr
    assert "none of the 1 file(s)" in r.stderr and not (tmp_path / "out" / "bad.txt").exists()
