"""Video data: index files, clip sampling, augmentation, decoding backends, per-rank sampling.

`build_dataloader(cfg, rank, world_size, start_step, num_steps)` is the one entry point the trainer
uses. Every backend yields `Batch`es (`batch.py`): video (B*num_clips, C, T, H, W), label
(B*num_clips,), masks (MaskBatch), step, index (the index entry behind each clip) and skipped
((path, reason) of every file this batch had to replace). Backends (`data.backend`, chosen by
`resolve_data_backend`):

- `cpu`: PyAV decoding in DataLoader workers (H.264, HEVC, VP9, MJPEG, ...); video is float32 on the
  CPU and the trainer casts it to bf16 when it moves it to the GPU.
- `dali`: NVIDIA DALI decoding (NVDEC) and augmentation on the GPU; video comes out bf16 on the GPU
  (cast in `DaliLoader`). On a CPU-only host the same pipeline runs with device "cpu" (VP9, VP8, MJPEG).
  Files DALI cannot decode correctly on the device (`nvdec`: codec, profile, bit depth, size) are
  decoded by PyAV inside the same batches; a failing DALI batch is bisected to the bad file.
- `auto`: `dali` when CUDA and DALI are both available, else `cpu`.
- `synthetic`: random tensors, no files.

Both file backends probe files the same way (`decode.probe_video`: exact frame counts, never duration x
fps; truncation; rotation), draw every random choice from `clips.plan_video` (frames by index at the
stride data.frame_step or from each video's rate with data.fps, exactly or spread as the reference repos
do (data.frame_spacing), also for variable frame rates;
boxes on the upright picture; files shorter than a clip skipped, or with data.short_videos: pad
sampled with their last frame repeated and counted as padded), so they pick the same frames, crop box and flip for a sample, and replace
unusable entries by the same policy (`skips.substitute`: uniform draws seeded by step and slot).
Skipped files are summarized per epoch on rank 0 (logger `vjepa_scale.data`; all ranks' files when a
process group is up), counted per rank in `loader.skipped_files`, and reach the trainer's metrics
by kind (`skip_metrics`, with the padded samples); a share of unusable draws surely above data.max_bad_fraction ends the run
(NoReadableVideosError).
Reading one file may take at most data.decode_timeout_s (then it is skipped like an unreadable one);
the cpu backend's workers must deliver each batch within data.loader_timeout_s (LoaderTimeoutError).
The trainer agrees on every step's loading across ranks (`agree_loaded`): an error on some ranks only
ends every rank at that step with DataLoadError; the epoch summaries' gather (a collective) then
runs after that agreement (`defer_skip_reports` / `report_skips`), never inside a rank's next().

Modules: `loader` (backend choice, datasets, samplers, `build_dataloader`), `batch` (the Batch
contract, its builder and the collator), `skips` (substitution policy, per-epoch report), `cpu` /
`dali` / `synthetic` (backends), `nvdec` (what DALI decodes per device), `clips` (frame and crop
plans: the shared "good clip" rule), `decode` (probe, exact counts, decoding), `index`, `sampler`,
`transcode` (short-GOP re-encoding for NVDEC).
"""
from vjepa_scale.data.batch import Batch
from vjepa_scale.data.loader import (DataLoadError, LoaderTimeoutError, agree_loaded, build_dataloader,
                                     build_dataset, dali_available, dataset_clips, resolve_data_backend)
from vjepa_scale.data.skips import (NoReadableVideosError, defer_skip_reports, report_skips, skip_metrics,
                                    skip_totals)

__all__ = ["Batch", "DataLoadError", "LoaderTimeoutError", "agree_loaded", "NoReadableVideosError", "build_dataloader", "build_dataset",
           "dali_available", "dataset_clips", "defer_skip_reports", "report_skips", "resolve_data_backend", "skip_metrics",
           "skip_totals"]
