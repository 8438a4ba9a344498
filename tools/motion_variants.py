#!/usr/bin/env python
"""Quick screen of synthetic motion tasks: random-init vs. briefly pretrained encoder, in memory.

Used to look for a task where V-JEPA pretraining beats random weights within a CPU budget before
spending a full documented run (docs/EXPERIMENT.md, "Round 2"). It trades fidelity for speed: clips
are generated in memory (no codec, no decoding), pretraining is one process without DeepSpeed
(the library's JEPA, masker, schedules, and the trainer's step core `StepCore` on a plain module), the whole 64x64 frame is used (h-flip only),
and probes use 2 seeds. The numbers are a screen, not the documented result.

    python tools/motion_variants.py --pattern dots --speed 4 --steps 400 --few 16 \
        --masks "[{num_blocks: 1, spatial_scale: [0.15, 0.15], max_temporal_keep: 0.5}, \
                  {num_blocks: 4, spatial_scale: [0.15, 0.15]}]" --out result.json

Patterns (label = direction: 0 right, 1 left, 2 down, 3 up; 480 train / 160 val videos of 16 frames
by default):
- dots: random dots translating together (a random-dot kinematogram); no frame reveals the direction;
  optional limited dot lifetime; fixed or per-video random colours.
- square: `--nsq` checkered squares of side `--side` moving together on a flat background, or on
  per-frame random block noise (`--noise-bg AMPLITUDE`).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vjepa_scale.config import load_config
from vjepa_scale.data.clips import normalize_clip
from vjepa_scale.data.synthetic_videos import noisy_square_frames
from vjepa_scale.eval.config import load_eval_config
from vjepa_scale.eval.features import FeatureSet
from vjepa_scale.eval.train_probe import train_probe
from vjepa_scale.data.batch import Batch
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.models import JEPA, make_target_encoder
from vjepa_scale.train.ema import ShardedEMA
from vjepa_scale.train.optim import param_groups
from vjepa_scale.train.schedules import schedule_at
from vjepa_scale.train.step import StepCore, TorchEngine

VEL = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}  # (dy, dx) per label


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", choices=["dots", "square"], default="dots")
    ap.add_argument("--speed", type=float, default=2, help="pixels per frame")
    ap.add_argument("--density", type=float, default=0.08, help="dots: fraction of the frame covered")
    ap.add_argument("--dot", type=int, default=2, help="dots: side in pixels")
    ap.add_argument("--lifetime", type=int, default=0, help="dots: frames before a dot respawns (0: never)")
    ap.add_argument("--fixed-colors", type=int, default=1, help="dots: 1 white on dark, 0 random per video")
    ap.add_argument("--nsq", type=int, default=1, help="square: number of squares")
    ap.add_argument("--side", type=int, default=16, help="square: side in pixels")
    ap.add_argument("--noise-bg", type=float, default=0, help="square: per-frame block-noise amplitude (0: flat)")
    ap.add_argument("--noise-cell", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ema", type=float, nargs=2, default=[0.996, 1.0])
    ap.add_argument("--tspan", type=float, default=1.0, help="temporal_scale of the default masks")
    ap.add_argument("--mtk", type=float, default=1.0, help="max_temporal_keep of the default masks")
    ap.add_argument("--masks", default="", help="YAML list replacing mask.types")
    ap.add_argument("--opts", nargs="*", default=[], help="more config overrides (model.tubelet_size=1, ...)")
    ap.add_argument("--few", type=int, default=0, help="also probe with this many train videos per class")
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--probe-online", action="store_true", help="also probe the online (context) encoder")
    ap.add_argument("--videos", type=int, nargs=2, default=[480, 160], metavar=("TRAIN", "VAL"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the probe results as JSON here")
    return ap.parse_args(argv)


def dots_frames(args, label, frames, size, rng):
    bg, fg = rng.uniform(0, 80, 3), rng.uniform(150, 255, 3)
    if args.fixed_colors:
        bg, fg = np.full(3, 20.0), np.full(3, 230.0)
    n = int(args.density * size * size / args.dot ** 2)
    pos = rng.uniform(0, size, (n, 2))
    age = rng.integers(0, max(1, args.lifetime), n)
    v = np.array(VEL[label], float) * args.speed
    d = np.arange(args.dot)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        img = np.empty((size, size, 3))
        img[:] = bg
        for y, x in np.round(pos).astype(int):
            img[((y + d) % size)[:, None], ((x + d) % size)[None]] = fg
        out[t] = img.astype(np.uint8)
        pos, age = pos + v, age + 1
        if args.lifetime:
            dead = age >= args.lifetime
            pos[dead] = rng.uniform(0, size, (dead.sum(), 2))
            age[dead] = 0
    return out


def square_frames(args, label, frames, size, rng):
    return noisy_square_frames(label, frames, size, rng, side=args.side, speed=args.speed, count=args.nsq,
                               noise=args.noise_bg, cell=args.noise_cell)


def make_set(args, n, seed):
    """(n, 16, 64, 64, 3) uint8 videos and (n,) labels cycling through the 4 directions."""
    rng = np.random.default_rng(seed)
    gen = square_frames if args.pattern == "square" else dots_frames
    return np.stack([gen(args, i % 4, 16, 64, rng) for i in range(n)]), np.arange(n) % 4


def clip(x_THWC, start, flip=False):
    """8 frames at stride 2 from `start`, whole frame, normalized, (C, T, H, W)."""
    _, H, W, _ = x_THWC.shape
    return normalize_clip(torch.from_numpy(x_THWC[start:start + 16:2]), (0, 0, H, W), flip, H)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    Xtr, ytr = make_set(args, args.videos[0], 0)
    Xva, yva = make_set(args, args.videos[1], 1)
    masks = (f"mask.types=[{{num_blocks: 4, spatial_scale: [0.15, 0.15], temporal_scale: [{args.tspan}, {args.tspan}], "
             f"aspect_ratio: [0.75, 1.5], max_temporal_keep: {args.mtk}}}, {{num_blocks: 1, spatial_scale: [0.5, 0.5], "
             f"temporal_scale: [{args.tspan}, {args.tspan}], aspect_ratio: [0.75, 1.5], max_temporal_keep: {args.mtk}}}]")
    overrides = ["data.backend=synthetic", f"data.global_batch_size={args.batch}", f"optim.lr={args.lr}",
                 f"optim.iterations={args.steps}", f"optim.warmup={max(1, args.steps // 10)}",
                 f"optim.ema=[{args.ema[0]},{args.ema[1]}]", masks] + args.opts
    if args.masks:
        overrides.append(f"mask.types={args.masks}")
    cfg = load_config("experiment_motion", overrides)
    pcfg = load_eval_config("probe_motion", [], validate=False)
    results = {"args": vars(args), "evals": []}

    def features(enc, X, y):
        enc.eval()
        with torch.no_grad():
            f = torch.cat([enc(torch.stack([clip(x, 0) for x in X[a:a + 32]])) for a in range(0, len(X), 32)])
        return FeatureSet(f[:, None], torch.from_numpy(y).long(), torch.arange(len(y)))

    def probe(enc, tag, step):
        tr, va = features(enc, Xtr, ytr), features(enc, Xva, yva)
        res = {}
        for name, per_class in [("full", None), ("few", args.few)] if args.few else [("full", None)]:
            t = tr
            if per_class:
                idx = torch.cat([torch.nonzero(tr.labels_M == c)[:per_class, 0] for c in range(4)])
                t = FeatureSet(tr.feats_MVND[idx], tr.labels_M[idx], idx)
            res[name] = [train_probe(t, va, pcfg.probe, pcfg.optim, 4, cfg.model.num_heads, s, torch.device("cpu"),
                                     progress=False)["val_top1"] for s in (0, 1)]
        print(f"[{tag}] probe {res}", flush=True)
        results["evals"].append({"encoder": tag, "step": step, **res})

    torch.manual_seed(0)
    jepa = JEPA(cfg)
    target = make_target_encoder(jepa.encoder)
    probe(target, "random", 0)
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    opt = torch.optim.AdamW(param_groups(jepa), lr=args.lr)
    ema = ShardedEMA(jepa.encoder, target, {n: p.detach().clone() for n, p in target.named_parameters()}, 0, 1)
    # the trainer's step core on a plain module (this batch's own per-type means: one process)
    core = StepCore(TorchEngine(jepa, opt, cfg.optim.grad_clip), target, ema, torch.device("cpu"),
                    global_norm=False)
    rng = np.random.default_rng(5)
    t0 = time.time()
    for step in range(args.steps):
        s = schedule_at(cfg.optim, step)
        for g in opt.param_groups:
            g["lr"], g["weight_decay"] = s.lr, s.weight_decay * g["wd_scale"]
        ids = rng.integers(0, len(Xtr), args.batch)
        v = torch.stack([clip(Xtr[i], int(rng.integers(0, 2)), bool(rng.integers(0, 2))) for i in ids])
        batch = Batch(v, torch.from_numpy(ytr[ids]).long(), masker(args.batch, step, 0), step, ids.tolist())
        loss = core.train_step([batch], s.momentum, step)
        if (step + 1) % 25 == 0:
            print(f"step {step + 1} loss {loss.item():.4f} {(time.time() - t0) / (step + 1):.3f}s/step", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            probe(target, "pretrained", step + 1)
            if args.probe_online:
                probe(jepa.encoder, "online", step + 1)
                jepa.train()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
