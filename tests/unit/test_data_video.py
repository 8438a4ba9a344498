"""Video data pipeline: the Batch contract, clip stride on real encoded files, backends, bad files and
the skip policy, sharding, mixtures (2-rank runs and the data tool's command line:
integration/test_data_video_e2e.py)."""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest
import torch

from helpers import (frame_ids, frame_numbers, needs, numbered_frames, require, tiny_config, video_cfg, write_bad_set,
                     write_index, write_video_sets)
from vjepa_scale.config import ConfigError, DatasetSpec, MaskConfig
from vjepa_scale.data import Batch, NoReadableVideosError, build_dataloader, build_dataset, dali_available
from vjepa_scale.data.batch import ClipCollator
from vjepa_scale.data.clips import (clip_frame_indices, clip_window, frame_offsets, normalize_clip, plan_clips, plan_video,
                                   short_frame_indices, video_frame_step)
from vjepa_scale.data.decode import (VideoError, VideoInfo, _decode_after_seek, _open, decode_clip_frames,
                                     decode_frames, probe_video)
from vjepa_scale.data.sampler import MixturePlan, StepBatchSampler
from vjepa_scale.data.skips import substitute
from vjepa_scale.data.synthetic_videos import (frame_index_frames, frame_index_level, moving_shape_frames,
                                               write_synthetic_videos, write_video)
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.mixed import MixedVideo

needs_dali = needs("nvidia.dali")


@pytest.fixture(scope="session")
def sets(tmp_path_factory):
    return write_video_sets(tmp_path_factory.mktemp("videos"))


def test_clip_indices_stride_padding_and_spread():
    rng = np.random.default_rng(0)
    for _ in range(50):
        (c,) = clip_frame_indices(40, 8, 4, 1, rng)
        assert len(c) == 8 and np.all(np.diff(c) == 4) and 0 <= c[0] and c[-1] < 40
    assert clip_frame_indices(5, 4, 2, 1, rng) == [[0, 2, 4, 4]]  # window 7 > 5 frames: pad with last
    clips = clip_frame_indices(100, 4, 2, 3, rng)  # three clips from successive parts of the video
    assert [c[0] for c in clips] == sorted(c[0] for c in clips) and clips[2][-1] < 100


def _reference_indices(start: int, num_frames: int, fpc: int, fstp: int) -> list[int]:
    """facebookresearch/jepa and vjepa2's `loadvideo_decord` frame indices for one clip, restated: a window
    of fpc x fstp frames from `start` with fpc linspace points, or in a video shorter than the window
    num_frames // fstp points over the whole video, then its last frame repeated."""
    clip_len = fpc * fstp
    if num_frames >= clip_len:
        idx = np.linspace(start, start + clip_len, num=fpc)
        return np.clip(idx, start, start + clip_len - 1).astype(np.int64).tolist()
    idx = np.linspace(0, num_frames, num=num_frames // fstp)
    idx = np.concatenate((idx, np.ones(fpc - num_frames // fstp) * num_frames))
    return np.clip(idx, 0, num_frames - 1).astype(np.int64).tolist()


def test_linspace_spacing_takes_the_reference_repos_frames():
    """data.frame_spacing: linspace gives the reference's frames: 16 x 4 spans 64 frames (0, 4, 8, 12, 17, ...,
    63), a 63-frame video is short, a short one spreads num_frames // step frames then repeats its last."""
    assert frame_offsets(16, 4, "linspace") == [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 46, 51, 55, 59, 63]
    assert (clip_window(16, 4), clip_window(16, 4, "linspace"), clip_window(8, 7, "linspace")) == (61, 64, 56)
    for fpc, fstp in [(16, 4), (64, 7), (8, 2), (3, 1)]:
        rng = np.random.default_rng(1)
        for n in [fpc * fstp, fpc * fstp + 5, 500]:
            for _ in range(5):
                (c,) = clip_frame_indices(n, fpc, fstp, 1, rng, "linspace")
                assert c == _reference_indices(c[0], n, fpc, fstp) and c[-1] < n
        for n in [1, fstp - 1, fstp, fpc * fstp // 2 + 1, fpc * fstp - 1]:
            if n >= 1:
                assert short_frame_indices(n, fpc, fstp, "linspace") == _reference_indices(0, n, fpc, fstp), (fpc, fstp, n)
                assert clip_frame_indices(n, fpc, fstp, 2, rng, "linspace") == [_reference_indices(0, n, fpc, fstp)] * 2
    cfg = tiny_config(frames=16).data
    cfg = dataclasses.replace(cfg, frame_step=4, frame_spacing="linspace")
    with pytest.raises(VideoError, match="too short: 63 frames, a clip spans 64"):
        plan_video(VideoInfo("v.mp4", "h264", 63, 32, 32, 30.0, False), cfg, 0, 0, 0)
    assert not plan_video(VideoInfo("v.mp4", "h264", 64, 32, 32, 30.0, False), cfg, 0, 0, 0)[0].padded


@pytest.mark.parametrize("codec,ext", [("h264", ".mp4"), ("vp9", ".webm")])
def test_seek_decoding_matches_sequential(tmp_path, codec, ext):
    """Windows deep in a video are decoded after a keyframe seek; same frames as decoding from 0."""
    path = str(tmp_path / f"gop4{ext}")
    write_video(path, frame_index_frames(30, 32, 32), 8, codec, {"g": "4"})
    info = probe_video(path)
    wanted = [13, 16, 19, 22]
    container = _open(path)
    seek = _decode_after_seek(container, container.streams.video[0], set(wanted), info.fps)
    container.close()
    assert seek is not None and sorted(seek) == wanted
    fast = decode_frames(path, wanted, info.num_frames, info.fps)
    assert np.array_equal(fast, decode_frames(path, wanted, info.num_frames))
    levels = [int(round(x)) for x in fast.reshape(len(wanted), -1).mean(1)]
    assert all(abs(l - frame_index_level(i)) <= 2 for l, i in zip(levels, wanted))


def test_seek_in_millisecond_timestamps_matches_sequential(tmp_path):
    """A 30 fps WebM stores millisecond timestamps (33, 33, 34 ms apart; a rate from the median step
    drifts a frame every ~50): every window decoded after a seek holds the frames decoding from 0 gives."""
    from helpers.dali_videos import encode

    n = 210
    path = encode(tmp_path / "ms.webm", numbered_frames(n, 32, 32), "libvpx-vp9", fps=30, options={"g": "10"})
    info = probe_video(path)
    assert info.num_frames == n and not info.variable_frame_rate and info.fps == pytest.approx(30, abs=0.01)
    every = decode_frames(path, list(range(n)))  # sequential: starts at frame 0
    assert frame_numbers(every) == list(range(n))
    shifted = [first for first in range(8, n - 3)
               if not np.array_equal(decode_clip_frames(info, list(range(first, first + 4))), every[first:first + 4])]
    assert shifted == []


def _hide_leading_frames(src: str, dst: str, hidden: int, fps: int) -> None:
    """Remux MP4 `src` to `dst` with every packet `hidden` frames earlier: the muxer writes an edit list
    that hides the first `hidden` frames (still stored, so the stream's frame count includes them)."""
    import av

    with av.open(src) as inp, av.open(dst, "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        shift = int(round(hidden / fps / s_in.time_base))
        for packet in inp.demux(s_in):
            if packet.dts is None:  # the flush packet
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = s_out
            out.mux(packet)


@pytest.mark.parametrize("preset", ["ultrafast", "veryfast"])  # veryfast: B-frames (pts != dts)
def test_edit_list_hiding_leading_frames_counts_the_shown_ones(tmp_path, preset):
    """An MP4 whose edit list hides its first 10 of 40 stored frames has the 30 frames decoding yields
    (numbered in presentation order from the first shown one), by sequential and by seek decoding, and
    a clip at its end decodes (was: 40 declared frames, every late clip "truncated")."""
    src, path = str(tmp_path / "src.mp4"), str(tmp_path / "edited.mp4")
    write_video(src, numbered_frames(40, 32, 32), 8, "h264", {"g": "8", "preset": preset})
    _hide_leading_frames(src, path, 10, 8)
    with _open(path) as container:
        assert container.streams.video[0].frames == 40  # the stored count includes the hidden frames
    info = probe_video(path)
    assert info.num_frames == 30 and info.fps == pytest.approx(8)
    every = decode_frames(path, list(range(30)))
    assert frame_numbers(every) == list(range(10, 40))
    for first in (8, 13, 26):  # seeks (first >= SEEK_MIN_FRAME); 26: the clip ends at the last frame
        assert np.array_equal(decode_clip_frames(info, list(range(first, first + 4))), every[first:first + 4])
    from vjepa_scale.data.nvdec import dali_route, stream_format  # DALI's reader is not trusted with these
    fmt = stream_format(path)
    assert fmt.hidden_frames and "edit list" in dali_route(fmt, "gpu", (9, 0)) and not stream_format(src).hidden_frames
    frag = str(tmp_path / "fragmented.mp4")  # no stored frame count (0): not an edit list
    write_video(frag, numbered_frames(12, 32, 32), 8, "h264", {"preset": preset},
                container_options={"movflags": "frag_keyframe+empty_moov"})
    assert not stream_format(frag).hidden_frames and probe_video(frag).num_frames == 12


def _video_with_longer_audio(path: str, vcodec: str, acodec: str, frames: int, audio_s: float, fps: int = 30) -> None:
    """`frames` numbered frames at `fps` plus `audio_s` seconds of silence (longer than the video) in `path`."""
    import av

    pictures = numbered_frames(frames, 32, 32)
    with av.open(path, "w") as out:
        video = out.add_stream(vcodec, rate=fps)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = out.add_stream(acodec, rate=48000)
        audio.layout = "mono"
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(pictures[t], format="rgb24")
            frame.pts = t
            out.mux(video.encode(frame))
        out.mux(video.encode())
        fmt, size = audio.codec_context.format.name, audio.codec_context.frame_size or 1024
        for start in range(0, int(audio_s * 48000), size):
            silence = np.zeros((1, size), np.int16 if fmt.startswith("s16") else np.float32)
            frame = av.AudioFrame.from_ndarray(silence, format=fmt, layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            out.mux(audio.encode(frame))
        out.mux(audio.encode())


@pytest.mark.parametrize("ext,vcodec,acodec", [(".mkv", "libx264", "aac"), (".webm", "libvpx-vp9", "libopus")])
def test_matroska_audio_longer_than_video_is_complete(tmp_path, ext, vcodec, acodec):
    """A 40-frame (1.33 s) Matroska/WebM video with 2 s of audio is complete: its video ends where its
    DURATION tag says, not at the container's duration, which includes the audio (was: "truncated"); the
    same file cut in half still is truncated."""
    path = str(tmp_path / f"audio{ext}")
    _video_with_longer_audio(path, vcodec, acodec, 40, 2.0)
    with _open(path) as container:
        assert container.duration / 1e6 > 1.9  # the audio's end
    info = probe_video(path)
    assert info.num_frames == 40
    assert frame_numbers(decode_clip_frames(info, [30, 35, 39])) == [30, 35, 39]
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(open(path, "rb").read()[: os.path.getsize(path) // 2])
    with pytest.raises(VideoError, match="truncated") as e:
        probe_video(str(cut))
    assert e.value.kind == "truncated"


def test_truncation_without_a_video_duration_compares_every_streams_end():
    """A video stream that declares no duration (no stream duration, no DURATION tag) is checked against the
    container's duration with the end of every stream's packets: audio running on past the video is
    complete, every stream ending early is truncated."""
    from types import SimpleNamespace

    from vjepa_scale.data.decode import _check_complete

    stream = SimpleNamespace(duration=None, time_base=None, metadata={})
    container = SimpleNamespace(duration=2_000_000, start_time=0)
    _check_complete(container, stream, "v.mkv", 1.33, 2.0, 30.0)  # the audio ends at 2 s: complete
    with pytest.raises(VideoError, match="v.mkv: truncated: its streams end at 1.00 s of the 2.00 s"):
        _check_complete(container, stream, "v.mkv", 0.9, 1.0, 30.0)
    stream.metadata = {"DURATION": "00:00:01.333000000"}  # the video's own duration wins
    _check_complete(container, stream, "v.mkv", 1.33, 1.33, 30.0)
    with pytest.raises(VideoError, match="its frames end at 0.90 s of the 1.33 s"):
        _check_complete(container, stream, "v.mkv", 0.9, 2.0, 30.0)


def test_truncated_file_raises_video_error(tmp_path):
    path = tmp_path / "full.avi"
    write_video(path, frame_index_frames(30, 32, 32), 8, "mjpeg")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    info = probe_video(str(cut))  # the header still promises 30 frames
    assert decode_frames(str(cut), [0, 5], info.num_frames).shape == (2, 32, 32, 3)
    with pytest.raises(VideoError, match="cut.avi"):
        decode_frames(str(cut), [0, 26], info.num_frames)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("dali", marks=needs_dali)])
def test_clip_shape_and_stride(sets, backend):
    """Frames picked are the planned ones at the exact stride (read back from the pixels).

    CPU: H.264, VP9, HEVC and MJPEG files; DALI on the CPU: VP9 files.
    """
    name = "index" if backend == "cpu" else "index_vp9"
    cfg = video_cfg([(sets[name]["train"], 1.0)], backend=backend, frames=4, step=3)
    codecs = set()
    for batch in build_dataloader(cfg, num_steps=3):
        assert batch.video.shape == (2, 3, 4, 32, 32)
        assert batch.skipped == []
        for b in range(2):
            i = batch.index[b]
            path = cfg.data.datasets[0].path
            info = probe_video(open(path).read().splitlines()[i].split()[0])
            codecs.add(info.codec)
            (plan,) = plan_clips(info.num_frames, info.height, info.width, cfg.data, cfg.data.seed, batch.step, i)
            got = frame_ids(batch.video[b])
            assert got == list(plan.frames)
            assert all(d == 3 for d in np.diff(got))
    assert codecs == ({"h264", "vp9", "hevc", "mjpeg"} if backend == "cpu" else {"vp9"})


def test_short_video_skipped_not_padded(sets):
    """A file shorter than one clip window (7 > 5 frames) is skipped and counted, never padded."""
    cfg = video_cfg([(sets["short"]["train"], 1.0)], frames=4, step=2)
    with pytest.raises(NoReadableVideosError, match="too_short: too short: 5 frames, a clip spans 7"):
        next(iter(build_dataloader(cfg, num_steps=1)))


def _info(fps: float, num_frames: int = 300) -> VideoInfo:
    return VideoInfo(f"v{fps}.mp4", "h264", num_frames, 32, 32, fps, False)


def test_fps_sets_each_videos_frame_step():
    """data.fps: frame step max(1, ceil(video fps) // fps) per video (V-JEPA 2's rule); data.frame_step unused."""
    cfg = video_cfg([], backend="synthetic", frames=4, step=2, fps=4.0).data
    for fps, step in [(30, 7), (29.97, 7), (25, 6), (24, 6), (12, 3), (3, 1)]:
        assert video_frame_step(fps, cfg) == step
        for key in range(5):
            (plan,) = plan_video(_info(fps), cfg, 0, 1, key)
            assert np.all(np.diff(plan.frames) == step) and not plan.padded, (fps, plan)
    (plan,) = plan_video(_info(30), dataclasses.replace(cfg, fps=None), 0, 1, 0)  # no fps: data.frame_step
    assert np.all(np.diff(plan.frames) == 2)
    with pytest.raises(VideoError, match=r"too short: 21 frames, a clip spans 22 \(frame step 7 for data.fps=4 at 30 fps"):
        plan_video(_info(30, 21), cfg, 0, 1, 0)  # the window follows the video's step
    assert plan_video(_info(25, 21), cfg, 0, 1, 0)[0].frames[-1] <= 20  # 19-frame window at 25 fps: fits


def test_fps_through_the_cpu_backend(tmp_path):
    """Real 30, 25 and 12 fps files at data.fps=4: clips read back at steps 7, 6 and 3, also in a dataset
    with its own clip length (its data config carries fps)."""
    paths = {}
    for fps in (30, 25, 12):
        paths[fps] = str(tmp_path / f"r{fps}.mp4")
        write_video(paths[fps], frame_index_frames(31, 32, 32), fps, "h264")
    a = write_index(tmp_path / "a.txt", [paths[30], paths[25]])
    b = write_index(tmp_path / "b.txt", [paths[12]])
    cfg = video_cfg([(a, 1.0)], frames=4, step=2, batch=3, fps=4.0)
    cfg.data = dataclasses.replace(cfg.data, datasets=[DatasetSpec(str(a), None), DatasetSpec(str(b), None, 2)])
    want = {0: 7, 1: 6, 2: 3}  # index entry -> frame step
    seen = set()
    for batch in build_dataloader(cfg.validate(), num_steps=3):
        clips = batch.video.samples() if isinstance(batch.video, MixedVideo) else list(batch.video)
        assert batch.skipped == [] and batch.padded == 0
        for i, clip in zip(batch.index, clips):
            got = frame_ids(clip)
            assert len(got) == (2 if i == 2 else 4) and np.all(np.diff(got) == want[i]), (i, got)
            seen.add(i)
    assert seen == {0, 1, 2}


def _short_long_truncated(folder) -> tuple[str, list[str]]:
    """An index of a 5-frame and a 20-frame VP9 video (frame_index pattern) and a truncated one: (index, paths)."""
    short, long = str(folder / "short.webm"), str(folder / "long.webm")
    write_video(short, frame_index_frames(5, 32, 32), 8, "vp9")
    write_video(long, frame_index_frames(20, 32, 32), 8, "vp9")
    full, cut = folder / "full.webm", folder / "cut.webm"  # 30 frames of texture: 30% of it is past the header
    write_video(full, moving_shape_frames(0, 30, 48, np.random.default_rng(0)), 8, "vp9")
    cut.write_bytes(full.read_bytes()[: os.path.getsize(full) * 3 // 10])
    paths = [short, long, str(cut)]
    return str(write_index(folder / "mixed.txt", paths)), paths


@pytest.mark.parametrize("backend", ["cpu", pytest.param("dali", marks=needs_dali)])
def test_short_videos_pad_repeats_the_last_frame_and_counts_it(tmp_path, backend):
    """data.short_videos: pad keeps a video shorter than one clip window (7 > 5 frames): sampled from frame 0
    at the step, its last frame repeated, counted in data_padded; a truncated file is still skipped.
    skip (the default) skips the short video as too_short instead."""
    from vjepa_scale.data import skip_metrics

    index, (short, long, cut) = _short_long_truncated(tmp_path)
    metrics, padded = {}, {}
    for mode in ("pad", "skip"):
        cfg = video_cfg([(index, 1.0)], backend=backend, frames=4, step=2, batch=3, short_videos=mode)
        loader = build_dataloader(cfg, num_steps=1)
        (batch,) = list(loader)  # one epoch: each entry drawn once (the truncated one replaced)
        kinds = {reason.split(":")[0] for _, reason in batch.skipped}  # a replacement may hit a bad entry again
        ids = [frame_ids(clip) for clip in batch.video]
        if mode == "pad":
            assert kinds == {"truncated"} and batch.index.count(0) == 1
            assert all(got == [0, 2, 4, 4] for i, got in zip(batch.index, ids) if i == 0)
        else:
            assert kinds == {"too_short", "truncated"} and 0 not in batch.index
        assert all(got[-1] - got[0] == 6 for i, got in zip(batch.index, ids) if i == 1)
        metrics[mode], padded[mode] = skip_metrics(loader), batch.padded
        assert metrics[mode]["data_skipped"] == len(batch.skipped)
    assert padded == {"pad": 1, "skip": 0}
    assert (metrics["pad"]["data_padded"], metrics["skip"]["data_padded"]) == (1, 0)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("dali", marks=needs_dali)])
def test_linspace_spacing_decodes_the_reference_frames(tmp_path, backend):
    """data.frame_spacing: linspace through the data loader: 4 frames at step 2 span 8 frames (offsets 0, 2, 5, 7);
    the 5-frame video, padded, takes 5 // 2 = 2 frames spread over it (0, 4), then its last (4, 4)."""
    index, _ = _short_long_truncated(tmp_path)
    cfg = video_cfg([(index, 1.0)], backend=backend, frames=4, step=2, batch=3, short_videos="pad",
                    frame_spacing="linspace")
    (batch,) = list(build_dataloader(cfg, num_steps=1))
    got = {i: frame_ids(clip) for i, clip in zip(batch.index, batch.video)}
    assert got[0] == [0, 4, 4, 4] and batch.padded >= 1
    assert np.diff(got[1]).tolist() == [2, 3, 2] and got[1][-1] < 20


def test_num_clips_flattened_into_batch(sets):
    cfg = video_cfg([(sets["index"]["train"], 1.0)], frames=4, step=1, num_clips=2)
    batch = next(iter(build_dataloader(cfg, num_steps=1)))
    assert batch.video.shape == (4, 3, 4, 32, 32) and batch.label.shape == (4,)
    assert batch.index[0] == batch.index[1] and (batch.num_clips, batch.num_samples) == (4, 2)
    first, second = frame_ids(batch.video[0]), frame_ids(batch.video[1])
    assert first[0] <= second[0] and np.all(np.diff(second) == 1)


def test_collator_flattens_clips_into_one_batch():
    """ClipCollator: (num_clips, C, T, H, W) samples become rows; skips listed once; masks of (step, rank's slots)."""
    masker = MultiBlockMasker(MaskConfig(), (2, 4, 4))
    v = torch.randn(2, 3, 4, 64, 64)
    samples = [{"video": v, "label": 7, "step": 5, "index": 3, "skipped": [("bad.mp4", "empty file")]},
               {"video": v[0] + 1, "label": 1, "step": 5, "index": 9, "skipped": []}]
    batch = ClipCollator(masker, rank=1)(samples)
    assert isinstance(batch, Batch) and batch.video.shape == (3, 3, 4, 64, 64) and batch.step == 5
    assert torch.equal(batch.video[:2], v) and torch.equal(batch.video[2], v[0] + 1)
    assert batch.label.dtype == torch.int64 and batch.label.tolist() == [7, 7, 1]
    assert batch.index == [3, 3, 9] and batch.skipped == [("bad.mp4", "empty file")]
    assert torch.equal(batch.masks.ctx_idx, masker(3, 5, first_slot=3).ctx_idx)  # rank 1: slots 3-5
    assert not torch.equal(batch.masks.ctx_idx, masker(3, 5, first_slot=0).ctx_idx)


def test_synthetic_batches_follow_the_batch_contract():
    cfg = tiny_config(crop=32, frames=4, batch_size=3, depth=1)
    dataset = build_dataset(cfg)
    batches = list(build_dataloader(cfg, start_step=2, num_steps=2))
    assert [b.step for b in batches] == [2, 3]
    for b in batches:
        assert isinstance(b, Batch) and b.skipped == [] and len(b.index) == 3
        assert b.label.tolist() == [dataset[i]["label"] for i in b.index]
        assert all(torch.equal(b.video[k], dataset[i]["video"]) for k, i in enumerate(b.index))
    assert len(set(batches[0].index + batches[1].index)) == 6  # distinct samples of one epoch
    moved = batches[0].to("cpu", torch.bfloat16)
    assert moved.video.dtype == torch.bfloat16 and batches[0].video.dtype == torch.float32
    assert torch.equal(moved.video, batches[0].video.bfloat16()) and moved.index == batches[0].index


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_pinned_by_the_dataloader_and_moved():
    cfg = tiny_config(crop=32, frames=4, batch_size=2, depth=1)
    cfg.data = dataclasses.replace(cfg.data, pin_memory=True, num_workers=1)
    batch = next(iter(build_dataloader(cfg, num_steps=1)))
    assert batch.video.is_pinned() and batch.label.is_pinned() and batch.masks.ctx_idx.is_pinned()
    cuda = batch.to("cuda", torch.bfloat16)
    assert cuda.video.is_cuda and cuda.video.dtype == torch.bfloat16 and cuda.masks.ctx_cu_seqlens.is_cuda
    assert torch.equal(cuda.video.cpu(), batch.video.bfloat16())


def test_substitute_draws_seeded_uniform_replacements():
    """The one skip policy (CPU and DALI backends): the entry itself, else seeded uniform draws."""
    bad = {1, 2, 5}

    def entry(i):
        if i in bad:
            raise VideoError(f"v{i}.mp4", f"broken {i}", "decode_error")
        return f"clip {i}"

    kw = dict(seed=0, step=3, slot=1, max_bad_fraction=0.5)
    assert substitute(0, 6, entry, **kw) == (0, "clip 0", [])
    i, clip, skipped = substitute(1, 6, entry, **kw)
    assert i not in bad and clip == f"clip {i}" and skipped[0] == ("v1.mp4", "decode_error: broken 1")
    assert substitute(1, 6, entry, **kw) == (i, clip, skipped)  # same (seed, step, slot): same draws
    others = {substitute(1, 6, entry, **{**kw, "slot": s})[0] for s in range(40)}
    assert others == {0, 3, 4}  # every good entry is reachable, not just the next one
    bad = set(range(6))
    with pytest.raises(NoReadableVideosError, match=r"entry #4 and 30 random replacements could not be used"):
        substitute(4, 6, entry, **kw)  # 0.5 ** 30 < 1e-9


def test_substitute_stays_in_the_bad_entrys_dataset():
    """With several datasets (which may have other clip shapes) a replacement comes from the bad
    entry's own dataset: `VideoIndex.span`."""
    from vjepa_scale.data.index import VideoIndex

    index = VideoIndex(paths=[f"v{i}" for i in range(10)], labels=[0] * 10, sizes=[4, 6], weights=[1.0, 1.0],
                       sources=["a.txt", "b.txt"])
    assert [index.span(i) for i in (0, 3, 4, 9)] == [(0, 4), (0, 4), (4, 10), (4, 10)]
    with pytest.raises(IndexError):
        index.span(10)

    def entry(i):
        if i == 5:
            raise VideoError(f"v{i}.mp4", "broken", "decode_error")
        return i

    used = {substitute(5, 10, entry, seed=0, step=0, slot=s, max_bad_fraction=0.5, span=index.span(5))[0]
            for s in range(60)}
    assert used == {4, 6, 7, 8, 9}


@needs_dali
def test_dali_cpu_matches_cpu_backend_same_box(sets):
    """DALI (CPU device) vs PyAV+torch on VP9 with identical plans: equal within decoder rounding.

    Colour conversion differs by a couple of grey levels; a clip shifted by one frame differs far more,
    so the comparison also proves both decoded the same frames.
    """
    from vjepa_scale.data.dali import DaliClipRunner

    lines = [l.split()[0] for l in open(sets["shapes"]["train"]).read().splitlines()]
    paths = [p for p in lines if p.endswith(".webm")][:3]
    cfg = video_cfg([(sets["shapes"]["train"], 1.0)], frames=4, step=2, crop=32)
    items = []
    for k, p in enumerate(paths):
        info = probe_video(p)
        items.append((p, plan_clips(info.num_frames, info.height, info.width, cfg.data, 0, 5, k)[0]))
    dali = DaliClipRunner(len(items), 32, "cpu").run(items)
    assert dali.shape == (3, 3, 4, 32, 32)

    def cpu(shift):
        return torch.stack([normalize_clip(torch.from_numpy(decode_frames(p, [f + shift for f in pl.frames])),
                                           pl.box, pl.flip, 32) for p, pl in items])

    levels = lambda x: (x * 0.225 * 255).abs()  # normalized units -> approx. grey levels
    diff = levels(dali - cpu(0))
    assert diff.mean() < 3.0 and torch.quantile(diff.flatten(), 0.99) < 16
    assert levels(dali - cpu(1)).mean() > 3 * diff.mean()


@needs_dali
@pytest.mark.parametrize("probe_all", [True, False])
def test_dali_reports_codecs_it_cannot_decode(sets, caplog, monkeypatch, probe_all):
    """H.264/HEVC on the DALI CPU decoder: reported (at build, or when first drawn for huge indexes) and
    decoded by PyAV inside the DALI batches (per file), never skipped or silently dropped."""
    import vjepa_scale.data.dali as dali_mod

    if not probe_all:
        monkeypatch.setattr(dali_mod, "PROBE_ALL_MAX", 0)
    cfg = video_cfg([(sets["index"]["train"], 1.0)], backend="dali", frames=4, step=3)
    with caplog.at_level(logging.WARNING, logger="vjepa_scale.data"):
        loader = build_dataloader(cfg, num_steps=2)  # 4 draws: the whole 4-video index
        batches = list(loader)
    h264 = set(loader.on_cpu)
    assert len(h264) == 2 and all(p.endswith(".mp4") for p in h264)  # the H.264 and the HEVC file
    assert not loader.unusable and not loader.skipped_files
    if probe_all:
        assert all(p in caplog.text for p in h264)
    assert sorted(i for b in batches for i in b.index) == [0, 1, 2, 3]
    assert loader.stats["pyav_clips"] == 2 and loader.stats["dali_clips"] == 2
    for b in batches:  # the right frames whoever decoded them
        for row, i in enumerate(b.index):
            info = probe_video(open(sets["index"]["train"]).read().splitlines()[i].split()[0])
            (plan,) = plan_clips(info.num_frames, info.height, info.width, cfg.data, cfg.data.seed, b.step, i)
            assert frame_ids(b.video[row]) == list(plan.frames)


@needs_dali
def test_dali_probe_cache_is_bounded_and_uncached_files_decode_the_same(sets, monkeypatch):
    """Past PROBE_CACHE_MAX usable probes a drawn file is probed again on each draw (a huge index does
    not grow every rank's memory by ~1 KB per file): same batches, same DALI / PyAV routing."""
    import vjepa_scale.data.dali as dali_mod

    monkeypatch.setattr(dali_mod, "PROBE_ALL_MAX", 0)
    cfg = video_cfg([(sets["index"]["train"], 1.0)], backend="dali", frames=4, step=3)
    full = build_dataloader(cfg, num_steps=2)
    want = list(full)
    monkeypatch.setattr(dali_mod, "PROBE_CACHE_MAX", 1)
    small = build_dataloader(cfg, num_steps=2)
    got = list(small)
    assert len(small._probes) <= 1 < len(full._probes)
    for a, b in zip(want, got):
        assert a.index == b.index and torch.equal(a.video, b.video)
    assert small.stats["pyav_clips"] == full.stats["pyav_clips"] == 2 and small.stats["dali_clips"] == 2


@needs_dali
def test_dali_skips_truncated_file_with_intact_header(sets, tmp_path):
    """A VP9 file cut to 3/5 with its header intact: found by the probe, skipped and counted, never padded;
    the other files are still decoded by DALI (bisecting batches DALI fails on: test_dali_cpu)."""
    good = [l.split()[0] for l in open(sets["shapes"]["train"]).read().splitlines() if ".webm" in l][:3]
    cut = tmp_path / "cut.webm"
    cut.write_bytes(open(good[0], "rb").read()[: os.path.getsize(good[0]) * 3 // 5])
    index = tmp_path / "vp9_cut.txt"
    index.write_text("".join(f"{p} 0\n" for p in good + [str(cut)]))
    cfg = video_cfg([(index, 1.0)], backend="dali", frames=4, step=2)
    loader = build_dataloader(cfg, num_steps=2)
    assert loader.unusable[str(cut)].startswith("truncated:")
    batches = list(loader)
    assert all(b.video.shape == (2, 3, 4, 32, 32) for b in batches)
    assert set(loader.skipped_files) == {str(cut)}
    assert loader.stats["pyav_clips"] == 0 and loader.stats["dali_clips"] == 4 and loader.stats["dali_failures"] == 0


@pytest.fixture
def bad_set(sets, tmp_path):
    return write_bad_set(sets["shapes"]["train"], tmp_path)


def test_bad_files_train_through_and_are_reported(bad_set, caplog):
    """Two DataLoader workers, a tiny JEPA step per batch; every bad file is skipped and named."""
    from vjepa_scale.models import JEPA, compute_targets, make_target_encoder

    index, bad = bad_set
    cfg = video_cfg([(index, 1.0)], frames=4, step=2, batch=4, workers=2)
    torch.manual_seed(0)
    model = JEPA(cfg)
    target = make_target_encoder(model.encoder)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = build_dataloader(cfg, num_steps=6)  # 24 draws over 12 entries: two epochs
    with caplog.at_level(logging.WARNING, logger="vjepa_scale.data"):
        for batch in loader:
            assert batch.video.shape == (4, 3, 4, 32, 32) and torch.isfinite(batch.video).all()
            loss = model(batch.video, batch.masks, compute_targets(target, batch.video, batch.masks))
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
    assert set(loader.skipped_files) == set(bad)
    for p in bad:
        assert p in caplog.text
    assert "data epoch 0" in caplog.text and "data epoch 1" in caplog.text


def test_bad_share_counts_samples_not_clips(bad_set):
    """With data.num_clips=2 a draw is one sample (two rows): the share of bad draws is the same as at 1."""
    index, bad = bad_set
    for num_clips in (1, 2):
        cfg = video_cfg([(index, 1.0)], frames=4, step=1, batch=4, num_clips=num_clips)
        loader = build_dataloader(cfg, num_steps=3)  # 12 draws, the index's 12 entries
        batches = list(loader)
        tracker = loader.tracker
        assert tracker.draws == 3 * 4 + tracker.skipped and tracker.skipped >= len(bad)
        assert all(b.num_samples == 4 and b.num_clips == 4 * num_clips for b in batches)


def test_resolution_change_mid_stream_skipped_and_reported(sets, tmp_path):
    """An MKV of 4 frames at 32x32, then 20 at 80x48: a clip across the change is a VideoError "unsupported"
    naming the file and both sizes (not np.stack's ValueError, which killed the loader); the loader skips
    and counts the file and trains on the others."""
    from helpers.dali_videos import resized_midway

    path = resized_midway(tmp_path / "resized.mkv")
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (24, 32, 32)
    for window in ([0, 3, 6, 9], [10, 13, 16, 19]):  # from the start, after a seek
        with pytest.raises(VideoError) as e:
            decode_clip_frames(info, window)
        assert e.value.kind == "unsupported" and all(w in str(e.value) for w in (path, "80x48", "32x32"))
    good = [line.split()[0] for line in open(sets["shapes"]["train"]).read().splitlines()[:3]]
    index = write_index(tmp_path / "i.txt", good + [path])
    loader = build_dataloader(video_cfg([(index, 1.0)], frames=4, step=3), num_steps=4)  # 2 epochs of 4 entries
    for batch in loader:
        assert batch.video.shape == (2, 3, 4, 32, 32) and 3 not in batch.index
    assert list(loader.skipped_files) == [path] and loader.tracker.kinds == {"unsupported": loader.skipped_files[path]}


def test_unexpected_decoder_exception_skips_the_file(sets, monkeypatch):
    """Any exception decoding one file is a VideoError naming it (so the file is skipped and counted);
    MemoryError still propagates."""
    import vjepa_scale.data.cpu as cpu

    dataset = build_dataset(video_cfg([(sets["index_vp9"]["train"], 1.0)], frames=4, step=2))

    bad = dataset.index.paths[0]
    real = cpu.decode_clip_frames

    def decode(info, indices, deadline=None):
        if info.path == bad:
            raise error
        return real(info, indices, deadline)

    monkeypatch.setattr(cpu, "decode_clip_frames", decode)
    error = MemoryError()
    with pytest.raises(MemoryError):
        dataset.load(0, step=0)
    error = ValueError("all input arrays must have the same shape")
    with pytest.raises(VideoError, match="ValueError: all input arrays") as e:
        dataset.load(0, step=0)
    assert e.value.path == bad and e.value.kind == "decode_error"
    item = dataset[(0, 0, 0)]
    assert item["index"] == 1 and item["video"].shape == (3, 4, 32, 32)
    assert {p for p, _ in item["skipped"]} == {bad} and item["skipped"][0][1].startswith("decode_error: ")


def test_unreadable_index_and_missing_path_fail_clearly(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    index = tmp_path / "all_bad.txt"
    index.write_text(f"{junk} 0\n{tmp_path / 'nope.webm'} 1\n")
    with pytest.raises(NoReadableVideosError, match="all_bad.txt"):
        build_dataloader(video_cfg([(index, 1.0)]), num_steps=1)
    with pytest.raises(ConfigError, match="does_not_exist.txt"):
        build_dataloader(video_cfg([(tmp_path / "does_not_exist.txt", 1.0)]), num_steps=1)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("dali", marks=needs_dali)])
def test_two_ranks_disjoint_and_cover_epoch(sets, backend):
    """2 ranks x batch 3 x (n / 6) steps = one epoch: disjoint per rank, all n videos covered."""
    index = sets["shapes"]["train"]
    if backend == "dali":  # DALI on CPU decodes the VP9 half only
        vp9 = index.parent / "vp9.txt"
        vp9.write_text("".join(l + "\n" for l in index.read_text().splitlines() if ".webm" in l))
        index = vp9
    n = len(index.read_text().splitlines())
    cfg = video_cfg([(index, 1.0)], backend=backend, frames=2, step=1, batch=3)
    seen = [[i for b in build_dataloader(cfg, rank=r, world_size=2, num_steps=n // 6) for i in b.index]
            for r in range(2)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(n))


def test_resume_reproduces_batches(sets):
    cfg = video_cfg([(sets["shapes"]["train"], 1.0)], frames=2, step=2)
    full = list(build_dataloader(cfg, num_steps=4))
    resumed = list(build_dataloader(cfg, start_step=2, num_steps=2))
    for a, b in zip(full[2:], resumed):
        assert a.step == b.step and a.index == b.index and torch.equal(a.video, b.video)


def test_mixture_weights_deterministic_resumable():
    plan = MixturePlan([10, 30], [3.0, 1.0], seed=7)
    assert plan.counts == [30, 10]
    e0, e1 = plan.epoch(0), plan.epoch(1)
    assert torch.equal(e0, MixturePlan([10, 30], [3.0, 1.0], seed=7).epoch(0))
    assert len(e0) == 40 and (e0 < 10).sum() == 30 and (e0 >= 10).sum() == 10
    # dataset 0 (10 samples, 30 draws per epoch): each sample exactly 3 times; dataset 1 cycles without repeats
    assert torch.bincount(e0[e0 < 10], minlength=10).tolist() == [3] * 10
    d1 = torch.cat([e0[e0 >= 10], e1[e1 >= 10], plan.epoch(2)[plan.epoch(2) >= 10]])
    assert sorted(d1.tolist()) == list(range(10, 40))
    # proportional weights: every epoch is a permutation
    assert sorted(MixturePlan([4, 6], [4, 6]).epoch(3).tolist()) == list(range(10))
    # resumable, and the two ranks stay disjoint within a step
    s = dict(num_samples=40, batch_size=4, seed=7)
    full = [b for b in StepBatchSampler(**s, num_steps=12, mixture=plan)]
    again = [b for b in StepBatchSampler(**s, start_step=5, num_steps=7, mixture=plan)]
    assert full[5:] == again
    r0 = list(StepBatchSampler(**s, rank=0, world_size=2, num_steps=5, mixture=plan))
    r1 = list(StepBatchSampler(**s, rank=1, world_size=2, num_steps=5, mixture=plan))
    assert sorted(i for b in r0 + r1 for i, *_ in b) == sorted(plan.epoch(0).tolist())


def test_null_weights_concatenate_datasets_each_epoch_a_permutation(tmp_path):
    """weight: null on every dataset = weights in proportion to their entries (V-JEPA 1's concatenation):
    every epoch draws each entry of datasets of 3, 5 and 8 entries exactly once; equal weights would not."""
    from vjepa_scale.data.index import load_index
    from vjepa_scale.data.loader import build_sampler

    indexes = [write_index(tmp_path / f"d{n}.txt", [f"v{n}_{k}.mp4" for k in range(n)]) for n in (3, 5, 8)]
    for weight in (None, 1.0):
        cfg = video_cfg([(p, weight) for p in indexes], batch=4)
        index = load_index(cfg.data.datasets)
        assert index.weights == ([3.0, 5.0, 8.0] if weight is None else [1.0] * 3)
        batches = list(build_sampler(cfg, len(index), 0, 1, 0, 12, index))  # 3 epochs of 16 draws
        epochs = [sorted(i for b in batches[e * 4:(e + 1) * 4] for i, _, _ in b) for e in range(3)]
        assert all(e == list(range(16)) for e in epochs) == (weight is None), epochs


def test_null_weights_per_step_draws_shapes_by_their_entries(tmp_path):
    """data.mixing: per_step with null weights: a shape is drawn with probability its datasets' share of all
    entries (2 of 16 here), not the equal weights' 1/2."""
    from vjepa_scale.data.index import load_index
    from vjepa_scale.data.loader import build_sampler

    small = write_index(tmp_path / "small.txt", ["a.mp4", "b.mp4"])
    large = write_index(tmp_path / "large.txt", [f"v{k}.mp4" for k in range(14)])
    cfg = video_cfg([(small, None)], batch=2, mixing="per_step")
    cfg.data = dataclasses.replace(cfg.data, datasets=[DatasetSpec(str(small), None, 8), DatasetSpec(str(large), None)])
    index = load_index(cfg.validate().data.datasets)
    draws = [b[0][0] for b in build_sampler(cfg, len(index), 0, 1, 0, 4000, index)]
    share = sum(i < 2 for i in draws) / len(draws)
    assert abs(share - 2 / 16) < 0.02, share


def test_mixed_index_files_through_loader(sets):
    cfg = video_cfg([(sets["index"]["train"], 3.0), (sets["shapes"]["train"], 1.0)], frames=2, step=1, batch=4)
    idx = [i for b in build_dataloader(cfg, num_steps=4) for i in b.index]  # one 16-draw epoch
    assert sum(i < 4 for i in idx) == 12 and sum(i >= 4 for i in idx) == 4


def test_auto_backend_and_data_bench_rows():
    """The data suite's rows carry measured numbers; the DALI row too, or (DALI missing) it names the reason
    and this test skips locally / fails in CI."""
    from vjepa_scale.bench import run_suite
    from vjepa_scale.config import Config
    from vjepa_scale.data import resolve_data_backend

    assert resolve_data_backend(Config()).name == ("dali" if torch.cuda.is_available() and dali_available() else "cpu")
    rows = run_suite("data", "cpu", True, batch_size=2, steps=1)
    assert [(r["suite"], r["impl"], r["workers"]) for r in rows] == [
        ("data", "cpu", 0), ("data", "cpu", 2), ("data", "dali-cpu", 2),  # small set
        ("data", "cpu", 2), ("data", "dali-cpu", 2),  # footage set
        ("data", "cpu", 2)]  # small set transcoded to short GOPs
    assert [r["case"].split(" -> ")[0] for r in rows] == ["small"] * 3 + ["footage"] * 2 + [
        "small transcoded (gop 16, short side 64)"]
    assert rows[0]["source"].startswith("12 x 96x96 h264+vp9, 24 frames")
    assert rows[3]["source"].startswith("2 x 320x180 h264+vp9, 48 frames, GOP ")  # measured: about 30
    assert rows[2]["source"].startswith("6 x 96x96 vp9") and rows[4]["source"].startswith("1 x 320x180 vp9")
    assert rows[5]["source"].startswith("12 x 64x64 h264, 24 frames, GOP 12")  # keyframes at 0 and 16
    measured = rows if dali_available() else [r for r in rows if r["impl"] == "cpu"]
    for r in measured:
        assert "note" not in r and r["frames_per_s"] == pytest.approx(8 * r["clips_per_s"])  # 8-frame clips
        assert r["time_ms"] == pytest.approx(2e3 / r["clips_per_s"])  # 2 clips per batch
        assert r.get("pyav_clips", 0) == 0  # DALI's CPU mode decodes the VP9 files itself
    if not dali_available():
        for r in (rows[2], rows[4]):
            assert r["note"] == "nvidia-dali not installed" and "clips_per_s" not in r
        require("nvidia.dali")


def test_synthetic_label_is_direction_of_motion(sets):
    """The shape moved between two frames matches its label's direction (4 px/frame at 32-64 px: size//16)."""
    from vjepa_scale.data.synthetic_videos import _VELOCITY

    for line in open(sets["shapes"]["train"]).read().splitlines():
        path, label = line.split()
        a, b = decode_frames(path, [2, 3]).astype(int)
        changed = np.abs(b - a).sum(-1) > 30
        speed = max(1, a.shape[0] // 16)
        score = [((np.abs(b - np.roll(a, (dy * speed, dx * speed), axis=(0, 1))).sum(-1) < 30) & changed).sum()
                 for dy, dx in (_VELOCITY[k] for k in range(4))]
        assert int(np.argmax(score)) == int(label), (path, score)




@pytest.mark.parametrize("side", [16, 8])
def test_noisy_square_videos_move_in_label_direction(tmp_path, side):
    """pattern noisy_square, through H.264: the square's light cells (230) shift 2 px per frame in
    the label's direction while the block-noise background (< 200) is redrawn every frame."""
    import av

    square = {} if side == 16 else {"side": side}
    paths = write_synthetic_videos(tmp_path, 4, 6, 64, ("h264",), val_fraction=0, pattern="noisy_square",
                                   square=square)
    rows = [line.split() for line in paths["train"].read_text().splitlines()]
    assert [int(label) for _, label in rows] == [0, 1, 2, 3]
    step = {0: (0, 2), 1: (0, -2), 2: (2, 0), 3: (-2, 0)}
    for path, label in rows:
        with av.open(path) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(float)
        assert frames.shape == (6, 64, 64, 3)
        assert np.abs(frames[1] - frames[0]).mean() > 20  # the background changes every frame
        for t in range(5):
            light = frames[t].min(-1) > 215
            best = max(((dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)),
                       key=lambda d: (np.roll(light, d, (0, 1)) & (frames[t + 1].min(-1) > 215)).sum())
            assert best == step[int(label)], (path, t, best)
            assert 0.25 * side**2 < light.sum() < 0.75 * side**2  # the light half of one square


def test_noisy_square_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="apply to pattern noisy_square"):
        write_synthetic_videos(tmp_path, 2, 4, 32, ("h264",), pattern="shapes", square={"side": 8})
    with pytest.raises(ValueError, match=r"unknown noisy_square settings \['size'\]"):
        write_synthetic_videos(tmp_path, 2, 4, 32, ("h264",), pattern="noisy_square", square={"size": 8})


def test_synthetic_videos_without_a_val_split_write_no_val_index(tmp_path):
    """val_fraction=0 or a single video: no (empty) val.txt, which evaluation would refuse; odd sizes refused."""
    for n, fraction in ((2, 0.0), (1, 0.25)):
        paths = write_synthetic_videos(tmp_path / str(n), n, 2, 16, ("h264",), val_fraction=fraction)
        assert set(paths) == {"train"} and not (tmp_path / str(n) / "val.txt").exists()
    with pytest.raises(ValueError, match="even size"):
        write_synthetic_videos(tmp_path / "odd", 2, 2, 31, ("h264",))
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        write_synthetic_videos(tmp_path / "all", 2, 2, 16, ("h264",), val_fraction=1.0)


def test_make_synthetic_videos_expands_a_leading_tilde(tmp_path, monkeypatch, capsys):
    """`tools/make_synthetic_videos.py '~/set'` (quoted, so no shell expanded it) wrote into ./~/set."""
    from helpers import load_tool

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert load_tool("make_synthetic_videos").main(["~/set", "--num-videos", "1", "--frames", "2", "--size", "16",
                                                     "--codecs", "h264", "--val-fraction", "0"]) == 0
    assert (tmp_path / "home" / "set" / "train.txt").is_file() and not (tmp_path / "~").exists()
    assert f"index files: {tmp_path}/home/set/train.txt" in capsys.readouterr().out


def test_skip_tracker_counts_the_samples_each_batch_holds():
    """Draws = samples of each batch (token-budget batches vary) + skips; the share check uses them."""
    from types import SimpleNamespace

    from vjepa_scale.data.skips import NoReadableVideosError, SkipTracker

    tr = SkipTracker(0, epoch_of=lambda step: 0, max_bad_fraction=0.5)
    for step, clips in enumerate([5, 1, 3]):
        tr.update(SimpleNamespace(step=step, num_samples=clips, skipped=[("bad.mp4", "truncated")], padded=0))
    assert (tr.draws, tr.skipped) == (12, 3)
    with pytest.raises(NoReadableVideosError, match=r"\d+ of \d+ draws"):
        for step in range(3, 40):  # one clip and three skips per batch: 75% bad
            tr.update(SimpleNamespace(step=step, num_samples=1, skipped=[("bad.mp4", "truncated")] * 3, padded=0))
