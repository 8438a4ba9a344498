"""`data` suite: decoded clips/s and frames/s of the video loaders, per backend and worker count.

Writes a synthetic set of real H.264 + VP9 files in a temporary folder, then times full training
batches (decode, crop, resize, flip, normalize, masks) from `build_dataloader` in steady state
(after the batches prefetched during start-up). Rows: impl = backend (cpu / dali-cpu / dali-gpu), workers, clips_per_s, frames_per_s
(frames delivered in clips), time_ms (per batch). DALI rows are replaced by a note when nvidia-dali
is missing; DALI on the CPU only reads the VP9 half of the set; the `dali-gpu` row decodes a set of
>= 256 px videos (NVDEC's minimum sizes) and its `pyav_clips` / note say whether any clip fell back
to PyAV. The last row times the CPU path on the same set after `data.transcode` (a keyframe every
16 frames, short side = crop), against the raw files' row with the same workers.
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


def _time_loader(cfg: Config, steps: int, stats: dict | None = None) -> float:
    """Seconds per batch in steady state: batches prefetched while the first one was made are not timed.

    `stats` (a dict) receives the DALI loader's counters (clips decoded by DALI / PyAV)."""
    from vjepa_scale.data import build_dataloader

    warm = 2 * cfg.data.num_workers + 1  # DataLoader prefetch depth (prefetch_factor 2) + the first batch
    built = build_dataloader(cfg, num_steps=warm + steps)
    loader = iter(built)
    for _ in range(warm):
        next(loader)
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        if batch.video.is_cuda:
            torch.cuda.synchronize()
        n += 1
    if stats is not None:
        stats.update(getattr(built, "stats", {}))
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
        gpu_case = case
        gpu_index = index
        if on_gpu and p["size"] < 256:  # NVDEC needs >= 144 px (HEVC) / 128 px (VP9): a set it really decodes
            size = max(p["size"], 256)
            gpu_index = write_synthetic_videos(Path(tmp) / "nvdec", p["videos"], p["frames"], size, ("h264", "vp9"),
                                               val_fraction=0)["train"]
            gpu_case = f"{size}px src -> B={p['batch']} T={p['clip']}x{p['step']} crop={p['crop']}"
        runs.append(("dali-gpu" if on_gpu else "dali-cpu", max(p["workers"]), gpu_index if on_gpu else vp9))
        from vjepa_scale.data.transcode import transcode_index

        short, _ = transcode_index(str(index), str(Path(tmp) / "short_gop"), gop=16, short_side=p["crop"])
        runs.append(("cpu", max(p["workers"]), short))
        for impl, workers, idx in runs:
            row = {"suite": "data", "case": case, "impl": impl, "workers": workers}
            if impl == "dali-gpu":
                row["case"] = gpu_case
            if idx == short:
                row["case"] = f"{case}, transcoded (gop 16, short side {p['crop']})"
            if impl.startswith("dali") and not dali_available():
                rows.append({**row, "note": "nvidia-dali not installed"})
                continue
            cfg = _config(idx, p, "dali" if impl.startswith("dali") else "cpu", workers)
            stats: dict = {}
            sec = _time_loader(cfg, p["steps"], stats)
            clips = cfg.data.batch_size * cfg.data.num_clips
            rows.append({**row, "time_ms": sec * 1e3, "clips_per_s": clips / sec,
                         "frames_per_s": clips * cfg.data.frames_per_clip / sec})
            if impl.startswith("dali"):
                rows[-1]["pyav_clips"] = stats.get("pyav_clips", 0)
                if stats.get("pyav_clips"):
                    rows[-1]["note"] = (f"{stats['pyav_clips']} of {stats['pyav_clips'] + stats.get('dali_clips', 0)} "
                                        f"clips fell back to PyAV")
    return rows

