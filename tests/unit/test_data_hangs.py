"""Hangs in the data pipeline: a file whose reading stalls is abandoned, skipped and counted
(data.decode_timeout_s); the timeout keys. A frozen DataLoader worker ending the run
(data.loader_timeout_s): integration/test_data_hangs_e2e.py."""
from __future__ import annotations

import os
import threading
import time

import pytest

from helpers import streamable_videos, video_cfg
from vjepa_scale.config import ConfigError, DataConfig
from vjepa_scale.data import build_dataloader


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Four small VP9 videos (streamable: WebM needs no seek to be read from a pipe)."""
    return streamable_videos(tmp_path_factory.mktemp("hang_videos") / "v")


def _cfg(index, workers, **data_kw):
    return video_cfg([(index, 1.0)], frames=4, step=2, crop=32, batch=4, workers=workers, **data_kw)


@pytest.mark.parametrize("key", ["loader_timeout_s", "decode_timeout_s"])
def test_timeout_keys_validated(key):
    assert getattr(DataConfig(), key) > 0  # on by default
    DataConfig(backend="synthetic", **{key: 0}).validate()  # 0 disables
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match=f"data.{key} must be >= 0"):
            DataConfig(backend="synthetic", **{key: bad}).validate()


class StallingPipe:
    """A FIFO standing in for a file on a stalled network mount: the first `full_opens` readers get the
    whole video, later ones its first `fraction` and then no more bytes for `stall_s` seconds (the read
    blocks), then end of file (so a reader without a time limit fails the test instead of hanging).

    Each reader gets a FIFO of its own: once a reader has opened the path, a fresh FIFO replaces it,
    so a late reader of the previous open never sees bytes meant for the next one.
    """

    def __init__(self, path, data: bytes, full_opens: int, fraction: float = 0.3, stall_s: float = 20.0):
        self.path, self.data, self.full_opens, self.fraction = str(path), data, full_opens, fraction
        os.mkfifo(self.path)
        self.release = threading.Event()
        self.stall_s = stall_s
        self.opens = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.release.is_set():
            fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the pipe
            try:
                if self.release.is_set():
                    return
                os.mkfifo(self.path + ".next")
                os.replace(self.path + ".next", self.path)
                self.opens += 1
                if self.opens <= self.full_opens:
                    os.write(fd, self.data)
                else:
                    os.write(fd, self.data[: int(len(self.data) * self.fraction)])
                    self.release.wait(self.stall_s)
            except BrokenPipeError:  # the reader closed early (read only the header)
                pass
            finally:
                os.close(fd)

    def close(self):
        self.release.set()
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # unblocks a writer waiting in open()
        self.thread.join(timeout=10)
        os.close(fd)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("stall,workers", [("header", 0), ("frames", 1)])
def test_stalled_file_is_skipped_and_counted(videos, tmp_path, stall, workers):
    """Reading one file blocks (in the header probe, or mid-decode in a DataLoader worker): after
    data.decode_timeout_s the file is abandoned, replaced by the next entry and listed in `skipped`
    with a reason naming the key; the batch arrives whole."""
    pipe = StallingPipe(tmp_path / "stalled.webm", open(videos[1], "rb").read(),
                        full_opens=0 if stall == "header" else 1)
    index = tmp_path / "index.txt"
    index.write_text("".join(f"{p} 0\n" for p in [videos[0], pipe.path] + videos[2:]))
    cfg = _cfg(index, workers, decode_timeout_s=0.5)
    try:
        t0 = time.monotonic()
        loader = build_dataloader(cfg, num_steps=1)  # one step of 4 = every entry once
        (batch,) = list(loader)
        elapsed = time.monotonic() - t0
    finally:
        pipe.close()
    assert batch.video.shape == (4, 3, 4, 32, 32)
    assert pipe.opens == (1 if stall == "header" else 2)
    assert len(batch.skipped) == 1 and batch.skipped[0][0] == pipe.path, batch.skipped
    assert "data.decode_timeout_s=0.5 s" in batch.skipped[0][1]
    assert loader.skipped_files == {pipe.path: 1}
    assert 1 not in batch.index and batch.index.count(2) == 2  # the stalled entry's sample used entry 2
    assert elapsed < 10  # 0.5 s per stalled open, plus startup


def test_no_decode_timeout_when_disabled_reads_slow_pipe(videos, tmp_path):
    """decode_timeout_s: 0 sets no limit: a pipe delivering the whole file is read normally (the
    check on empty files no longer rejects pipes, whose size is 0)."""
    pipe = StallingPipe(tmp_path / "pipe.webm", open(videos[1], "rb").read(), full_opens=3)
    index = tmp_path / "index.txt"
    index.write_text("".join(f"{p} 0\n" for p in [videos[0], pipe.path] + videos[2:]))
    try:
        loader = build_dataloader(_cfg(index, 0, decode_timeout_s=0), num_steps=1)
        (batch,) = list(loader)
    finally:
        pipe.close()
    assert batch.skipped == [] and sorted(batch.index) == [0, 1, 2, 3]


def test_agree_loaded_raises_the_rank_own_error_as_its_cause():
    """Without a process group the rank agrees with itself: nothing on success; its error wrapped in
    DataLoadError (the step named, the original as the cause) on failure. 2 ranks: test_data_hangs_e2e."""
    from vjepa_scale.data import DataLoadError, NoReadableVideosError, agree_loaded

    agree_loaded(None, 7, 0)
    err = NoReadableVideosError("index 'x.csv': none of its videos can be read")
    with pytest.raises(DataLoadError, match="rank 0: could not load its batch for step 7: NoReadableVideosError: "
                                            "index 'x.csv'") as e:
        agree_loaded(err, 7, 0)
    assert e.value.__cause__ is err


EXIT_SCRIPT = """
import sys
from helpers import video_cfg
from vjepa_scale.data import build_dataloader
cfg = video_cfg([(sys.argv[1], 1.0)], frames=4, step=2, crop=32, batch=2, workers=1)
dl = build_dataloader(cfg, num_steps=2)  # kept until exit, with its persistent worker
for batch in dl:
    pass
busy = iter(build_dataloader(cfg, num_steps=8))  # left mid-iteration, its worker prefetching
next(busy)
print("iterated", flush=True)
"""


def test_script_keeping_loaders_with_workers_until_exit_ends(videos, tmp_path):
    """A script holding cpu loaders with workers (one iterated to its end, one left mid-iteration) until
    the interpreter exits ends: their workers, which ignore SIGTERM, are shut down before multiprocessing's
    exit handler waits for them (was: a hang in its join)."""
    import subprocess
    import sys

    index = tmp_path / "index.txt"
    index.write_text("".join(f"{p} 0\n" for p in videos))
    script = tmp_path / "keep.py"
    script.write_text(EXIT_SCRIPT)
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    try:
        run = subprocess.run([sys.executable, str(script), str(index)], env=env, capture_output=True, text=True,
                             timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the script did not exit within 60 s (output: {e.stdout!r})")
    assert run.returncode == 0 and "iterated" in run.stdout, run.stderr
