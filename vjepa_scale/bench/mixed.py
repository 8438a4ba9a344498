"""Mixed-shape training step: one packed batch of several clip shapes vs the same clips padded to the
largest shape vs one shape per step (`python tools/bench.py --suite mixed`).

The batch: on CUDA, 16-frame 256 px clips + a 64-frame 384 px clip + 256 px images (ViT-L, bf16
autocast, activation checkpointing); on CPU (`quick`), the same mix at tiny sizes (ViT-tiny, 2 blocks).
A step here is the target forward, the online loss, backward and an AdamW step (no EMA, no ZeRO).
Rows:
- `packed`: all clips in one packed batch (`MixedVideo`, per-sample grids; no padding FLOPs);
- `padded`: every clip zero-padded to the largest shape, one uniform batch (masks on the largest
  grid), what a trainer without per-sample grids would have to run;
- `per_step`: one uniform step per shape (V-JEPA 2's way), time summed over the shapes.
`tokens_per_s` counts the real clips' full-clip tokens in every row (padding is not work done).
"""
from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn.functional as F

from vjepa_scale.bench.common import sync
from vjepa_scale.config import Config, DataConfig, MaskConfig, MaskSpec, ModelConfig
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.mixed import MixedVideo
from vjepa_scale.models.jepa import JEPA, compute_targets, make_target_encoder


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


def _grid(cfg: Config, frames: int, crop: int) -> tuple[int, int, int]:
    return (frames // cfg.model.tubelet_size, crop // cfg.model.patch_size, crop // cfg.model.patch_size)


def _step_fn(jepa: JEPA, target, opt, device: str, amp: Optional[torch.dtype]):
    def step(video, masks) -> torch.Tensor:
        ctx = torch.autocast(torch.device(device).type, dtype=amp) if amp else torch.autocast("cpu", enabled=False)
        with ctx:
            with torch.no_grad():
                tgt = compute_targets(target, video, masks)
            loss = jepa(video, masks, tgt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def _timed(step, batches, warmup: int, steps: int, device: str) -> float:
    """Seconds per pass over `batches` (a list of (video, masks))."""
    for _ in range(warmup):
        for v, m in batches:
            step(v, m)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        for v, m in batches:
            loss = step(v, m)
    float(loss)
    sync(device)
    return (time.perf_counter() - t0) / steps


def run(device: str, quick: bool) -> list[dict]:
    cfg, shapes = _config(device, quick)
    cuda = torch.device(device).type == "cuda"
    amp = torch.bfloat16 if cuda else None
    torch.manual_seed(0)
    with torch.device(device):
        jepa = JEPA(cfg)
    target = make_target_encoder(jepa.encoder)
    opt = torch.optim.AdamW(jepa.parameters(), lr=1e-4)
    step = _step_fn(jepa, target, opt, device, amp)
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(3, f, c, c, generator=g) for f, c, n in shapes for _ in range(n)]
    slots = list(range(len(clips)))
    grids = [_grid(cfg, *c.shape[1:3]) for c in clips]
    real_tokens = sum(t * h * w for t, h, w in grids)
    dev = lambda v: v.to(device)

    video, order = MixedVideo.from_clips(clips)
    packed = [(dev(video), masker(len(order), 0, grids=[grids[i] for i in order], slots=[slots[i] for i in order]).to(device))]

    T, S = max(c.shape[1] for c in clips), max(c.shape[2] for c in clips)
    big = torch.stack([F.pad(c, (0, S - c.shape[3], 0, S - c.shape[2], 0, T - c.shape[1])) for c in clips])
    big_grid = _grid(cfg, T, S)
    padded = [(dev(big), MultiBlockMasker(cfg.mask, big_grid)(len(clips), 0).to(device))]

    per_step = []
    for f, c, n in shapes:
        sel = [i for i, x in enumerate(clips) if tuple(x.shape[1:3]) == (f, c)]
        per_step.append((dev(torch.stack([clips[i] for i in sel])),
                         MultiBlockMasker(cfg.mask, _grid(cfg, f, c))(len(sel), 0, slots=[slots[i] for i in sel]).to(device)))

    warmup, steps = (1, 2) if quick else (2, 5)
    mix = " + ".join(f"{n}x{f}f{c}px" for f, c, n in shapes)
    rows = []
    for impl, batches, tokens in (("packed", packed, real_tokens),
                                  ("padded", padded, len(clips) * big_grid[0] * big_grid[1] * big_grid[2]),
                                  ("per_step", per_step, real_tokens)):
        dt = _timed(step, batches, warmup, steps, device)
        rows.append({"case": f"mixed step {mix} ({cfg.model.size})", "impl": impl, "time_ms": dt * 1e3,
                     "clips_per_s": len(clips) / dt, "tokens_per_s": real_tokens / dt,
                     "computed_tokens": tokens, "steps": len(batches)})
    base = rows[1]["time_ms"]
    for r in rows:
        r["speedup"] = base / r["time_ms"]  # vs padding to the largest shape
    return rows
