"""`data` suite: decoded clips/s and frames/s of the video loaders, per backend and worker count.

Writes a synthetic set of real H.264 + VP9 files in a temporary folder, then times full training
batches (decode, crop, resize, flip, normalize, masks) from `build_dataloader` in steady state
(after the batches prefetched during start-up). Rows: impl = backend (cpu / dali-cpu / dali-gpu), workers, clips_per_s, frames_per_s
(frames delivered in clips), time_ms (per batch). DALI rows are replaced by a note when nvidia-dali
is missing; DALI on the CPU only reads the VP9 half of the set.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from vjepa_scale.config import Config, DataConfig, DatasetSpec, MaskConfig, MaskSpec, ModelConfig

QUICK = dict(videos=12, frames=24, size=96, crop=64, clip=8, step=2, batch=4, steps=6, workers=(0, 2))
FULL = dict(videos=32, frames=64, size=320, crop=224, clip=16, step=4, batch=8, steps=12, workers=(0, 4, 8))


def _config(index: Path, p: dict, backend: str, workers: int) -> Config:
    data = DataConfig(backend=backend, datasets=[DatasetSpec(str(index))], batch_size=p["batch"],
                      crop_size=p["crop"], frames_per_clip=p["clip"], frame_step=p["step"], num_workers=workers)
    masks = MaskConfig(types=[MaskSpec(8, (0.15, 0.15)), MaskSpec(2, (0.7, 0.7))])
    return Config(model=ModelConfig(size="tiny"), mask=masks, data=data).validate()


def _time_loader(cfg: Config, steps: int) -> float:
    """Seconds per batch in steady state: batches prefetched while the first one was made are not timed."""
    from vjepa_scale.data import build_dataloader

    warm = 2 * cfg.data.num_workers + 1  # DataLoader prefetch depth (prefetch_factor 2) + the first batch
    loader = iter(build_dataloader(cfg, num_steps=warm + steps))
    for _ in range(warm):
        next(loader)
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        if batch.video.is_cuda:
            torch.cuda.synchronize()
        n += 1
    return (time.perf_counter() - t0) / max(n, 1)


def run(device: str, quick: bool, batch_size: int | None = None, steps: int | None = None) -> list[dict]:
    """Rows per (backend, workers); `batch_size` / `steps` override the preset (clips per batch, timed batches)."""
    from vjepa_scale.data import dali_available
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    p = dict(QUICK if quick else FULL)
    p.update({k: v for k, v in (("batch", batch_size), ("steps", steps)) if v})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        index = write_synthetic_videos(tmp, p["videos"], p["frames"], p["size"], ("h264", "vp9"), val_fraction=0)["train"]
        vp9 = Path(tmp) / "vp9.txt"
        vp9.write_text("".join(l + "\n" for l in index.read_text().splitlines() if l.split()[0].endswith(".webm")))
        case = f"{p['size']}px src -> B={p['batch']} T={p['clip']}x{p['step']} crop={p['crop']}"
        runs = [("cpu", w, index) for w in p["workers"]]
        on_gpu = device.startswith("cuda") and torch.cuda.is_available()
        runs.append(("dali-gpu" if on_gpu else "dali-cpu", max(p["workers"]), index if on_gpu else vp9))
        for impl, workers, idx in runs:
            row = {"suite": "data", "case": case, "impl": impl, "workers": workers}
            if impl.startswith("dali") and not dali_available():
                rows.append({**row, "note": "nvidia-dali not installed"})
                continue
            cfg = _config(idx, p, "dali" if impl.startswith("dali") else "cpu", workers)
            sec = _time_loader(cfg, p["steps"])
            clips = cfg.data.batch_size * cfg.data.num_clips
            rows.append({**row, "time_ms": sec * 1e3, "clips_per_s": clips / sec,
                         "frames_per_s": clips * cfg.data.frames_per_clip / sec})
    return rows

