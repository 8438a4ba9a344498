#!/usr/bin/env python
"""Sweep the launch parameters of the Triton gather and EMA kernels on a GPU.

    python tools/tune_kernels.py --out DIR      # tune_<gpu>.json + .md; about a minute on an H100

Uses the inputs of the `gather` and `ema` bench suites (real ViT-H@384 masks, B=10, D=1280, bf16;
the ViT-H/16 parameter list) and times each op through its public function with every setting
of its launch settings (`GatherLaunch(tile, max_block_d, warps8_from)`, `EmaLaunch(chunk, block,
num_warps)`, passed as the `launch` argument). GB/s counts the same useful bytes as the bench.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from vjepa_scale.bench.common import copy_gbps, device_name, time_ms
from vjepa_scale.bench.ema import MOMENTUM, param_shapes
from vjepa_scale.bench.gather import GRID
from vjepa_scale.config import MaskConfig
from vjepa_scale.kernels import EmaLaunch, GatherLaunch, ema_update_, layernorm_gather, masked_gather
from vjepa_scale.masks import MultiBlockMasker

GATHER_GRID = dict(tile=(4096, 8192, 16384), max_block_d=(256, 128, 512), warps8_from=(1 << 30, 8192, 0))
EMA_GRID = dict(chunk=(8192, 16384, 32768), block=(1024, 2048, 4096), warps=(4, 8))


def gather_ops(dev: str, B: int, D: int) -> dict:
    """name -> (fn(launch), useful bytes) for the three gather ops at the bench's sizes."""
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    masks = MultiBlockMasker(MaskConfig(), GRID)(B, step=0)
    N, ctx, tgt = masks.num_tokens, masks.ctx_idx.to(dev), masks.tgt_idx.to(dev)
    x = torch.randn(B, N, D, device=dev, dtype=dt)
    pos = torch.randn(N, D, device=dev, dtype=dt)
    xg = x.detach().requires_grad_()
    gy = torch.randn(ctx.numel(), D, device=dev, dtype=dt)
    T, Tt, es = ctx.numel(), tgt.numel(), x.element_size()

    def bwd(launch):
        """The backward of a forward run with `launch` (the graph keeps the settings it was built with)."""
        out = masked_gather(xg, ctx, pos, backend="triton", launch=launch)
        return lambda: torch.autograd.grad(out, xg, gy, retain_graph=True)

    return {
        "gather fwd": (lambda launch: (lambda: masked_gather(x, ctx, pos, backend="triton", launch=launch)),
                       2 * T * D * es + T * ctx.element_size() + N * D * es),
        "gather bwd": (bwd, T * D * es + B * N * D * es + T * ctx.element_size()),
        "layernorm gather fwd": (lambda launch: (lambda: layernorm_gather(x, tgt, 1e-5, backend="triton",
                                                                          launch=launch)),
                                 2 * Tt * D * es + Tt * tgt.element_size()),
    }


def ema_op(dev: str, size: str) -> tuple:
    """(fn(launch), useful bytes) of the EMA update over a model's parameter list."""
    numels = [s.numel() for s in param_shapes(size)]
    S = [torch.randn(n, device=dev) for n in numels]
    M = [torch.randn(n, device=dev) for n in numels]
    T = [torch.empty(n, device=dev, dtype=torch.bfloat16) for n in numels]
    return (lambda launch: (lambda: ema_update_(S, M, T, MOMENTUM, backend="triton", launch=launch))), sum(numels) * 14


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, e.g. on CPU under TRITON_INTERPRET=1)")
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    copy = copy_gbps(dev)
    rows = []

    def record(op, nbytes, fn, **knobs):
        ms = time_ms(fn, dev, iters=args.iters)
        gbps = nbytes / (ms * 1e-3) / 1e9
        rows.append({"op": op, **knobs, "time_ms": ms, "gbps": gbps, "copy_frac": gbps / copy})
        print(f"{op:22s} {knobs} {ms:.3f} ms {100 * gbps / copy:.1f}% of copy", flush=True)

    ops = gather_ops(dev, *((2, 64) if args.quick else (10, 1280)))
    for tile, bd, w8 in itertools.product(*GATHER_GRID.values()):
        launch = GatherLaunch(tile=tile, max_block_d=bd, warps8_from=w8)
        for op, (make, nbytes) in ops.items():
            if op == "layernorm gather fwd" and bd != GATHER_GRID["max_block_d"][0]:
                continue  # full-row kernel: the column tile does not apply
            with torch.no_grad() if "fwd" in op else torch.enable_grad():
                record(op, nbytes, make(launch), tile=tile, max_block_d=bd, warps8_from=w8)

    make, nbytes = ema_op(dev, "tiny" if args.quick else "huge")
    for chunk, block, warps in itertools.product(*EMA_GRID.values()):
        if block > chunk:
            continue
        record("ema", nbytes, make(EmaLaunch(chunk=chunk, block=block, num_warps=warps)),
               chunk=chunk, block=block, warps=warps)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device_name": device_name(dev), "copy_gbps": copy, "torch": torch.__version__}
    (out / f"tune_{dev}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Kernel launch sweep on {meta['device_name']} (copy {copy:.0f} GB/s)", ""]
    for op in dict.fromkeys(r["op"] for r in rows):
        best = sorted((r for r in rows if r["op"] == op), key=lambda r: r["time_ms"])
        keys = [k for k in best[0] if k not in ("op", "time_ms", "gbps", "copy_frac")]
        lines += [f"## {op}", "", "| " + " | ".join(keys) + " | time (ms) | % copy BW |",
                  "|" + "---|" * (len(keys) + 2)]
        lines += ["| " + " | ".join(str(r[k]) for k in keys) + f" | {r['time_ms']:.3f} | {100 * r['copy_frac']:.1f}% |"
                  for r in best]
        lines.append("")
    (out / f"tune_{dev}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
