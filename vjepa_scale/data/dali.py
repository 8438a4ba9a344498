"""DALI backend: decode (NVDEC on GPU), crop+resize, flip and normalize inside one DALI pipeline.

One pipeline definition (`clip_pipeline`) serves both devices: the decoder runs as "mixed" (NVDEC,
output on the GPU) when CUDA is present and as "cpu" otherwise; every later operator follows its
input. Python feeds each batch through external sources: the encoded file bytes, the frame indices,
the crop box, the flip flag and a colour matrix, all drawn by `clips.plan_video` exactly as the CPU
backend draws them, so both backends pick the same frames and boxes and shard by the same
`StepBatchSampler` (rank r of W takes its own disjoint slice of each step's samples).

Per file (probed with PyAV, `decode.probe_video`: exact frame count, truncation, rotation, when the
loader is built; indexes above PROBE_ALL_MAX entries: when first drawn), `nvdec.dali_route` decides
who decodes it: DALI, or, for what DALI cannot decode correctly on this device (codec, profile, bit
depth, chroma, size; see `nvdec`), the CPU path (PyAV, `VideoClips`) inside the same batch. Files
neither can read (missing, unreadable, truncated) and files too short for a clip (`clips.plan_video`;
with data.short_videos: pad their plans repeat the last frame instead, and DALI decodes them as given)
are replaced by the common policy (`skips.substitute`: uniform draws seeded by step and slot) and
listed in each batch's `skipped`. Frame indices mean the same in both decoders: DALI indexes a
file's frames in presentation order (its packet index sorted by timestamp), PyAV counts decoded
frames, so variable-frame-rate files are sampled alike. The decoder runs with `pad_mode="none"`, so
a clip reaching past a file's real end raises instead of repeating the last frame (a padded plan's
repeated indices are the file's real last frame). Rotated files are
cropped in stored pixels by DALI and turned upright (then mirrored) in torch (`clips.orient_clip`).

A failing DALI batch names no file: `DaliLoader` decodes halves of it until the failing sample(s)
are found; such a file is then tried with PyAV: if PyAV reads the clip, the file goes to the CPU path
from then on (a format the table let through); if not, it is bad: skipped and counted by name, never
handed to a decoder again, and replaced like any unreadable file. On a GPU the pipeline and every CUDA call run on this rank's device
(`rank_device_id`), also in the helper thread, and the video leaves as bf16 on that device.
`DaliLoader` keeps `data.dali_prefetch` batches in flight in one helper thread; DALI itself uses
`data.num_workers` threads. `stats` counts clips decoded by DALI and by PyAV, failed DALI runs and
files found bad by bisection.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from vjepa_scale.config import Config
from vjepa_scale.data.batch import Batch, make_batch
from vjepa_scale.data.clips import IMAGENET_MEAN, IMAGENET_STD, ClipPlan, orient_clip, plan_video
from vjepa_scale.data.cpu import VideoClips
from vjepa_scale.data.decode import Deadline, DecodeTimeout, VideoError, VideoInfo, probe_video
from vjepa_scale.data.nvdec import StreamFormat, colour_matrix, dali_route, stream_format
from vjepa_scale.data.skips import READABLE_PROBES, check_datasets_readable, skip_tracker, substitute
from vjepa_scale.masks import MultiBlockMasker

log = logging.getLogger("vjepa_scale.data")


def rank_device_id() -> int:
    """This rank's GPU: LOCAL_RANK when it names a visible device, else the current device."""
    local = int(os.environ.get("LOCAL_RANK", -1))
    if 0 <= local < torch.cuda.device_count():
        return local
    return torch.cuda.current_device()


def clip_pipeline(batch_size: int, crop_size: int, device: str, num_threads: int = 2, device_id: int | None = None):
    """The DALI pipeline: encoded bytes + frame indices + crop box + flip + colour -> (N, C, T, crop, crop) float.

    `device` is "gpu" (NVDEC decode on GPU `device_id`, everything after it on that GPU) or "cpu";
    the graph is otherwise identical. Batches of up to `batch_size` samples are accepted.
    """
    from nvidia.dali import fn, pipeline_def, types

    if device == "gpu" and device_id is None:
        raise ValueError("clip_pipeline on the GPU needs an explicit device_id")

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if device == "gpu" else None,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def pipe():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
        flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
        colour = fn.external_source(name="colour", dtype=types.FLOAT, ndim=2)
        # pad_mode "none": a frame index past the file's real end raises (no frozen frames)
        video = fn.decoders.video(encoded, device="mixed" if device == "gpu" else "cpu", frames=frames,
                                  pad_mode="none")
        video = fn.resize(video, size=[crop_size, crop_size], roi_start=roi_start, roi_end=roi_end,
                          roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True,
                          dtype=types.FLOAT)
        # per-pixel colour matrix (BT.601 -> BT.709 where tagged); linear, so it commutes with the resize
        video = fn.coord_transform(video, M=colour, dtype=types.FLOAT)
        return fn.crop_mirror_normalize(video, mean=[m * 255.0 for m in IMAGENET_MEAN],
                                        std=[s * 255.0 for s in IMAGENET_STD], mirror=flip,
                                        output_layout="CFHW", dtype=types.FLOAT)

    return pipe()


PROBE_ALL_MAX = 100_000  # indexes up to this size are probed completely when the loader is built
PROBE_CACHE_MAX = 200_000  # usable files' probes remembered per loader (~1 KB each); later ones are probed per draw


@dataclass(frozen=True)
class DaliItem:
    """One clip to decode: file, its format (for the colour matrix) and its ClipPlan."""

    path: str
    fmt: StreamFormat | None
    plan: ClipPlan


@dataclass(frozen=True)
class FileProbe:
    """Probe result of one index entry: header facts, and why PyAV decodes it instead of DALI (or None)."""

    info: VideoInfo
    fmt: StreamFormat
    cpu_reason: str | None


PROBE_GRACE_S = 1.0  # a probe thread gets 2x data.decode_timeout_s plus this before it is abandoned


def probe_for_dali(path: str, device: str, capability: tuple[int, int] | None = None,
                   timeout_s: float = 0.0) -> tuple[FileProbe | None, VideoError | None]:
    """PyAV probe of one file (`decode.probe_video`: exact frame count, truncation, rotation):
    (FileProbe, None) if it is usable at all, else (None, why). Reading it for longer than `timeout_s`
    (data.decode_timeout_s) makes it unusable, as on the cpu backend. Off the main thread only
    FFmpeg's interrupt callback and the checks between packets bound a read (`decode.Deadline`), and
    nothing bounds an open(2) that blocks (a FIFO without a writer, a hung network mount); so with a
    limit the probe runs in a daemon thread of its own, abandoned (left blocked) after
    2 x `timeout_s` + PROBE_GRACE_S, and the file counts as timed out."""
    if not timeout_s or timeout_s <= 0:
        return _probe(path, device, capability, 0.0)
    done: list = []

    def run():
        try:
            done.append((True, _probe(path, device, capability, timeout_s)))
        except BaseException as e:  # not a VideoError: raised again in the caller, as without a limit
            done.append((False, e))

    t = threading.Thread(target=run, daemon=True, name="vjepa-dali-probe")
    t.start()
    t.join(2 * timeout_s + PROBE_GRACE_S)
    if not done:
        log.warning("DALI probe of %s blocked past data.decode_timeout_s=%g s; its thread is left behind", path,
                    timeout_s)
        return None, DecodeTimeout(path, f"opening or reading took longer than data.decode_timeout_s={timeout_s:g} s "
                                         f"(blocked; the probe thread was abandoned)")
    ok, value = done[0]
    if not ok:
        raise value
    return value


def _probe(path: str, device: str, capability: tuple[int, int] | None,
           timeout_s: float) -> tuple[FileProbe | None, VideoError | None]:
    try:
        with Deadline(path, timeout_s) as deadline:
            info = probe_video(path, deadline)
            fmt = stream_format(path, deadline)
    except VideoError as e:
        return None, e
    return FileProbe(info, fmt, dali_route(fmt, device, capability)), None


def _read_encoded(path: str) -> np.ndarray:
    """The whole encoded file as uint8, memory-mapped (DALI's decoder demuxes from one in-memory buffer)."""
    return np.memmap(path, dtype=np.uint8, mode="r")


_PIPELINES_BUILT = False  # DALI's worker threads run in this process from the first build on


def pipelines_built() -> bool:
    """True once a DALI pipeline was built in this process: forking it is then unsafe (DALI's threads
    may hold locks the child inherits), so DataLoader workers are started by a fork server."""
    return _PIPELINES_BUILT


def _gpu_id(device: str, device_id: int | None) -> int | None:
    """The CUDA device a `gpu` pipeline runs on (`device_id`, default this rank's); None for `cpu`."""
    if device != "gpu":
        return None
    return rank_device_id() if device_id is None else device_id


class DaliClipRunner:
    """Runs `clip_pipeline` on explicit DaliItem lists; rebuilds itself after a failure."""

    def __init__(self, batch_size: int, crop_size: int, device: str, num_threads: int = 2,
                 device_id: int | None = None):
        self.batch_size, self.crop_size, self.device, self.num_threads = batch_size, crop_size, device, num_threads
        self.device_id = _gpu_id(device, device_id)
        self.pipe = None

    def _build(self):
        global _PIPELINES_BUILT
        _PIPELINES_BUILT = True
        self.pipe = clip_pipeline(self.batch_size, self.crop_size, self.device, self.num_threads, self.device_id)
        self.pipe.build()

    def run(self, items: list) -> torch.Tensor:
        """(len(items), C, T, crop, crop) float32 on the pipeline's device, upright; 1 <= len(items) <= batch_size.

        `items`: DaliItem, or (path, ClipPlan) pairs (BT.601 colours).
        """
        items = [it if isinstance(it, DaliItem) else DaliItem(it[0], None, it[1]) for it in items]
        if not 1 <= len(items) <= self.batch_size:
            raise ValueError(f"DaliClipRunner takes 1..{self.batch_size} clips, got {len(items)}")
        if self.device == "gpu":
            torch.cuda.set_device(self.device_id)  # this thread's CUDA calls go to the rank's GPU
        if self.pipe is None:
            self._build()
        try:
            self.pipe.feed_input("encoded", [_read_encoded(it.path) for it in items])
            self.pipe.feed_input("frames", [np.asarray(it.plan.frames, np.int32) for it in items])
            self.pipe.feed_input("roi_start", [np.array(it.plan.box[:2], np.float32) for it in items])
            self.pipe.feed_input("roi_end", [np.array([it.plan.box[0] + it.plan.box[2], it.plan.box[1] + it.plan.box[3]],
                                                      np.float32) for it in items])
            # a rotated clip is mirrored after it is turned upright (below), not by DALI
            self.pipe.feed_input("flip", [np.array(int(it.plan.flip and not it.plan.rotation), np.int32)
                                          for it in items])
            self.pipe.feed_input("colour", [colour_matrix(it.fmt) for it in items])
            (out,) = self.pipe.run()
        except Exception:
            self.pipe = None  # a failed DALI pipeline is not reused
            raise
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = out.as_tensor()
        if self.device == "gpu":
            device = torch.device("cuda", self.device_id)
            video = torch.empty(tuple(dense.shape()), dtype=torch.float32, device=device)
            feed_ndarray(dense, video, cuda_stream=torch.cuda.current_stream(device))
        else:
            video = torch.empty(tuple(dense.shape()), dtype=torch.float32)
            feed_ndarray(dense, video)
        for k, it in enumerate(items):  # (C, T, crop, crop) in stored orientation -> upright
            if it.plan.rotation:
                video[k] = orient_clip(video[k], it.plan.rotation, it.plan.flip)
        return video


def _first_line(e: BaseException) -> str:
    """The informative line of a DALI error (its first lines are a generic header)."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    for l in reversed(lines):
        if not l.startswith(("Current pipeline", "File ", "return ", "Error in", "Critical error")):
            return l[:300]
    return (lines[0] if lines else type(e).__name__)[:300]


class DaliLoader:
    """Iterable of `Batch`es from DALI, same sampling and masks (`masker`) as the CPU backend."""

    def __init__(self, cfg: Config, index, sampler, masker: MultiBlockMasker, rank: int, device: str,
                 device_id: int | None = None):
        self.cfg, self.index, self.sampler, self.rank, self.device = cfg, index, sampler, rank, device
        self.device_id = _gpu_id(device, device_id)  # resolved once; the runner gets it as is
        self.capability = torch.cuda.get_device_capability(self.device_id) if device == "gpu" else None
        self._probes: dict[int, FileProbe] = {}  # usable files' probes, at most PROBE_CACHE_MAX
        self._rerouted: dict[int, str] = {}  # entry -> why PyAV decodes it: DALI failed on that file alone
        self.unusable: dict[str, str] = {}  # path -> "kind: reason": skipped (unreadable, or found bad while decoding)
        self._errors: dict[str, VideoError] = {}  # path -> why it is skipped
        self.on_cpu: dict[str, str] = {}  # path -> why PyAV decodes it instead of DALI
        self.stats: Counter = Counter()  # dali_clips, pyav_clips, dali_failures, bad_files, probed
        n = len(index)
        if n <= PROBE_ALL_MAX:  # complete report up front
            with ThreadPoolExecutor(max(2, cfg.data.num_workers)) as pool:
                probes = pool.map(lambda p: probe_for_dali(p, device, self.capability, cfg.data.decode_timeout_s),
                                  index.paths)
                for i, (probe, error) in enumerate(probes):
                    self._record(i, probe, error)
        # each dataset needs a usable file (huge index: among its first entries, the rest when first drawn)
        check_datasets_readable(index, lambda i: None if self.probe(i) is not None else self._errors[index.paths[i]],
                                n if n <= PROBE_ALL_MAX else READABLE_PROBES)
        if rank == 0 and self.unusable:
            names = ", ".join(f"{p} ({r})" for p, r in list(self.unusable.items())[:20])
            log.warning("DALI backend will skip %d of %d files: %s%s", len(self.unusable), n, names,
                        " ..." if len(self.unusable) > 20 else "")
        if rank == 0 and self.on_cpu:
            names = ", ".join(f"{p} ({r})" for p, r in list(self.on_cpu.items())[:20])
            log.warning("DALI (%s) leaves %d of %d probed files to the CPU path (PyAV): %s%s", device, len(self.on_cpu),
                        self.stats["probed"], names, " ..." if len(self.on_cpu) > 20 else "")
        self.masker = masker
        self.runner = DaliClipRunner(cfg.data.batch_size * cfg.data.num_clips, cfg.data.crop_size, device,
                                     max(1, cfg.data.num_workers), self.device_id)
        self.fallback = VideoClips(index, cfg.data)

        self.tracker = skip_tracker(sampler, rank, cfg.data.max_bad_fraction)

    @property
    def skipped_files(self) -> dict[str, int]:
        return dict(self.tracker.total)

    def __len__(self) -> int:
        return len(self.sampler)

    def _record(self, i: int, probe: FileProbe | None, error: VideoError | None) -> None:
        """A probe's result: an unusable file is remembered by path (skipped from then on); a usable one's
        probe while the cache has room (the files PyAV decodes: a report of at most PROBE_CACHE_MAX)."""
        self.stats["probed"] += 1
        path = self.index.paths[i]
        if error is not None:
            self.unusable[path] = error.summary
            self._errors[path] = error
            return
        if probe.cpu_reason is not None and len(self.on_cpu) < PROBE_CACHE_MAX:
            self.on_cpu[path] = probe.cpu_reason
        if len(self._probes) < PROBE_CACHE_MAX:
            self._probes[i] = probe

    def probe(self, i: int) -> FileProbe | None:
        """Probe result of entry `i` (probed on first use; past the cache's size, on every use), None if
        the file is unusable."""
        if self.index.paths[i] in self._errors:
            return None
        probe = self._probes.get(i)
        if probe is None:
            probe, error = probe_for_dali(self.index.paths[i], self.device, self.capability,
                                          self.cfg.data.decode_timeout_s)
            self._record(i, probe, error)
            if probe is None:
                return None
        reason = self._rerouted.get(i)
        return probe if reason is None or probe.cpu_reason == reason else dataclasses.replace(probe, cpu_reason=reason)

    def usable_probe(self, i: int) -> FileProbe:
        """Probe result of entry `i`; VideoError when the file is unusable (or was found bad)."""
        probe = self.probe(i)
        if probe is None:
            raise self._errors[self.index.paths[i]]
        return probe

    def mark_bad(self, i: int, error: VideoError) -> None:
        """Entry `i` failed to decode: skipped from now on (every later draw substitutes it)."""
        self._probes.pop(i, None)
        self.unusable[error.path] = error.summary
        self._errors[error.path] = error
        self.stats["bad_files"] += 1

    def plans(self, i: int, step: int, key: int) -> tuple[FileProbe, list[ClipPlan]]:
        """Probe and clip plans of entry `i` for the sample keyed `key` at `step` (VideoError: unusable)."""
        probe = self.usable_probe(i)
        return probe, plan_video(probe.info, self.cfg.data, self.cfg.data.seed, step, key)

    def resolve(self, index: int, step: int, slot: int) -> tuple[int, tuple[FileProbe, list[ClipPlan]], list]:
        """(entry used for sample `index` at (step, slot), (its probe, plans), files skipped on the way):
        `skips.substitute`."""
        return substitute(index, len(self.index), lambda i: self.plans(i, step, index), seed=self.cfg.data.seed,
                          step=step, slot=slot, max_bad_fraction=self.cfg.data.max_bad_fraction,
                          failure="could not be decoded", span=self.index.span(index))

    def _decode_dali(self, groups: list[tuple[int, list[DaliItem]]]) -> tuple[dict, dict]:
        """Decode sample groups with DALI: ({sample: (clips, C, T, H, W)}, {sample: failure reason}).

        A failed run is split in halves (and so on down to single samples), so one bad file costs
        about log2(samples) extra runs and the others still decode with DALI.
        """
        try:
            video = self.runner.run([it for _, g in groups for it in g])
        except Exception as e:
            self.stats["dali_failures"] += 1
            if len(groups) == 1:
                return {}, {groups[0][0]: f"DALI could not decode it: {_first_line(e)}"}
            half = len(groups) // 2
            done, failed = self._decode_dali(groups[:half])
            done2, failed2 = self._decode_dali(groups[half:])
            return {**done, **done2}, {**failed, **failed2}
        out, start = {}, 0
        for k, g in groups:
            out[k] = video[start:start + len(g)]
            start += len(g)
        self.stats["dali_clips"] += start
        return out, {}

    def _check_not_systemic(self, groups: list, done: dict, bad: dict, entries: dict, samples: list) -> None:
        """RuntimeError when DALI failed every file of a batch of several that PyAV reads: DALI itself is
        broken here (no NVDEC library in the container, out of memory, a pipeline that cannot be built),
        and blaming each file would silently move the whole dataset to one PyAV thread."""
        if done or len(groups) < 2 or len(bad) != len(groups):
            return
        k = next(iter(bad))
        i, _, _ = entries[k]
        index, s, _ = samples[k]
        try:
            self.fallback.load(i, s, key=index)
        except VideoError:
            return  # the files may really be bad: each is decided on its own below
        raise RuntimeError(f"DALI failed on all {len(groups)} files of a batch, and PyAV reads "
                           f"{self.index.paths[i]}: DALI does not work here ({bad[k]}). Fix the DALI "
                           f"installation or the container (NVDEC needs the driver's video capability), "
                           f"or set data.backend: cpu")

    def _decode_pyav(self, i: int, step: int, key: int) -> torch.Tensor:
        """Entry `i`'s clips for sample `key` at `step` decoded by PyAV (same plan as DALI's):
        (clips, C, T, H, W); VideoError when it cannot be read."""
        video = self.fallback.load(i, step, key=key)
        self.stats["pyav_clips"] += self.cfg.data.num_clips
        return video if video.dim() == 5 else video[None]

    def batch(self, samples: list[tuple[int, int, int]]) -> Batch:
        """The Batch of `samples` ((index, step, slot) triples of one micro-step).

        A sample whose file turns out bad while decoding is resolved again: `substitute` redraws the
        same seeded replacements, now passing over the bad file, so each round moves every failed
        sample further along its draws (and `substitute` ends it after max_draws).
        """
        step = samples[0][1]
        d = self.cfg.data
        entries = {k: self.resolve(*sample) for k, sample in enumerate(samples)}
        clips: dict[int, torch.Tensor] = {}
        while todo := [k for k in entries if k not in clips]:
            groups, failed = [], {}
            for k in todo:
                i, (probe, plans), _ = entries[k]
                index, s, _ = samples[k]
                if probe.cpu_reason is None:
                    groups.append((k, [DaliItem(probe.info.path, probe.fmt, p) for p in plans]))
                else:  # a file DALI cannot decode correctly here: PyAV, same plan
                    try:
                        clips[k] = self._decode_pyav(i, s, index)
                    except VideoError as e:
                        failed[k] = e
            if groups:
                done, bad = self._decode_dali(groups)
                clips.update(done)
                self._check_not_systemic(groups, done, bad, entries, samples)
                for k, reason in bad.items():  # DALI failed on this file alone: PyAV decides whether it is bad
                    i, (probe, _), _ = entries[k]
                    index, s, _ = samples[k]
                    try:
                        clips[k] = self._decode_pyav(i, s, index)
                    except VideoError as e:
                        failed[k] = VideoError(e.path, f"{e.reason} ({reason})", e.kind)
                        continue
                    self._rerouted[i] = reason
                    if i in self._probes:
                        self._probes[i] = dataclasses.replace(probe, cpu_reason=reason)
                    self.on_cpu[probe.info.path] = reason
                    log.warning("data: %s: %s; PyAV decodes it from now on", probe.info.path, reason)
            for k, error in failed.items():
                self.mark_bad(entries[k][0], error)
                log.warning("data: %s: %s; skipped from now on", error.path, error.summary)
                entries[k] = self.resolve(*samples[k])  # the next usable draw; its skipped list names the bad file
        target = torch.device("cuda", self.device_id) if self.device == "gpu" else torch.device("cpu")
        order = range(len(samples))
        video = torch.cat([clips[k].to(target, non_blocking=True) for k in order])
        labels = [self.index.labels[entries[k][0]] for k in order for _ in range(d.num_clips)]
        used = [entries[k][0] for k in order for _ in range(d.num_clips)]
        skipped = [x for k in order for x in entries[k][2]]
        padded = sum(entries[k][1][1][0].padded for k in order)  # the plans PyAV fallbacks decode too
        if self.device == "gpu":
            video = video.to(torch.bfloat16)
        return make_batch(video, labels, self.masker, step, self.rank, used, skipped, clips_per_sample=d.num_clips,
                          padded=padded)

    def _thread_init(self) -> None:
        if self.device == "gpu":
            torch.cuda.set_device(self.device_id)  # a new thread starts on device 0

    def __iter__(self):
        """Batches in step order; data.dali_prefetch batches are decoded ahead in one helper thread."""
        depth = self.cfg.data.dali_prefetch
        pool = ThreadPoolExecutor(1, initializer=self._thread_init)
        try:
            steps = iter(self.sampler)
            pending: deque = deque()
            for samples in steps:
                pending.append(pool.submit(self.batch, samples))
                if len(pending) >= depth:
                    break
            while pending:
                batch = pending.popleft().result()
                following = next(steps, None)
                if following is not None:
                    pending.append(pool.submit(self.batch, following))
                self.tracker.update(batch)
                yield batch
        finally:  # closed early (a stop request, an error): batches not yet started are dropped, not decoded
            pool.shutdown(wait=True, cancel_futures=True)
        self.tracker.flush()
