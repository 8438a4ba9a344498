"""DALI backend: decode (NVDEC on GPU), crop+resize, flip and normalize inside one DALI pipeline.

One pipeline definition (`clip_pipeline`) serves both devices: the decoder runs as "mixed" (NVDEC,
output on the GPU) when CUDA is present and as "cpu" otherwise; every later operator follows its
input. Python feeds each batch through external sources: the encoded file bytes, the frame indices,
the crop box and the flip flag, all drawn by `clips.plan_video` exactly as the CPU backend draws them,
so both backends pick the same frames and boxes and shard by the same `StepBatchSampler`
(rank r of W takes its own disjoint slice of each step's samples, i.e. shard_id=r, num_shards=W).

DALI's CPU decoder only handles VP8, VP9 and MJPEG, and DALI readers silently drop files they
cannot decode. So every file is probed with PyAV (`decode.probe_video`: exact frame count, truncation,
rotation) when the loader is built (indexes above PROBE_ALL_MAX entries: each file when first drawn):
missing, unreadable, truncated and unsupported-codec files are reported (a warning on rank 0 naming
them) and, like files too short for a clip (`clips.plan_video`), skipped by the CPU backend's
substitution (`skips.substitute`), which lists them in each batch's
`skipped`; batches are built by `batch.make_batch`, like the collator's. Rotated files are cropped in
stored pixels by DALI and turned upright (then mirrored) in torch (`clips.orient_clip`). If a DALI
batch still fails at run time, that batch is decoded by the CPU
backend instead (logged) and the pipeline is rebuilt. On a GPU the video leaves as bf16 on the GPU.
`DaliLoader` prepares the next batch in a helper thread (one batch ahead); DALI itself uses
`data.num_workers` threads.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from vjepa_scale.config import Config
from vjepa_scale.data.batch import Batch, make_batch
from vjepa_scale.data.clips import IMAGENET_MEAN, IMAGENET_STD, ClipPlan, orient_clip, plan_video
from vjepa_scale.data.cpu import VideoClips
from vjepa_scale.data.decode import VideoError, VideoInfo, probe_video
from vjepa_scale.data.skips import NoReadableVideosError, substitute
from vjepa_scale.masks import MultiBlockMasker

log = logging.getLogger("vjepa_scale.data")

DALI_CODECS = {
    "cpu": frozenset({"vp8", "vp9", "mjpeg"}),
    "gpu": frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mjpeg", "mpeg4"}),
}


def clip_pipeline(batch_size: int, crop_size: int, device: str, num_threads: int = 2, device_id: int | None = None):
    """The DALI pipeline: encoded bytes + frame indices + crop box + flip -> (N, C, T, crop, crop) float.

    `device` is "gpu" (NVDEC decode, everything on the GPU) or "cpu"; the graph is otherwise identical.
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def pipe():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
        flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
        video = fn.decoders.video(encoded, device="mixed" if device == "gpu" else "cpu", frames=frames,
                                  pad_mode="edge")
        video = fn.resize(video, size=[crop_size, crop_size], roi_start=roi_start, roi_end=roi_end,
                          roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True,
                          dtype=types.FLOAT)
        return fn.crop_mirror_normalize(video, mean=[m * 255.0 for m in IMAGENET_MEAN],
                                        std=[s * 255.0 for s in IMAGENET_STD], mirror=flip,
                                        output_layout="CFHW", dtype=types.FLOAT)

    return pipe()


PROBE_ALL_MAX = 100_000  # indexes up to this size are probed completely when the loader is built


def probe_for_dali(path: str, device: str) -> tuple[VideoInfo | None, VideoError | None]:
    """PyAV probe of one file (`decode.probe_video`: exact frame count, truncation, rotation): (info, None) if
    DALI on `device` can decode it, else (None, why)."""
    try:
        info = probe_video(path)
    except VideoError as e:
        return None, e
    if info.codec not in DALI_CODECS[device]:
        return None, VideoError(path, f"codec {info.codec} is not decodable by DALI on {device}", "unsupported")
    return info, None  # frame counts are exact and DALI numbers frames in presentation order: VFR is fine  # frame counts are exact and DALI numbers frames in presentation order: VFR is fine


class DaliClipRunner:
    """Runs `clip_pipeline` on explicit (path, ClipPlan) lists; rebuilds itself after a failure."""

    def __init__(self, batch_size: int, crop_size: int, device: str, num_threads: int = 2):
        self.batch_size, self.crop_size, self.device, self.num_threads = batch_size, crop_size, device, num_threads
        self.pipe = None

    def _build(self):
        device_id = torch.cuda.current_device() if self.device == "gpu" else None
        self.pipe = clip_pipeline(self.batch_size, self.crop_size, self.device, self.num_threads, device_id)
        self.pipe.build()

    def run(self, items: list[tuple[str, ClipPlan]]) -> torch.Tensor:
        """(len(items), C, T, crop, crop) float32 on the pipeline's device."""
        if len(items) != self.batch_size:
            raise ValueError(f"DaliClipRunner expects {self.batch_size} clips, got {len(items)}")
        if self.pipe is None:
            self._build()
        try:
            self.pipe.feed_input("encoded", [np.fromfile(path, dtype=np.uint8) for path, _ in items])
            self.pipe.feed_input("frames", [np.asarray(p.frames, np.int32) for _, p in items])
            self.pipe.feed_input("roi_start", [np.array(p.box[:2], np.float32) for _, p in items])
            self.pipe.feed_input("roi_end", [np.array([p.box[0] + p.box[2], p.box[1] + p.box[3]], np.float32)
                                             for _, p in items])
            # a rotated clip is mirrored after it is turned upright (below), not by DALI
            self.pipe.feed_input("flip", [np.array(int(p.flip and not p.rotation), np.int32) for _, p in items])
            (out,) = self.pipe.run()
        except Exception:
            self.pipe = None  # a failed DALI pipeline is not reused
            raise
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = out.as_tensor()
        video = torch.empty(tuple(dense.shape()), dtype=torch.float32,
                            device="cuda" if self.device == "gpu" else "cpu")
        feed_ndarray(dense, video, cuda_stream=torch.cuda.current_stream() if self.device == "gpu" else None)
        for k, (_, p) in enumerate(items):  # (C, T, crop, crop) stored orientation -> upright
            if p.rotation:
                video[k] = orient_clip(video[k], p.rotation, p.flip)
        return video


class DaliLoader:
    """Iterable of `Batch`es from DALI, same sampling and masks (`masker`) as the CPU backend."""

    def __init__(self, cfg: Config, index, sampler, masker: MultiBlockMasker, rank: int, device: str):
        self.cfg, self.index, self.sampler, self.rank, self.device = cfg, index, sampler, rank, device
        self._infos: dict[int, VideoInfo | None] = {}
        self.unusable: dict[str, str] = {}  # path -> "kind: reason"
        self._errors: dict[str, VideoError] = {}
        n = len(index)
        if n <= PROBE_ALL_MAX:  # complete report up front
            with ThreadPoolExecutor(max(2, cfg.data.num_workers)) as pool:
                for i, (info, error) in enumerate(pool.map(lambda p: probe_for_dali(p, device), index.paths)):
                    self._record(i, info, error)
            usable = [len(self.unusable) < n]
        else:  # huge index: one usable file per dataset now, the rest when first drawn
            usable, start = [], 0
            for size in index.sizes:
                usable.append(any(self.info(i) is not None for i in range(start, start + min(size, 256))))
                start += size
        if not all(usable):
            reasons = sorted(set(self.unusable.values()))
            raise NoReadableVideosError(f"DALI ({device}) can read none of the videos in {index.sources}: "
                                        f"{'; '.join(reasons[:3])}. Use data.backend: cpu for these files.")
        if self.unusable and rank == 0:
            names = ", ".join(f"{p} ({r})" for p, r in list(self.unusable.items())[:20])
            log.warning("DALI backend will skip %d of %d files: %s%s", len(self.unusable), n, names,
                        " ..." if len(self.unusable) > 20 else "")
        self.masker = masker
        self.runner = DaliClipRunner(cfg.data.batch_size * cfg.data.num_clips, cfg.data.crop_size, device,
                                     max(1, cfg.data.num_workers))
        self.fallback = VideoClips(index, cfg.data)
        from vjepa_scale.data.loader import skip_tracker

        self.tracker = skip_tracker(sampler, rank, cfg.data.max_bad_fraction)

    @property
    def skipped_files(self) -> dict[str, int]:
        return dict(self.tracker.total)

    def __len__(self) -> int:
        return len(self.sampler)

    def _record(self, i: int, info: VideoInfo | None, error: VideoError | None) -> None:
        self._infos[i] = info
        if error is not None:
            self.unusable[self.index.paths[i]] = error.summary
            self._errors[self.index.paths[i]] = error

    def info(self, i: int) -> VideoInfo | None:
        """Probe result of entry `i` (probed on first use), None if DALI cannot use the file."""
        if i not in self._infos:
            self._record(i, *probe_for_dali(self.index.paths[i], self.device))
        return self._infos[i]

    def usable_info(self, i: int) -> VideoInfo:
        """Probe result of entry `i`; VideoError when DALI cannot use the file."""
        info = self.info(i)
        if info is None:
            path = self.index.paths[i]
            raise self._errors[path]
        return info

    def plans(self, i: int, step: int, key: int) -> tuple[VideoInfo, list[ClipPlan]]:
        """Probe result and clip plans of entry `i` for the sample keyed `key` (VideoError: unusable)."""
        info = self.usable_info(i)
        return info, plan_video(info, self.cfg.data, self.cfg.data.seed, step, key)

    def resolve(self, index: int, step: int, slot: int) -> tuple[int, tuple[VideoInfo, list[ClipPlan]], list]:
        """(entry used for sample `index`, (its probe result, plans), files skipped on the way): `skips.substitute`."""
        return substitute(index, len(self.index), lambda i: self.plans(i, step, index), seed=self.cfg.data.seed,
                          step=step, slot=slot, max_bad_fraction=self.cfg.data.max_bad_fraction,
                          failure="are unusable for DALI")

    def batch(self, samples: list[tuple[int, int, int]]) -> Batch:
        step = samples[0][1]
        items, labels, used, skipped = [], [], [], []
        for index, s, slot in samples:
            i, (info, plans), sk = self.resolve(index, s, slot)
            skipped += sk
            for plan in plans:
                items.append((info.path, plan))
                labels.append(self.index.labels[i])
                used.append(i)
        try:
            video = self.runner.run(items)
        except Exception as e:  # decode failure DALI could not foresee: route this batch through PyAV
            log.warning("DALI failed on step %d (%s); decoding this batch on the CPU", step, str(e).splitlines()[0])
            cpu = [self.fallback[sample] for sample in samples]
            skipped += [x for c in cpu for x in c["skipped"]]
            video = torch.cat([c["video"].reshape(-1, *c["video"].shape[-4:]) for c in cpu])
            labels = [c["label"] for c in cpu for _ in range(self.cfg.data.num_clips)]
            used = [c["index"] for c in cpu for _ in range(self.cfg.data.num_clips)]
            if self.device == "gpu":
                video = video.cuda(non_blocking=True)
        if self.device == "gpu":
            video = video.to(torch.bfloat16)
        return make_batch(video, labels, self.masker, step, self.rank, used, skipped)

    def __iter__(self):
        """Batches in step order; the next batch is decoded in a helper thread while this one is used."""
        with ThreadPoolExecutor(1) as pool:
            steps = iter(self.sampler)
            first = next(steps, None)
            pending = pool.submit(self.batch, first) if first is not None else None
            while pending is not None:
                batch = pending.result()
                following = next(steps, None)
                pending = pool.submit(self.batch, following) if following is not None else None
                self.tracker.update(batch)
                yield batch
        self.tracker.flush()

