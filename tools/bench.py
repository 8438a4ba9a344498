#!/usr/bin/env python
"""Kernel, attention, data and training-step microbenchmarks.

    python tools/bench.py                          # every suite on CUDA if present, else CPU
    python tools/bench.py --device cpu             # small sizes (about a minute)
    python tools/bench.py --suite gather ema --out results/
    python tools/bench.py --suite step --config vith384 --batch-size 8
    python tools/bench.py --suite step --opt model.activation_checkpointing=false --profile
    python tools/bench.py --suite step --step-rows engine reference   # the step rows: engine torch reference
    python tools/bench.py --suite step --config vjepa2_vitg_cool384 --batch-size 6   # V-JEPA 2 cooldown (GPU)
    python tools/bench.py --suite step --config vjepa2_vitl --phase 1                 # a phase's clip shape

Writes bench_<device>.json (metadata + one row per measurement) and bench_<device>.md (a table per
suite) under --out, and prints the tables. Exits 1 if any suite failed (the others still run).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import traceback
from pathlib import Path

# OpenMP's wait policy is read once, when torch loads libgomp, so it is set before `import torch`. By
# default libgomp's idle threads spin (300,000 rounds) at every parallel region's end, unless the process
# runs more OpenMP threads than it has cores: then it spins 100 rounds. The step suite's engine row
# crosses that line mid-run (gloo's worker threads start their own OpenMP team in the collectives), so
# rows timed before it spun at full length and rows after it did not: on a loaded 2-core machine the
# torch and reference rows took 10-20x the CPU time when they ran first. PASSIVE (idle threads sleep)
# gives every row the same policy whatever the order, about the one training runs under (tools/train.py
# builds its DeepSpeed engine, and so the gloo team, before its first step). Only when run as a script:
# imported (tests, tools), torch may already be loaded, and the variable would leak into later children.
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from vjepa_scale.bench import SUITES, run_suite  # noqa: E402
from vjepa_scale.bench.common import copy_gbps, device_name  # noqa: E402

STD_COLS = [("case", "case"), ("impl", "impl"), ("time_ms", "time (ms)"), ("gbps", "GB/s"),
            ("copy_frac", "% copy BW"), ("speedup", "speed-up")]


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "copy_frac" or key == "mfu" or key.endswith("_share"):
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown(meta: dict, rows: list[dict]) -> str:
    out = [f"# Benchmarks on {meta['device_name']} ({meta['device']})", "",
           f"{meta['time']} - torch {meta['torch']}, triton {meta['triton']}; measured copy bandwidth "
           f"{meta['copy_gbps']:.1f} GB/s; sizes: {'small (quick)' if meta['quick'] else 'full'}", ""]
    for suite in dict.fromkeys(r["suite"] for r in rows):
        srows = [r for r in rows if r["suite"] == suite]
        extra = [k for k in dict.fromkeys(k for r in srows for k in r)
                 if k not in dict(STD_COLS) and k != "suite"]
        cols = [(k, h) for k, h in STD_COLS if any(k in r for r in srows)] + [(k, k) for k in extra]
        out += [f"## {suite}", "", "| " + " | ".join(h for _, h in cols) + " |",
                "|" + "|".join("---" for _ in cols) + "|"]
        out += ["| " + " | ".join(_fmt(k, r.get(k)) for k, _ in cols) + " |" for r in srows]
        out.append("")
    return "\n".join(out)


def _count(minimum: int):
    """argparse type: an integer >= `minimum` (the option is refused, named, before any suite runs)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    return parse


def main(argv: list[str] | None = None) -> int:
    from vjepa_scale.distributed import quiet_deprecated_collectives

    quiet_deprecated_collectives()  # the step suite's DeepSpeed engine row: ZeRO's per-step FutureWarnings
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--suite", nargs="+", default=None, metavar="NAME",
                    help=f"suites to run (default: all of {', '.join(SUITES)})")
    ap.add_argument("--out", default="bench_results", help="output folder (default: bench_results/)")
    ap.add_argument("--quick", action="store_true", help="small sizes (the default on CPU)")
    ap.add_argument("--config", default=None, help="step suite: config name or path (default: cpu_demo on CPU, "
                    "vith384 on CUDA)")
    ap.add_argument("--batch-size", type=_count(1), default=None, help="step suite: clips per step")
    ap.add_argument("--phase", type=_count(0), default=None, help="step suite: the clip shape of this phase of a "
                    "phased recipe (default 0)")
    ap.add_argument("--steps", type=_count(1), default=None, help="step suite: timed steps")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="step suite: config override (repeatable), e.g. model.activation_checkpointing=false")
    ap.add_argument("--step-rows", nargs="+", default=None, metavar="ROW",
                    help="step suite: rows to run (default all: engine torch reference)")
    ap.add_argument("--profile", action="store_true",
                    help="step suite: also profile two steps; writes step_profile_<device>.txt under --out")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available (use --device cpu)")
    suites = args.suite or list(SUITES)
    for s in suites:
        if s not in SUITES:
            ap.error(f"--suite: unknown suite '{s}' (choose from {', '.join(SUITES)})")
    if (args.opt or args.profile) and "step" not in suites:
        ap.error("--opt and --profile apply to the step suite; add it with --suite step")
    if args.config or args.opt or args.phase:  # a bad recipe, key, value or phase is refused before anything runs
        from vjepa_scale.bench.step import DEFAULTS
        from vjepa_scale.config import ConfigError, load_config, resolve_config_path

        name = args.config or DEFAULTS[args.device][0]  # the config the step suite will load
        for flag, opts in [("--config", [])] + ([("--opt", args.opt)] if args.opt else []):
            try:
                cfg = load_config(resolve_config_path(name), ["data.backend=synthetic", *opts])
            except (ConfigError, ValueError, FileNotFoundError) as e:
                ap.error(f"{flag}: {e}")
        if args.phase is not None and args.phase >= max(1, len(cfg.phases)):
            ap.error(f"--phase {args.phase}: {name} has {max(1, len(cfg.phases))} phase(s)")
    quick = args.quick or args.device == "cpu"
    device = args.device
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    meta = {"device": device, "device_name": device_name(device), "quick": quick, "torch": torch.__version__,
            "triton": triton_version, "copy_gbps": copy_gbps(device), "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "argv": sys.argv[1:] if argv is None else argv}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write(done: list[dict]) -> None:
        """The JSON + markdown of the rows so far (rewritten after every row: a run killed at a time
        limit keeps what it measured)."""
        (out / f"bench_{device}.json").write_text(json.dumps({"meta": meta, "rows": done}, indent=1, default=str))
        (out / f"bench_{device}.md").write_text(markdown(meta, done) + "\n")

    rows, failed = [], []
    options = {"config": args.config, "batch_size": args.batch_size, "steps": args.steps, "opts": args.opt or None,
               "rows": args.step_rows, "profile_dir": args.out if args.profile else None, "phase": args.phase}
    for s in suites:
        print(f"[bench] {s} on {device} ...", flush=True)
        partial: list[dict] = []
        options["on_row"] = lambda row, s=s: (partial.append(dict(row, suite=s)), write(rows + partial))
        try:
            rows += run_suite(s, device, quick, **options)
            if any(r.get("case") == "FAILED" for r in rows if r["suite"] == s):
                failed.append(s)
        except ModuleNotFoundError as e:
            if e.name != SUITES[s]:
                raise
            print(f"[bench] {s}: suite module {SUITES[s]} is not installed; skipped", flush=True)
        except Exception as e:  # keep going: one broken suite must not hide the others' numbers
            traceback.print_exc()
            failed.append(s)
            rows += partial
            rows.append({"suite": s, "case": "FAILED", "impl": "-", "error": f"{type(e).__name__}: {e}"[:300]})
        write(rows)
    print(markdown(meta, rows))
    print(f"[bench] wrote {out / f'bench_{device}.json'} and {out / f'bench_{device}.md'}", flush=True)
    if failed:
        print(f"[bench] failed suites: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    code = main()
    from vjepa_scale.distributed import end_process

    end_process(code)  # the engine row's 1-rank group: no interpreter finalization, which can abort it
