"""`data` suite: decoded clips/s and frames/s of the video loaders, per source set, backend and worker count.

Two source sets are written (real H.264 + VP9 files in a temporary folder), and every row says what
it decodes (`source`: resolution, codecs, frames per video, measured GOP = frames per keyframe):
- `small`: short, small synthetic clips (moving shapes), the best case for any decoder;
- `footage`: longer, higher-resolution clips like camera footage (full: 1280x720, 300 frames, a
  keyframe every 30; a panning texture with a moving square), where decoding dominates.
Full training batches (decode, crop, resize, flip, normalize, masks) from `build_dataloader` are
timed in steady state (after the batches prefetched during start-up). Rows: impl = backend (cpu /
dali-cpu / dali-gpu), workers, clips_per_s, frames_per_s (frames delivered in clips), time_ms (per
batch). DALI rows are replaced by a note when nvidia-dali is missing; DALI on the CPU only reads the
VP9 half of a set; on a GPU the small set is written at >= 256 px for DALI (NVDEC's minimum sizes),
and `pyav_clips` / the note say whether any clip fell back to PyAV. The last row times the CPU path
on the small set after `data.transcode` (a keyframe every 16 frames, short side = crop), against the
small set's row with the same workers.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from vjepa_scale.bench.common import check_positive
from vjepa_scale.config import Config, DataConfig, DatasetSpec, MaskConfig, MaskSpec, ModelConfig

QUICK = dict(videos=12, frames=24, size=96, crop=64, clip=8, step=2, batch=4, steps=6, workers=(0, 2),
             footage=dict(videos=2, frames=48, height=180, width=320, gop=30, workers=2))
FULL = dict(videos=32, frames=64, size=320, crop=224, clip=16, step=4, batch=8, steps=12, workers=(0, 4, 8),
            footage=dict(videos=4, frames=300, height=720, width=1280, gop=30, workers=8))


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


def gop(path: str) -> float:
    """Frames per keyframe of a file's video stream (its mean GOP length), from a packet scan."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
    return len(packets) / max(1, sum(p.is_keyframe for p in packets))


def describe(index: Path) -> str:
    """What a set holds: resolution(s), codecs, frames per video, mean GOP."""
    from vjepa_scale.data.decode import probe_video
    from vjepa_scale.data.index import read_index

    paths = read_index(index)[0]
    infos = [probe_video(p) for p in paths]
    sizes = sorted({f"{i.width}x{i.height}" for i in infos})
    codecs = "+".join(sorted({i.codec for i in infos}))
    frames = sorted({i.num_frames for i in infos})
    gops = sum(gop(p) for p in paths) / len(paths)
    return (f"{len(paths)} x {'/'.join(sizes)} {codecs}, {'/'.join(map(str, frames))} frames, GOP {gops:.0f}")


def _write_footage(folder: Path, f: dict) -> Path:
    from vjepa_scale.data.synthetic_videos import CODECS, panning_frames, write_video

    folder.mkdir()
    lines = []
    for k in range(f["videos"]):
        codec = ("h264", "vp9")[k % 2]
        path = folder / f"footage{k}{CODECS[codec][1]}"
        write_video(path, panning_frames(f["frames"], f["height"], f["width"], seed=k), 30, codec,
                    {"g": str(f["gop"])})
        lines.append(f"{path} 0")
    index = folder / "train.txt"
    index.write_text("".join(l + "\n" for l in lines))
    return index


def _vp9_only(index: Path) -> Path:
    vp9 = index.with_name(index.stem + "_vp9.txt")
    vp9.write_text("".join(l + "\n" for l in index.read_text().splitlines() if l.rsplit(None, 1)[0].endswith(".webm")))
    return vp9


def run(device: str, quick: bool, batch_size: int | None = None, steps: int | None = None) -> list[dict]:
    """Rows per (set, backend, workers); `batch_size` / `steps` override the preset (clips per batch, timed batches)."""
    from vjepa_scale.data import dali_available
    from vjepa_scale.data.synthetic_videos import write_synthetic_videos

    check_positive("data", batch_size=batch_size, steps=steps)
    p = dict(QUICK if quick else FULL)
    p.update({k: v for k, v in (("batch", batch_size), ("steps", steps)) if v is not None})
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    dali = "dali-gpu" if on_gpu else "dali-cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small = write_synthetic_videos(Path(tmp) / "small", p["videos"], p["frames"], p["size"], ("h264", "vp9"),
                                       val_fraction=0)["train"]
        footage = _write_footage(Path(tmp) / "footage", p["footage"])
        small_dali = small if on_gpu else _vp9_only(small)
        if on_gpu and p["size"] < 256:  # NVDEC needs >= 144 px (HEVC) / 128 px (VP9): a set it really decodes
            small_dali = write_synthetic_videos(Path(tmp) / "nvdec", p["videos"], p["frames"], 256, ("h264", "vp9"),
                                                val_fraction=0)["train"]
        from vjepa_scale.data.transcode import transcode_index

        short, _ = transcode_index(str(small), str(Path(tmp) / "short_gop"), gop=16, short_side=p["crop"])
        runs = [("small", "cpu", w, small) for w in p["workers"]]
        runs.append(("small", dali, max(p["workers"]), small_dali))
        runs.append(("footage", "cpu", p["footage"]["workers"], footage))
        runs.append(("footage", dali, p["footage"]["workers"], footage if on_gpu else _vp9_only(footage)))
        runs.append((f"small transcoded (gop 16, short side {p['crop']})", "cpu", max(p["workers"]), short))
        sources = {}
        for name, impl, workers, idx in runs:
            if idx not in sources:
                sources[idx] = describe(Path(idx))
            case = f"{name} -> B={p['batch']} T={p['clip']}x{p['step']} crop={p['crop']}"
            row = {"suite": "data", "case": case, "impl": impl, "workers": workers, "source": sources[idx]}
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
