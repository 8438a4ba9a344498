#!/usr/bin/env python
"""Collect the motion experiment's numbers into docs/results/ (JSON, and a loss-curve PNG when
matplotlib is installed).

    python tools/experiment_summary.py --pretrain RUN_DIR --out docs/results [--name motion] \
        --pair full PRETRAINED/result.json RANDOM/result.json [--pair few ... ...]

Writes OUT/<name>_pretrain_loss.json (the logged loss curve), OUT/<name>_<protocol>_pretrained.json
and OUT/<name>_<protocol>_random.json (probe results as written by tools/eval_probe.py),
OUT/<name>_summary.json (the comparison) and OUT/<name>_loss.png. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def load_metrics(run_dir: Path) -> list[dict]:
    """The logged training records (those with a loss) of a run's metrics.jsonl."""
    from vjepa_scale.train.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (is --pretrain a training run dir?)")
    return [r for r in read_metrics(run_dir) if "loss" in r]


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--pretrain", required=True, type=Path, metavar="RUN_DIR",
                    help="the pretraining run folder (its metrics.jsonl gives the loss curve and step times)")
    ap.add_argument("--pair", nargs=3, action="append", required=True, metavar=("PROTOCOL", "PRETRAINED", "RANDOM"),
                    help="a probe protocol name and the two result.json files (pretrained, random init)")
    ap.add_argument("--out", default=Path("docs/results"), type=Path,
                    help="folder for the JSON files and the loss-curve PNG (default: docs/results)")
    ap.add_argument("--name", default="motion",
                    help="prefix of the files written: NAME_summary.json, NAME_<protocol>_*.json, ... "
                         "(default: motion)")
    args = ap.parse_args(argv)

    results = {}
    for proto, pre_path, rnd_path in args.pair:
        pre, rnd = json.loads(Path(pre_path).read_text()), json.loads(Path(rnd_path).read_text())
        if pre.get("model") != rnd.get("model"):  # a gap between two architectures measures nothing
            print(f"error: --pair {proto}: {pre_path} probed model {pre.get('model')}, {rnd_path} model "
                  f"{rnd.get('model')}: a baseline must have the pretrained encoder's architecture", file=sys.stderr)
            return 2
        results[proto] = pre, rnd
    rows = load_metrics(args.pretrain)
    args.out.mkdir(parents=True, exist_ok=True)
    curve = [{k: r[k] for k in ("step", "loss", "lr", "ema_momentum", "step_time") if k in r} for r in rows]
    (args.out / f"{args.name}_pretrain_loss.json").write_text(json.dumps(curve, indent=1))
    summary = {
        "pretrain_run": str(args.pretrain),
        "pretrain_steps": rows[-1]["step"] if rows else None,
        "pretrain_loss_first_logged": rows[0]["loss"] if rows else None,
        "pretrain_loss_min": min(r["loss"] for r in rows) if rows else None,
        "pretrain_loss_last": rows[-1]["loss"] if rows else None,
        "pretrain_step_seconds_total": round(train_seconds(rows), 1),
        "protocols": {},
    }
    table = ["| probe protocol | train videos | pretrained (EMA target) | random init | gap (points) |",
             "|---|---|---|---|---|"]
    for proto, pre_path, rnd_path in args.pair:
        pre, rnd = results[proto]
        shutil.copyfile(pre_path, args.out / f"{args.name}_{proto}_pretrained.json")
        shutil.copyfile(rnd_path, args.out / f"{args.name}_{proto}_random.json")
        gap = pre["val_top1_mean"] - rnd["val_top1_mean"]
        summary["protocols"][proto] = {
            "num_train_videos": pre["num_train_videos"], "num_val_videos": pre["num_val_videos"],
            "chance_top1": 100.0 / pre["num_classes"],
            "pretrained": _brief(pre), "random_init": _brief(rnd),
            "gap_points": gap, "meets_10_point_goal": gap >= 10.0}
        table.append(f"| {proto} | {pre['num_train_videos']} | {_fmt(pre)} | {_fmt(rnd)} | {gap:+.1f} |")
    (args.out / f"{args.name}_summary.json").write_text(json.dumps(summary, indent=1))
    png = plot_loss(rows, args.out / f"{args.name}_loss.png")
    print("\n".join(table))
    print(f"\nwrote {args.out}/{args.name}_*.json" + (f" and {args.name}_loss.png" if png else " (no matplotlib: no PNG)"))
    return 0


def _brief(r: dict) -> dict:
    return {k: r[k] for k in ("encoder", "encoder_step", "val_top1_mean", "val_top1_std", "val_top1_per_seed",
                              "val_feature_effective_rank", "val_feature_top_pc_share") if k in r}


def _fmt(r: dict) -> str:
    seeds = ", ".join(f"{v:.1f}" for v in r["val_top1_per_seed"].values())
    return f"{r['val_top1_mean']:.1f} ± {r['val_top1_std']:.1f} ({seeds})"


if __name__ == "__main__":
    sys.exit(main())
