"""vjepa_scale.data.transcode: outputs never replace their sources or the source index, appear only once
complete, and a file without a video stream is left out with that reason."""
from __future__ import annotations

import os

import numpy as np
import pytest

from helpers.dali_videos import corrupt, index_video
from vjepa_scale.data.transcode import transcode_index, transcode_video


def audio_only(path) -> str:
    """An AAC file with no video stream."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=8000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*s.encode(frame), *s.encode()]:
            c.mux(packet)
    return str(path)


def test_output_that_is_its_source_is_refused_before_any_work(tmp_path, monkeypatch):
    """idx.txt in videos/ lists a.mp4; OUT = the folder above: the output videos/a.mp4 is the source."""
    videos = tmp_path / "videos"
    videos.mkdir()
    a = index_video(videos / "a.mp4", "libx264", frames=6)
    before = open(a, "rb").read()
    (videos / "idx.txt").write_text("a.mp4 0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"output /.*/videos/a.mp4 is the source video /.*/videos/a.mp4"):
        transcode_index("videos/idx.txt", ".")
    assert open(a, "rb").read() == before
    assert sorted(os.listdir(videos)) == ["a.mp4", "idx.txt"]


def test_new_index_that_is_the_source_index_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    index_video(tmp_path / "a.mp4", "libx264", frames=6)
    index = src / "train.txt"
    index.write_text("../a.mp4 2\n")
    with pytest.raises(ValueError, match=rf"new index {src}/train.txt would overwrite the source index {index}"):
        transcode_index(str(index), str(src))
    assert index.read_text() == "../a.mp4 2\n" and not (src / "videos").exists()


def test_failed_transcode_keeps_the_previous_output_and_leaves_no_partial_file(tmp_path):
    """A source undecodable from frame 25 on fails mid-encode: the earlier output stays, no temporary file,
    also through transcode_index (which leaves the source out)."""
    corrupt(index_video(tmp_path / "good.mp4", "libx264", frames=30), tmp_path / "a.mp4", 25)
    index_video(tmp_path / "b.mp4", "libx264", frames=6)
    dst = tmp_path / "out" / "videos" / "a.mp4"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(b"an earlier output")
    with pytest.raises(Exception, match="Invalid data"):
        transcode_video(str(tmp_path / "a.mp4"), str(dst))
    assert dst.read_bytes() == b"an earlier output" and os.listdir(dst.parent) == ["a.mp4"]
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\n")
    _, failed = transcode_index(str(tmp_path / "train.txt"), str(tmp_path / "out"))
    assert [src for src, _ in failed] == [str(tmp_path / "a.mp4")]
    assert dst.read_bytes() == b"an earlier output" and sorted(os.listdir(dst.parent)) == ["a.mp4", "b.mp4"]


def test_file_without_a_video_stream_is_left_out_with_the_reason(tmp_path):
    index_video(tmp_path / "a.mp4", "libx264", frames=6)
    audio_only(tmp_path / "song.m4a")
    index = tmp_path / "train.txt"
    index.write_text("a.mp4 0\nsong.m4a 1\n")
    new_index, failed = transcode_index(str(index), str(tmp_path / "out"))
    assert failed == [(str(tmp_path / "song.m4a"), "no video stream")]
    assert new_index.read_text() == f"{tmp_path}/out/videos/a.mp4 0\n"
    assert sorted(os.listdir(tmp_path / "out" / "videos")) == ["a.mp4"]


def test_nothing_transcoded_writes_no_index(tmp_path):
    audio_only(tmp_path / "song.m4a")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    index = tmp_path / "train.txt"
    index.write_text("song.m4a 1\nbad.mp4 0\n")
    new_index, failed = transcode_index(str(index), str(tmp_path / "out"))
    assert new_index is None and [src for src, _ in failed] == [str(tmp_path / "song.m4a"), str(tmp_path / "bad.mp4")]
    assert not (tmp_path / "out" / "train.txt").exists()


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotated_source_is_transcoded_upright(tmp_path, rotation):
    """A portrait phone video (stored sideways, with a display rotation) transcodes to an upright file
    without rotation: its frames are the upright clips the training path makes of the source, and
    --short-side applies to the upright picture (was: the stored frames re-encoded, shown sideways)."""
    import torch

    from vjepa_scale.data.clips import orient_clip
    from vjepa_scale.data.decode import decode_clip_frames, probe_video
    from vjepa_scale.data.synthetic_videos import write_video

    up = np.zeros((6, 48, 32, 3), np.uint8)  # upright: 48 high, 32 wide
    up[:, :16, :16] = 230  # a bright top-left corner and a red bottom band: any wrong turn moves them
    up[:, 40:, :, 0] = 200
    src = str(tmp_path / "phone.mp4")
    write_video(src, np.ascontiguousarray(np.rot90(up, -rotation // 90, axes=(1, 2))), 8, rotation=rotation)
    info = probe_video(src)
    assert info.rotation == rotation and (info.height, info.width) == (32, 48)
    trained = orient_clip(torch.from_numpy(decode_clip_frames(info, list(range(6)))).permute(3, 0, 1, 2),
                          rotation, False).permute(1, 2, 3, 0).float()  # what training sees, (T, H, W, 3)

    dst = str(tmp_path / "out.mp4")
    assert transcode_video(src, dst) == {"frames": 6, "width": 32, "height": 48}
    out = probe_video(dst)
    assert out.rotation == 0 and (out.height, out.width) == (48, 32)
    got = torch.from_numpy(decode_clip_frames(out, list(range(6)))).float()
    assert (got - trained).abs().mean() < 4  # re-encoding noise only
    assert (got - torch.from_numpy(up).float()).abs().mean() < 4

    small = transcode_video(src, str(tmp_path / "small.mp4"), short_side=16)
    assert (small["width"], small["height"]) == (16, 24)


def test_anamorphic_source_is_transcoded_to_square_pixels(tmp_path):
    """32 x 24 stored pixels with sample aspect ratio 2:1 show as 48 wide x 32 high: the output has square
    pixels at that aspect (48 x 32, SAR 1), its content stretched to match (was: 24 x 32, squeezed)."""
    from fractions import Fraction

    import av

    from vjepa_scale.data.decode import decode_clip_frames, probe_video

    src = str(tmp_path / "anamorphic.mp4")
    stored = np.zeros((32, 24, 3), np.uint8)
    stored[:, :12] = 220  # the left half bright: it must stay the left half, now 24 pixels wide
    with av.open(src, "w") as out:
        s = out.add_stream("libx264", rate=8, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = 24, 32, "yuv420p"
        s.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for _ in range(4):
            out.mux(s.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        out.mux(s.encode())
    assert probe_video(src).sar == 2.0
    dst = str(tmp_path / "square.mp4")
    assert transcode_video(src, dst) == {"frames": 4, "width": 48, "height": 32}
    info = probe_video(dst)
    assert info.sar == 1.0 and (info.height, info.width) == (32, 48)
    level = decode_clip_frames(info, [0]).astype(float)[0].mean(axis=(0, 2))  # per column
    assert level[:22].min() > 180 and level[26:].max() < 40
