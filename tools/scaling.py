#!/usr/bin/env python
"""Scaling on paper: bytes each collective moves per optimizer step under ZeRO-1/2/3, and the step time
and MFU they imply at 8, 64 and 256 GPUs (docs/SCALING.md is this tool's output plus its reasoning).

    python tools/scaling.py                                   # vith384, measured H100 step, markdown table
    python tools/scaling.py --config vitl16 --step-ms 400 --batch-size 10 --json out.json

Model of one optimizer step on N ranks with `accum` micro-batches (what DeepSpeed 0.19 does with the
trainer's settings: live-parameter and reuse limits above the model size, so ZeRO-3 gathers each
parameter once per forward and keeps it for the backward):
- ZeRO-3, per micro-batch: all-gather of the online parameters (encoder + predictor), all-gather of
  the target encoder (its own optimizer-less ZeRO-3 engine), reduce-scatter of the gradients.
- ZeRO-2, per micro-batch: all-reduce of the gradients (DeepSpeed 0.19 reduces the whole gradient,
  then keeps its partition); per step: all-gather of the updated parameter partitions. Target replicated.
- ZeRO-1: as ZeRO-2 but the gradient all-reduce runs once per step (gradients accumulate locally).
`logged_bytes` gives the message sizes as DeepSpeed's `comms_logger` reports them (all-gather: the
input shard; reduce-scatter and all-reduce: the full input), which tests/integration/test_comm_bytes.py
checks on 2 and 4 CPU ranks; `wire_bytes` turns them into bytes each rank sends over a ring
(all-gather, reduce-scatter: (N-1)/N x full size; all-reduce: 2 (N-1)/N x full size).
Step time = measured one-GPU micro-batch time x accum + communication time, with communication either
fully exposed (upper bound) or hidden behind compute up to the compute time (lower bound).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

# Effective per-GPU bus bandwidth (GB/s) NCCL reaches on large messages; published link rates:
# NVLink 4 (H100/H200 SXM) 450 GB/s per direction per GPU, NCCL all-reduce bus bandwidth ~360-370 GB/s
# on 8 GPUs; InfiniBand NDR 400 Gb/s = 50 GB/s per GPU (one NIC per GPU), ~40-45 GB/s bus bandwidth
# across nodes. Beyond one node the ring runs at the inter-node rate.
NVLINK_GBPS = 360.0
IB_GBPS = 42.0
GPUS_PER_NODE = 8


def param_counts(cfg) -> tuple[list[int], list[int]]:
    """Element counts of each online parameter (encoder + predictor) and of each target-encoder parameter."""
    from vjepa_scale.train.memory import meta_jepa

    jepa = meta_jepa(cfg)
    return [p.numel() for p in jepa.parameters()], [p.numel() for p in jepa.encoder.parameters()]


def shard(numels: list[int], world: int) -> int:
    """Elements of one rank's ZeRO-3 shards: every parameter padded to a multiple of the world size."""
    return sum(math.ceil(n / world) for n in numels)


def logged_bytes(online: list[int], target: list[int], world: int, stage: int, accum: int = 1,
                 weight_bytes: int = 2, grad_bytes: int = 2) -> dict[str, float]:
    """Per optimizer step, per rank: bytes by collective as DeepSpeed's comms_logger counts them."""
    P = sum(online)
    if stage == 3:
        return {"all_gather_into_tensor": accum * (shard(online, world) + shard(target, world)) * weight_bytes,
                "reduce_scatter_tensor": accum * world * shard(online, world) * grad_bytes}
    if stage in (1, 2):
        reduces = accum if stage == 2 else 1
        # The EMA (train.ema, fragments layout) all-gathers the target values its ranks updated, padded
        # to the largest share: rank 0's partition, all encoder when the encoder fills it (module order).
        return {"all_reduce": reduces * P * grad_bytes, "all_gather_into_tensor": P / world * weight_bytes,
                "ema_target_all_gather": min(sum(target), P / world) * weight_bytes}
    raise ValueError(f"stage must be 1, 2 or 3, got {stage}")


def wire_bytes(logged: dict[str, float], world: int) -> float:
    """Bytes one rank sends per step over a ring for the collectives in `logged`."""
    f = (world - 1) / world
    total = 0.0
    for op, b in logged.items():
        if op in ("all_gather_into_tensor", "ema_target_all_gather"):
            total += f * b * world  # logged: the input shard; the gathered tensor is world x bigger
        elif op == "reduce_scatter_tensor":
            total += f * b
        elif op == "all_reduce":
            total += 2 * f * b
    return total


def bus_gbps(world: int) -> float:
    return NVLINK_GBPS if world <= GPUS_PER_NODE else IB_GBPS


def table(cfg, step_ms: float, batch_size: int, tflop_per_clip: float, peak_tflops: float,
          worlds=(8, 64, 256), stages=(1, 2, 3), accums=(1, 4)) -> list[dict]:
    """Rows: expected step time (exposed / hidden communication) and MFU per (world, stage, accum)."""
    online, target = param_counts(cfg)
    rows = []
    for world in worlds:
        for stage in stages:
            for accum in accums:
                wire = wire_bytes(logged_bytes(online, target, world, stage, accum), world) if world > 1 else 0.0
                comm_ms = wire / (bus_gbps(world) * 1e9) * 1e3
                compute_ms = step_ms * accum
                flops = tflop_per_clip * batch_size * accum * world  # TFLOP per step, all ranks
                exposed, hidden = compute_ms + comm_ms, max(compute_ms, comm_ms)
                rows.append({"gpus": world, "zero": stage, "accum": accum, "global_batch": batch_size * accum * world,
                             "wire_gb_per_rank": wire / 1e9, "comm_ms": comm_ms, "compute_ms": compute_ms,
                             "step_ms_exposed": exposed, "step_ms_hidden": hidden,
                             "mfu_exposed": flops / (world * peak_tflops) / (exposed / 1e3),
                             "mfu_hidden": flops / (world * peak_tflops) / (hidden / 1e3)})
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| GPUs | ZeRO | accum | global batch | GB sent per rank | comm (ms) | compute (ms) | step (ms), exposed / hidden | MFU, exposed / hidden |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['gpus']} | {r['zero']} | {r['accum']} | {r['global_batch']} | {r['wire_gb_per_rank']:.2f} | "
                   f"{r['comm_ms']:.0f} | {r['compute_ms']:.0f} | {r['step_ms_exposed']:.0f} / {r['step_ms_hidden']:.0f} | "
                   f"{100 * r['mfu_exposed']:.1f}% / {100 * r['mfu_hidden']:.1f}% |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--config", default="vith384")
    ap.add_argument("--step-ms", type=float, default=1021.0,
                    help="measured one-GPU micro-batch step (default: H100, vith384, B=10, docs/PERF.md)")
    ap.add_argument("--batch-size", type=int, default=10, help="clips per GPU micro-batch of --step-ms")
    ap.add_argument("--tflop-per-clip", type=float, default=None,
                    help="model TFLOP per clip (default: vjepa_scale.flops on the recipe's mean mask lengths)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100/H200: 989)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    from vjepa_scale.config import load_config
    from vjepa_scale.flops import train_flops
    from vjepa_scale.masks import MultiBlockMasker

    cfg = load_config(args.config, ["data.backend=synthetic"])
    tpc = args.tflop_per_clip
    if tpc is None:
        masks = [MultiBlockMasker(cfg.mask, cfg.grid)(args.batch_size, step=s) for s in range(4)]
        tpc = sum(train_flops(cfg, m)["total"] for m in masks) / (4 * args.batch_size) / 1e12
    rows = table(cfg, args.step_ms, args.batch_size, tpc, args.peak_tflops)
    online, target = param_counts(cfg)
    print(f"{args.config}: {sum(online) / 1e6:.1f}M online parameters, {sum(target) / 1e6:.1f}M target; "
          f"{tpc:.2f} TFLOP per clip; one-GPU micro-batch {args.step_ms:.0f} ms at B={args.batch_size}; "
          f"bus bandwidth {NVLINK_GBPS:.0f} GB/s within a node, {IB_GBPS:.0f} GB/s across nodes\n")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
