"""The video data pipeline through processes: the epoch's skip summary gathered from 2 ranks (gloo), and
tools/make_synthetic_videos.py as a user runs it."""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from helpers import assert_ok, free_port, launch, video_cfg, write_bad_set
from vjepa_scale.data import build_dataloader
from vjepa_scale.data.decode import probe_video


@pytest.fixture
def bad_set(tmp_path):
    """6 good moving-shape videos (the shapes set of helpers.write_video_sets) among broken entries."""
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    shapes = write_synthetic_videos(tmp_path / "shapes", 12, 12, 32, ("vp9", "h264"), val_fraction=0)["train"]
    return write_bad_set(shapes, tmp_path)


def _skip_report_worker(rank, world, index, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    records = []
    handler = logging.Handler()
    handler.emit = lambda rec: records.append(rec.getMessage())
    logging.getLogger("vjepa_scale.data").addHandler(handler)
    cfg = video_cfg([(index, 1.0)], frames=2, step=1, batch=3)
    loader = build_dataloader(cfg, rank, world, num_steps=2)  # 2 ranks x 3 x 2 steps: the 12-entry epoch
    for _ in loader:
        pass
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump({"local": loader.skipped_files, "log": records}, f)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_epoch_summary_on_rank0_names_all_ranks_files(bad_set, tmp_path):
    index, bad = bad_set
    port = free_port()
    torch.multiprocessing.spawn(_skip_report_worker, args=(2, str(index), port, str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2))
    assert set(r0["local"]) | set(r1["local"]) == set(bad) and r1["local"]
    (summary,) = r0["log"]  # one epoch, one summary, on rank 0 only
    assert "on 2 ranks" in summary and r1["log"] == []
    for p in bad:  # each file named once with the skip count of both ranks together
        count = summary.split(p + " (")[1].split("; x")[1].split(")")[0]
        assert int(count) == r0["local"].get(p, 0) + r1["local"].get(p, 0)


def test_synthetic_tool_cli(tmp_path):
    out = tmp_path / "demo"
    assert_ok(launch("tools/make_synthetic_videos.py", out, "--num-videos", "8", "--frames", "6", "--size", "32"))
    train = out.joinpath("train.txt").read_text().splitlines()
    val = out.joinpath("val.txt").read_text().splitlines()
    assert len(train) == 6 and len(val) == 2
    codecs = set()
    for line in train + val:
        path, label = line.split()
        info = probe_video(path)
        codecs.add(info.codec)
        assert info.num_frames == 6 and (info.height, info.width) == (32, 32)
        assert path.split("_")[-1].split(".")[0] == ["right", "left", "down", "up"][int(label)]
    assert codecs == {"h264", "vp9"}


def test_noisy_square_options_are_checked_by_the_tool(tmp_path):
    r = launch("tools/make_synthetic_videos.py", tmp_path / "x", "--side", "8")
    assert r.returncode == 2 and "--side only apply to --pattern noisy_square" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--size", "31"], "--size must be even and at least 16"),
    (["--num-videos", "0"], "--num-videos must be at least 1"),
    (["--num-videos", "1"], "--val-fraction 0.25 of --num-videos 1 puts no video in val.txt"),
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    (["--pattern", "frame_index", "--frames", "33"], "--frames must be at most 32 with --pattern frame_index"),
])
def test_synthetic_tool_refuses_bad_ranges_up_front(tmp_path, args, message):
    """An odd size (libx264), no video, or a val split left empty: exit 2 naming the option, nothing written."""
    r = launch("tools/make_synthetic_videos.py", tmp_path / "x", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_synthetic_tool_without_val_split_writes_no_val_index(tmp_path):
    """--val-fraction 0: every video in train.txt; no val.txt (an earlier one, now stale, is removed)."""
    out = tmp_path / "demo"
    out.mkdir()
    out.joinpath("val.txt").write_text("/old/video.mp4 0\n")
    r = launch("tools/make_synthetic_videos.py", out, "--num-videos", "2", "--frames", "4", "--size", "16",
               "--codecs", "h264", "--val-fraction", "0")
    assert_ok(r)
    assert "no val.txt" in r.stdout and len(out.joinpath("train.txt").read_text().splitlines()) == 2
    assert not out.joinpath("val.txt").exists()
