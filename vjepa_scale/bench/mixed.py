"""Mixed-shape training step: one packed batch of several clip shapes vs the same clips padded to the
largest shape vs one shape per step (`python tools/bench.py --suite mixed`).

The batch: on CUDA, 16-frame 256 px clips + a 64-frame 384 px clip + 256 px images (ViT-L, bf16
autocast, activation checkpointing); on CPU (`quick`), the same mix at tiny sizes (ViT-tiny, 2 blocks).
Each step is the trainer's step core (`train.step.StepCore`) over a plain module on one device, as the
step suite's `torch` row runs it: target forward, the packed online loss, backward, AdamW, EMA (no
ZeRO). Rows:
- `packed`: all clips in one packed batch (`MixedVideo`, per-sample grids; no padding FLOPs);
- `padded`: every clip zero-padded to the largest shape, one uniform batch (masks on the largest
  grid), what a trainer without per-sample grids would have to run;
- `per_step`: one uniform step per shape (V-JEPA 2's way), time summed over the shapes.
`time_ms` is the median over 5 timed passes (a pass: the row's one step, or per_step's one step per
shape) after 2 warm-up passes (3 at full size); `time_ms_min`/`_max` give the range; on CPU
`cpu_time_ms` is the median process CPU time per pass (all threads).
`tokens_per_s` counts the real clips' full-clip tokens in every row (padding is not work done).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from vjepa_scale.bench.common import sync
from vjepa_scale.bench.step import torch_core
from vjepa_scale.config import Config, DataConfig, MaskConfig, MaskSpec, ModelConfig, clip_grid
from vjepa_scale.data.batch import Batch, make_batch
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.mixed import MixedVideo


def _config(device: str, quick: bool) -> tuple[Config, list[tuple[int, int, int]]]:
    """(config, [(frames, crop, count)]) of the bench."""
    if quick:
        model = ModelConfig(size="tiny", depth=2, pred_width=64, pred_depth=2, pred_num_heads=4, pos_embed="rope")
        shapes = [(8, 64, 4), (16, 96, 1), (2, 64, 8)]
    else:
        model = ModelConfig(size="large", pos_embed="rope", pred_num_heads=12, activation_checkpointing=True,
                            init="vjepa2")
        shapes = [(16, 256, 4), (64, 384, 1), (2, 256, 16)]
    masks = MaskConfig(types=[MaskSpec(8, (0.15, 0.15)), MaskSpec(2, (0.7, 0.7))])
    cfg = Config(model=model, mask=masks, data=DataConfig(backend="synthetic", crop_size=shapes[0][1],
                                                          frames_per_clip=shapes[0][0], num_workers=0))
    return cfg.validate(), shapes


def _timed(core, batches: list[Batch], warmup: int, steps: int,
           device: str) -> tuple[float, list[float], list[float]]:
    """(median seconds per pass over `batches`, every timed pass's seconds, on CPU every timed pass's
    process CPU seconds (all threads; empty on CUDA)): one optimizer step (+ EMA) per batch, `warmup`
    untimed passes first (each pass's shapes are new on the first; CUDA events between passes issued
    back to back, `perf_counter` per pass on CPU)."""
    n = 0

    def one_pass():
        nonlocal n
        for b in batches:
            loss = core.train_step([b], 0.999, n)
            n += 1
        return loss

    for _ in range(warmup):
        one_pass()
    sync(device)
    if torch.device(device).type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        events[0].record()
        for i in range(steps):
            loss = one_pass()
            events[i + 1].record()
        float(loss)
        sync(device)
        times, cpu = [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])], []
    else:
        times, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            float(one_pass())
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return statistics.median(times), times, cpu


def run(device: str, quick: bool) -> list[dict]:
    cfg, shapes = _config(device, quick)
    core, impl = torch_core(cfg, device)
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(3, f, c, c, generator=g) for f, c, n in shapes for _ in range(n)]
    slots = list(range(len(clips)))
    grid = lambda frames, crop: clip_grid(crop, frames, cfg.model)  # noqa: E731
    grids = [grid(*c.shape[1:3]) for c in clips]
    real_tokens = sum(t * h * w for t, h, w in grids)

    def batch(video, masker, sel, **kw) -> Batch:
        return make_batch(video, [0] * len(sel), masker, 0, 0, sel, [], **kw).to(device)

    video, order = MixedVideo.from_clips(clips)
    packed = [batch(video, MultiBlockMasker(cfg.mask, cfg.grid), order, grids=[grids[i] for i in order],
                    slots=[slots[i] for i in order])]

    T, S = max(c.shape[1] for c in clips), max(c.shape[2] for c in clips)
    big = torch.stack([F.pad(c, (0, S - c.shape[3], 0, S - c.shape[2], 0, T - c.shape[1])) for c in clips])
    big_grid = grid(T, S)
    padded = [batch(big, MultiBlockMasker(cfg.mask, big_grid), slots)]

    per_step = []
    for f, c, n in shapes:
        sel = [i for i, x in enumerate(clips) if tuple(x.shape[1:3]) == (f, c)]
        per_step.append(batch(torch.stack([clips[i] for i in sel]), MultiBlockMasker(cfg.mask, grid(f, c)), sel,
                              slots=[slots[i] for i in sel]))

    warmup, steps = (2, 5) if quick else (3, 5)
    mix = " + ".join(f"{n}x{f}f{c}px" for f, c, n in shapes)
    rows = []
    for name, batches, tokens in (("packed", packed, real_tokens),
                                  ("padded", padded, len(clips) * big_grid[0] * big_grid[1] * big_grid[2]),
                                  ("per_step", per_step, real_tokens)):
        dt, times, cpu = _timed(core, batches, warmup, steps, device)
        rows.append({"case": f"mixed step {mix} ({cfg.model.size}; {impl})", "impl": name, "time_ms": dt * 1e3,
                     "time_ms_min": min(times) * 1e3, "time_ms_max": max(times) * 1e3,
                     "warmup_passes": warmup, "timed_passes": steps,
                     "clips_per_s": len(clips) / dt, "tokens_per_s": real_tokens / dt,
                     "computed_tokens": tokens, "steps": len(batches)})
        if cpu:  # CPU time of the process per pass, less sensitive to other jobs than wall time
            rows[-1]["cpu_time_ms"] = statistics.median(cpu) * 1e3
    base = rows[1]["time_ms"]
    for r in rows:
        r["speedup"] = base / r["time_ms"]  # vs padding to the largest shape
    return rows
