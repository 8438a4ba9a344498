"""DALI backend on the CPU (DALI's CPU mode) and its decisions for the GPU: routing table, bisection of
failed batches, no padding, VFR by frame index, odd sizes, colour matrix, prefetch depth, an index file without
a readable video; and the transcode tool's library side."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time

import numpy as np
import pytest
import torch

from helpers import frame_ids, needs, tiny_config, write_index
from helpers.dali_videos import colour_frames, corrupt, cut, encode, index_video, vfr_pts_ms
from vjepa_scale.config import ConfigError, DatasetSpec
from vjepa_scale.data import NoReadableVideosError, build_dataloader
from vjepa_scale.data.clips import ClipPlan, denormalize_clip, normalize_clip, plan_video
from vjepa_scale.data.decode import decode_frames, probe_video
from vjepa_scale.data.nvdec import canonical_codec, dali_route, stream_format
from vjepa_scale.data.synthetic_videos import INDEX_LEVEL_STEP

needs_dali = needs("nvidia.dali")
HOPPER, ADA, BLACKWELL = (9, 0), (8, 9), (10, 0)


def dali_cfg(index, frames=4, step=2, batch=2, crop=32, **data_kw):
    cfg = tiny_config(crop=crop, frames=frames, batch_size=batch, depth=1)
    cfg.data = dataclasses.replace(cfg.data, backend="dali", datasets=[DatasetSpec(str(index), 1.0)], frame_step=step,
                                   num_workers=0, **data_kw)
    return cfg.validate()


def test_routing_table_on_generated_files(tmp_path):
    """Codec (by codec id, not decoder name), profile, bit depth, chroma and size against NVDEC + DALI."""
    f = lambda name, enc, pix="yuv420p", h=256, w=256, **kw: stream_format(
        index_video(tmp_path / name, enc, frames=3, height=h, width=w, pix_fmt=pix, **kw))
    h264 = f("a.mp4", "libx264")
    assert (h264.codec, h264.bit_depth, h264.chroma) == ("h264", 8, "420")
    assert dali_route(h264, "gpu", HOPPER) is None
    assert "CPU decoder" in dali_route(h264, "cpu")
    h264_10 = f("b10.mp4", "libx264", "yuv420p10le")
    assert h264_10.bit_depth == 10 and "High 10" in dali_route(h264_10, "gpu", BLACKWELL)
    assert "10-bit" in dali_route(h264_10, "cpu") or "CPU decoder" in dali_route(h264_10, "cpu")
    h264_422 = f("c422.mp4", "libx264", "yuv422p10le")
    assert h264_422.chroma == "422" and dali_route(h264_422, "gpu", HOPPER) is not None
    h264_444 = f("d444.mp4", "libx264", "yuv444p")
    assert h264_444.chroma == "444" and dali_route(h264_444, "gpu", HOPPER) is not None
    assert "outside" in dali_route(f("tiny.mp4", "libx264", h=16, w=32), "gpu", HOPPER)  # H.264 min 48x16
    hevc10 = f("e10.mkv", "libx265", "yuv420p10le")
    assert (hevc10.codec, hevc10.bit_depth) == ("hevc", 10) and "8-bit 4:2:0" in dali_route(hevc10, "gpu", HOPPER)
    assert "outside" in dali_route(f("small.mkv", "libx265", h=128, w=128), "gpu", HOPPER)  # HEVC min 144x144
    assert dali_route(f("ok.mkv", "libx265", h=144, w=160), "gpu", HOPPER) is None
    odd = f("odd.webm", "libvpx-vp9", h=131, w=259)
    assert odd.chroma == "420" and "odd size" in dali_route(odd, "gpu", HOPPER)
    assert dali_route(odd, "cpu") is None  # DALI's CPU decoder converts odd sizes correctly (tested below)
    assert "outside" in dali_route(f("vp9small.webm", "libvpx-vp9", h=96, w=256), "gpu", HOPPER)  # VP9 min 128
    assert dali_route(f("mpeg4.avi", "mpeg4"), "gpu", HOPPER) is None
    mjpeg = f("m.avi", "mjpeg", "yuvj420p")
    assert "GPU decoder" in dali_route(mjpeg, "gpu", HOPPER) and dali_route(mjpeg, "cpu") is None
    av1 = f("av1.mkv", "libsvtav1")
    assert av1.codec == "av1" and canonical_codec("libdav1d") == "av1"
    assert "9.0" in dali_route(av1, "gpu", HOPPER) and "8.0" in dali_route(av1, "gpu", (8, 0))
    assert dali_route(av1, "gpu", ADA) is None and dali_route(av1, "gpu", BLACKWELL) is None


@needs_dali
@pytest.mark.parametrize("probe_all", [True, False])
def test_dataset_without_a_readable_video_fails_like_the_cpu_backend(tmp_path, monkeypatch, probe_all):
    """One of two index files lists no readable video (the other is fine): DALI fails when the loader is built,
    naming that index file, with the cpu backend's error; also for indexes too large to probe up front."""
    import vjepa_scale.data.dali as dali

    if not probe_all:
        monkeypatch.setattr(dali, "PROBE_ALL_MAX", 0)
    good = write_index(tmp_path / "good.txt", [index_video(tmp_path / f"g{k}.webm", "libvpx-vp9") for k in range(2)])
    for name in ("junk.webm", "noise.mp4"):
        (tmp_path / name).write_bytes(b"not a video")
    bad = write_index(tmp_path / "bad.txt", [tmp_path / "junk.webm", tmp_path / "noise.mp4"])
    cfg = dali_cfg(good)
    cfg.data = dataclasses.replace(cfg.data, datasets=[DatasetSpec(str(good), 1.0), DatasetSpec(str(bad), 1.0)])
    message = re.escape(f"index file '{bad}': none of any of its 2 videos can be read")
    with pytest.raises(NoReadableVideosError, match=message) as e:
        build_dataloader(cfg.validate(), num_steps=1)
    cfg.data = dataclasses.replace(cfg.data, backend="cpu")
    with pytest.raises(NoReadableVideosError) as e_cpu:
        build_dataloader(cfg.validate(), num_steps=1)
    assert str(e.value) == str(e_cpu.value)


@needs_dali
def test_truncated_file_raises_instead_of_padding(tmp_path):
    """pad_mode "none": frames past a cut file's real end raise; frames before it decode."""
    from vjepa_scale.data.dali import DaliClipRunner

    short = cut(index_video(tmp_path / "full.webm", "libvpx-vp9", frames=30), tmp_path / "cut.webm", 0.6)
    runner = DaliClipRunner(2, 32, "cpu")
    ok = runner.run([(short, ClipPlan((0, 2, 4, 6), (0, 0, 32, 32), False))])
    assert frame_ids(ok[0]) == [0, 2, 4, 6]
    with pytest.raises(RuntimeError, match="out-of-bounds frame index"):
        runner.run([(short, ClipPlan((0, 8, 16, 24), (0, 0, 32, 32), False))])


@needs_dali
def test_bad_file_in_a_batch_is_bisected_skipped_and_not_redecoded(tmp_path, caplog):
    """One corrupt file among good VP9 files, which the probe cannot tell (container and packets intact): its
    DALI batch fails, bisection names the file, PyAV fails on it too, so it is skipped and counted; the good
    files are decoded by DALI; later epochs never run it through DALI again."""
    good = [index_video(tmp_path / f"g{k}.webm", "libvpx-vp9", frames=30) for k in range(5)]
    bad = corrupt(good[0], tmp_path / "bad.webm", 10)  # 30 frames by the packets, data zeroed from frame 10
    assert probe_video(bad).num_frames == 30
    index = write_index(tmp_path / "i.txt", good[1:] + [bad])  # 5 entries, batch 5: one batch per epoch
    cfg = dali_cfg(index, frames=8, step=4, batch=5)  # a clip spans 29 frames
    with caplog.at_level(logging.WARNING, logger="vjepa_scale.data"):
        loader = build_dataloader(cfg, num_steps=3)
        batches = list(loader)
    assert bad in caplog.text and loader.unusable == {bad: loader.unusable[bad]}
    assert loader.unusable[bad].startswith("decode_error:")
    assert loader.skipped_files == {bad: 3}  # skipped once per epoch, named
    assert all(b.skipped == [(bad, loader.unusable[bad])] for b in batches)
    assert loader.tracker.kinds == {"decode_error": 3}  # counted once per skip, not again for the retry
    assert loader.stats["bad_files"] == 1 and loader.stats["pyav_clips"] == 0
    assert loader.stats["dali_clips"] == 15
    # epoch 0: the run of 5 fails, then the half (2 or 3 samples) holding the file, and so on down to the
    # file alone: 3 or 4 failed runs; later epochs never hand the file to DALI again (else 3 more each)
    assert 3 <= loader.stats["dali_failures"] <= 4
    for b in batches:
        assert 4 not in b.index  # the bad entry was replaced by another index entry
        # a clip's plan is keyed by the sample's own entry; the replacement of entry 4 keeps key 4
        stand_in = next(i for i in b.index if b.index.count(i) == 2)
        plan = lambda i, key: tuple(plan_video(probe_video(good[1 + i]), cfg.data, cfg.data.seed, b.step, key)[0].frames)
        want = [plan(i, i) for i in range(4)] + [plan(stand_in, 4)]
        assert sorted(tuple(frame_ids(v)) for v in b.video) == sorted(want)


@needs_dali
def test_vfr_webm_frames_by_index_like_pyav(tmp_path):
    """A 30-frame VP9 VFR webm: DALI picks frames by index in presentation order, as PyAV counts them."""
    from vjepa_scale.data.dali import DaliClipRunner

    vfr = index_video(tmp_path / "vfr.webm", "libvpx-vp9", frames=30, pts_ms=vfr_pts_ms(30))
    frames = (1, 5, 9, 13, 17, 21, 25, 29)
    (clip,) = DaliClipRunner(1, 32, "cpu").run([(vfr, ClipPlan(frames, (0, 0, 32, 32), False))])
    assert frame_ids(clip) == list(frames)
    pyav = decode_frames(vfr, list(frames))
    assert [int(round((x.mean() - 4) / INDEX_LEVEL_STEP)) for x in pyav] == list(frames)


@needs_dali
def test_vfr_webm_through_the_loader(tmp_path):
    """Every draw of a 30-frame VFR webm gives a clip at the configured stride (needs exact frame counts)."""
    vfr = index_video(tmp_path / "vfr.webm", "libvpx-vp9", frames=30, pts_ms=vfr_pts_ms(30))
    assert probe_video(vfr).num_frames == 30
    index = write_index(tmp_path / "i.txt", [vfr])
    cfg = dali_cfg(index, frames=8, step=3, batch=1)
    loader = build_dataloader(cfg, num_steps=10)
    for b in loader:
        assert b.skipped == [] and np.all(np.diff(frame_ids(b.video[0])) == 3)
    assert loader.stats["dali_clips"] == 10 and loader.stats["pyav_clips"] == 0


@needs_dali
def test_odd_size_vp9_cpu_mode_matches_pyav(tmp_path):
    """DALI's CPU decoder on a 65x33 VP9 file: same pixels as PyAV within one grey level on average."""
    from nvidia.dali import fn, pipeline_def, types

    path = encode(tmp_path / "odd.webm", colour_frames(4, 33, 65), "libvpx-vp9", options={"lossless": "1"})

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        return fn.decoders.video(fn.external_source(name="e", dtype=types.UINT8, ndim=1), device="cpu", frames=[0, 3])

    p = pipe()
    p.build()
    p.feed_input("e", [np.fromfile(path, np.uint8)])
    (out,) = p.run()
    dali = np.array(out[0]).astype(float)
    pyav = decode_frames(path, [0, 3]).astype(float)
    assert dali.shape == pyav.shape == (2, 33, 65, 3)
    assert np.abs(dali - pyav).mean() <= 1.0 and np.abs(dali - pyav).max() <= 4


@needs_dali
@pytest.mark.parametrize("colorspace", [1, 4, 7, 9])  # BT.709, FCC, SMPTE-240M, BT.2020 (non-constant luminance)
def test_tagged_file_matches_pyav_colours(tmp_path, colorspace):
    """DALI converts with BT.601; the pipeline's colour matrix brings files tagged with another matrix to
    PyAV's colours, as close as an untagged (BT.601) file comes (DALI's CPU decoder rounds ~1 level above
    PyAV there)."""
    from vjepa_scale.data.dali import DaliClipRunner, DaliItem

    plan = ClipPlan((0, 1, 2, 3), (0, 0, 32, 32), False)
    runner = DaliClipRunner(1, 32, "cpu")

    def error(path, fmt):  # (mean, max) grey-level difference to PyAV + torch
        ref = normalize_clip(torch.from_numpy(decode_frames(path, list(plan.frames))), plan.box, plan.flip, 32)
        diff = (denormalize_clip(runner.run([DaliItem(path, fmt, plan)])[0]) - denormalize_clip(ref)).abs()
        return diff.mean().item(), diff.amax().item()

    plain = encode(tmp_path / "601.webm", colour_frames(4, 32, 32), "libvpx-vp9", options={"lossless": "1"})
    tagged = encode(tmp_path / "tagged.webm", colour_frames(4, 32, 32), "libvpx-vp9", colorspace=colorspace,
                    options={"lossless": "1"})
    fmt = stream_format(tagged)
    assert fmt.colorspace == colorspace and stream_format(plain).colorspace != colorspace
    assert dali_route(fmt, "cpu") is None
    base_mean, base_max = error(plain, stream_format(plain))
    fixed_mean, fixed_max = error(tagged, fmt)
    raw_mean, raw_max = error(tagged, None)  # what DALI alone gives
    assert base_mean < 2.0 and fixed_mean < base_mean + 0.3 and fixed_max <= base_max + 1.5
    if colorspace != 4:  # FCC's weights are within 0.004 of BT.601's: uncorrected is already close
        assert raw_mean > base_mean + 0.5 and raw_max > base_max + 4


def test_colour_matrices_dali_cannot_reproduce_go_to_pyav():
    """BT.2020 constant luminance (10) or YCgCo (8) is no linear re-mix of BT.601's RGB: PyAV decodes it."""
    from vjepa_scale.data.nvdec import StreamFormat

    for tag in (8, 10):
        fmt = StreamFormat("x.mp4", "h264", "High", "yuv420p", 8, "420", 64, 64, tag, False)
        assert f"colour matrix {tag}" in dali_route(fmt, "cpu") and f"colour matrix {tag}" in dali_route(fmt, "gpu", (9, 0))


@needs_dali
def test_prefetch_keeps_that_many_batches_in_flight(tmp_path, monkeypatch):
    videos = [index_video(tmp_path / f"v{k}.webm", "libvpx-vp9", frames=8) for k in range(4)]
    index = write_index(tmp_path / "i.txt", videos)
    with pytest.raises(ConfigError, match="dali_prefetch"):
        dali_cfg(index, dali_prefetch=0)
    for depth in (1, 3):
        loader = build_dataloader(dali_cfg(index, frames=2, step=1, dali_prefetch=depth), num_steps=8)
        made, lock = [], threading.Lock()
        original = loader.batch

        def counting(samples):
            out = original(samples)
            with lock:
                made.append(samples[0][1])
            return out

        monkeypatch.setattr(loader, "batch", counting)
        it = iter(loader)
        first = next(it)
        deadline = time.monotonic() + 60
        while len(made) < depth + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert first.step == 0 and len(made) == depth + 1  # the one yielded + `depth` decoded ahead
        assert [b.step for b in it] == list(range(1, 8))


@needs_dali
def test_loader_workers_are_not_forked_from_a_process_running_dali(tmp_path):
    """Once a DALI pipeline ran here, its threads make fork unsafe (a forked DataLoader worker could
    inherit a held lock and die): cpu-backend workers then start from a fork server and still load."""
    from vjepa_scale.data.dali import DaliClipRunner, DaliItem
    from vjepa_scale.data.loader import worker_start_method

    path = encode(tmp_path / "a.webm", colour_frames(8, 32, 32), "libvpx-vp9")
    DaliClipRunner(1, 32, "cpu").run([DaliItem(path, stream_format(path), ClipPlan((0, 1, 2, 3), (0, 0, 32, 32), False))])
    assert worker_start_method() == "forkserver"
    cfg = dali_cfg(write_index(tmp_path / "i.txt", [path] * 4))
    cfg.data = dataclasses.replace(cfg.data, backend="cpu", num_workers=2)
    loader = build_dataloader(cfg, num_steps=2)
    assert loader.loader.multiprocessing_context.get_start_method() == "forkserver"
    assert [b.video.shape for b in loader] == [(2, 3, 4, 32, 32)] * 2


def test_dali_probe_is_bounded_by_the_decode_timeout(tmp_path):
    """The DALI backend probes files with PyAV too: past data.decode_timeout_s a file is unusable (kind
    "timeout"), as on the cpu backend, instead of holding up the loader."""
    from vjepa_scale.data.dali import probe_for_dali

    path = encode(tmp_path / "a.webm", colour_frames(8, 32, 32), "libvpx-vp9")
    probe, error = probe_for_dali(path, "cpu", None, timeout_s=1e-6)
    assert probe is None and error.kind == "timeout" and error.path == path
    probe, error = probe_for_dali(path, "cpu", None, timeout_s=30)
    assert error is None and probe.info.num_frames == 8


def test_dali_probe_of_a_file_whose_open_blocks_times_out(tmp_path):
    """A FIFO without a writer blocks in open(2), where neither FFmpeg's interrupt callback nor the
    Deadline's checks reach (probes run in threads): the probe gives up after about twice
    data.decode_timeout_s, the file counts as timed out, and the blocked thread is left behind."""
    from vjepa_scale.data.dali import PROBE_GRACE_S, probe_for_dali

    fifo = tmp_path / "stalled.webm"
    os.mkfifo(fifo)
    got = []
    caller = threading.Thread(target=lambda: got.append(probe_for_dali(str(fifo), "cpu", None, timeout_s=0.2)),
                              daemon=True)
    t0 = time.monotonic()
    caller.start()
    caller.join(30)
    try:
        assert got, "the probe of a FIFO without a writer never returned"
        probe, error = got[0]
        assert probe is None and error.kind == "timeout" and error.path == str(fifo)
        assert "data.decode_timeout_s=0.2 s" in error.reason
        assert time.monotonic() - t0 < 2 * 0.2 + PROBE_GRACE_S + 5
    finally:  # wake the abandoned reader: a writer that opens and closes gives it end of file
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_dali_probe_with_a_limit_raises_other_errors_as_without_one(tmp_path, monkeypatch):
    """An error that is no VideoError (a bug, a permission error outside the open) in the probe thread
    is raised in the caller, not reported as a timeout."""
    from vjepa_scale.data import dali

    def broken(path, deadline=None):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(dali, "probe_video", broken)
    for limit in (0.0, 5.0):
        with pytest.raises(PermissionError):
            dali.probe_for_dali(str(tmp_path / "a.webm"), "cpu", None, timeout_s=limit)


@needs_dali
def test_dali_broken_for_every_file_is_an_error_not_a_silent_move_to_pyav(tmp_path, monkeypatch):
    """A pipeline that fails for every file of a batch while PyAV reads them (no NVDEC library, out of
    memory) stops the run with the reason instead of routing the whole dataset to one PyAV thread."""
    from vjepa_scale.data.dali import DaliClipRunner

    paths = [encode(tmp_path / f"{k}.webm", colour_frames(8, 32, 32), "libvpx-vp9") for k in range(4)]
    cfg = dali_cfg(write_index(tmp_path / "i.txt", paths))

    def broken(self):
        raise RuntimeError("libnvcuvid.so: cannot open shared object file")

    monkeypatch.setattr(DaliClipRunner, "_build", broken)
    with pytest.raises(RuntimeError, match=r"DALI failed on all 2 files of a batch, and PyAV reads .*"
                                           r"libnvcuvid\.so: cannot open shared object file.*data\.backend: cpu"):
        next(iter(build_dataloader(cfg, num_steps=1)))


def test_a_deadline_that_expires_while_arming_leaves_no_alarm_behind(tmp_path):
    """A limit so short that SIGALRM fires inside `Deadline.__enter__` (which `with` does not pair with
    __exit__): the repeating timer and the handler are still removed (they killed the test session at
    its exit with SIGALRM)."""
    import signal

    from vjepa_scale.data.decode import Deadline, DecodeTimeout

    before = signal.getsignal(signal.SIGALRM)
    for _ in range(50):
        try:
            with Deadline("x.mp4", 1e-7):
                time.sleep(0.001)
        except DecodeTimeout:
            pass
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is before
