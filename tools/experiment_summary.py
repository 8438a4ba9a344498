#!/usr/bin/env python
"""Collect the motion experiment's numbers into docs/results/ (JSON, and a loss-curve PNG when
matplotlib is installed).

    python tools/experiment_summary.py --pretrain RUN_DIR --probe PRETRAINED_RESULT.json \
        --baseline RANDOM_RESULT.json --out docs/results [--name motion]

Writes OUT/<name>_pretrain_loss.json (the logged loss curve), OUT/<name>_probe_pretrained.json and
OUT/<name>_probe_random.json (the probe results as written by tools/eval_probe.py),
OUT/<name>_summary.json (the comparison) and OUT/<name>_loss.png. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def load_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (is --pretrain a training run dir?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def train_seconds(rows: list[dict]) -> float:
    """Time spent in training steps: each logged mean step time times the steps it covers."""
    total, prev = 0.0, 0
    for r in rows:
        total += r.get("step_time", 0.0) * (r["step"] - prev)
        prev = r["step"]
    return total


def plot_loss(rows: list[dict], out_png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("JEPA loss (L1, target features)")
    ax.set_title("Pretraining loss, synthetic motion set (CPU, 2 ranks ZeRO-3)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain", required=True, type=Path)
    ap.add_argument("--probe", required=True, type=Path)
    ap.add_argument("--baseline", required=True, type=Path)
    ap.add_argument("--out", default=Path("docs/results"), type=Path)
    ap.add_argument("--name", default="motion")
    args = ap.parse_args(argv)

    rows = load_metrics(args.pretrain)
    pre = json.loads(args.probe.read_text())
    rnd = json.loads(args.baseline.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    curve = [{k: r[k] for k in ("step", "loss", "lr", "ema_momentum", "step_time") if k in r} for r in rows]
    (args.out / f"{args.name}_pretrain_loss.json").write_text(json.dumps(curve, indent=1))
    shutil.copyfile(args.probe, args.out / f"{args.name}_probe_pretrained.json")
    shutil.copyfile(args.baseline, args.out / f"{args.name}_probe_random.json")
    gap = pre["val_top1_mean"] - rnd["val_top1_mean"]
    summary = {
        "pretrain_steps": rows[-1]["step"] if rows else None,
        "pretrain_loss_first": rows[0]["loss"] if rows else None,
        "pretrain_loss_last": rows[-1]["loss"] if rows else None,
        "pretrain_seconds": round(train_seconds(rows), 1),
        "pretrained": {"encoder": pre["encoder"], "val_top1_mean": pre["val_top1_mean"],
                       "val_top1_std": pre["val_top1_std"], "val_top1_per_seed": pre["val_top1_per_seed"]},
        "random_init": {"encoder": rnd["encoder"], "val_top1_mean": rnd["val_top1_mean"],
                        "val_top1_std": rnd["val_top1_std"], "val_top1_per_seed": rnd["val_top1_per_seed"]},
        "gap_points": gap,
        "num_val_videos": pre["num_val_videos"],
        "num_classes": pre["num_classes"],
        "chance_top1": 100.0 / pre["num_classes"],
        "meets_10_point_goal": gap >= 10.0,
    }
    (args.out / f"{args.name}_summary.json").write_text(json.dumps(summary, indent=1))
    png = plot_loss(rows, args.out / f"{args.name}_loss.png")

    def seeds(r):
        return ", ".join(f"{v:.1f}" for v in r["val_top1_per_seed"].values())

    print("| encoder | val top-1 mean ± std (3 probe seeds) | per seed |")
    print("|---|---|---|")
    print(f"| pretrained (EMA target, step {pre['encoder_step']}) | {pre['val_top1_mean']:.1f} ± "
          f"{pre['val_top1_std']:.1f} | {seeds(pre)} |")
    print(f"| random init | {rnd['val_top1_mean']:.1f} ± {rnd['val_top1_std']:.1f} | {seeds(rnd)} |")
    print(f"\ngap: {gap:+.1f} points (goal >= 10); chance {100.0 / pre['num_classes']:.1f}")
    print(f"wrote {args.out}/{args.name}_*.json" + (f" and {args.name}_loss.png" if png else " (no matplotlib: no PNG)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
