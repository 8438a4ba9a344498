#!/usr/bin/env python
"""Frozen evaluation with an attentive probe.

    python tools/eval_probe.py --config probe_motion.yaml --checkpoint runs/motion   # EMA target
    python tools/eval_probe.py --config probe_motion.yaml --checkpoint runs/motion --which online
    python tools/eval_probe.py --config probe_motion.yaml --hf exports/motion_hf            # HF export
    python tools/eval_probe.py --config probe_motion.yaml --random-init --checkpoint runs/motion  # baseline
    torchrun --nproc_per_node 8 tools/eval_probe.py --config ...                     # distributed

`section.key=value` arguments (anywhere on the line) or `--opt section.key=value` (repeatable, as in
tools/train.py) override the YAML (sections: encoder, model, data, probe, optim, run).
Writes `result.json` and tensorboard logs (`tb/`) to the output folder: `--output DIR` (or a
`run.output_dir` override) as given; otherwise `run.output_dir` with a suffix naming the encoder
source, so that the examples above do not overwrite each other: none for a checkpoint's EMA target,
`_online`, `_hf`, `_random_init` (e.g. runs/experiment_motion/probe_random_init). A folder holding
another encoder's result.json is refused before any work (`--overwrite` replaces it); the same
encoder's (any step of one run) is replaced, its tensorboard curves too.

SIGTERM / SIGUSR1 (SLURM's `--signal=USR1@120`, scancel) stop every rank after the same probe step; the
probe's state is saved in the output folder (`probe_state.pt`, also after every epoch) and the exit
status is 75: the same command continues from there (`vjepa_scale.eval.resume`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from vjepa_scale.config import ConfigError


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(options, the config overrides in the order they apply: the given ones (bare or --opt, in
    command-line order), then the options' own)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="eval YAML (a bare name resolves into configs/)")
    ap.add_argument("--checkpoint", help="our run dir (latest checkpoint) or one checkpoint dir")
    ap.add_argument("--hf", help="Hugging Face export folder (architecture from its config.json)")
    ap.add_argument("--random-init", action="store_true",
                    help="baseline: random weights, architecture from model: or --checkpoint")
    ap.add_argument("--which", choices=["target", "online"], help="encoder of a checkpoint (default target/EMA)")
    ap.add_argument("--output", help="output folder, as given (run.output_dir; without it: run.output_dir "
                    "with a suffix naming the encoder source)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an output folder's result of another encoder (run.overwrite)")
    ap.add_argument("--seeds", help="comma-separated probe seeds, each once (run.seeds)")
    ap.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    ap.add_argument("--opt", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value (YAML syntax), repeatable; same as a bare section.key=value")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    args = ap.parse_intermixed_args(argv)  # overrides may stand between options

    if args.overrides and args.opt:  # their relative order is lost in parsing: a later one might not win
        ap.error("give config overrides either bare (section.key=value) or with --opt, not both")
    overrides = [*args.overrides, *args.opt]
    # paths are quoted (JSON strings are YAML): '#', a date or `yes` in a path stays part of it
    if args.checkpoint or args.hf or args.random_init:  # the command line picks the one source
        overrides += ["encoder.checkpoint=null", "encoder.hf_path=null", "encoder.random_init=false"]
    if args.checkpoint:
        overrides.append(f"encoder.checkpoint={json.dumps(args.checkpoint)}")
    if args.hf:
        overrides.append(f"encoder.hf_path={json.dumps(args.hf)}")
    if args.random_init:
        overrides.append("encoder.random_init=true")
    if args.which:
        overrides.append(f"encoder.which={args.which}")
    if args.output:
        overrides.append(f"run.output_dir={json.dumps(args.output)}")
    if args.seeds:
        overrides.append(f"run.seeds=[{args.seeds}]")
    if args.overwrite:
        overrides.append("run.overwrite=true")
    return args, overrides


def source_suffix(cfg) -> str:
    """The output folder's suffix for the encoder source of `cfg` (an `EvalConfig`)."""
    e = cfg.encoder
    if e.random_init:
        return "_random_init"
    if e.hf_path:
        return "_hf"
    return "_online" if e.which == "online" else ""


def output_given(overrides: list[str]) -> bool:
    """Whether the command line sets the output folder (`--output`, `run.output_dir=`, or a `run=` mapping
    naming output_dir: a mapping merges into the recipe's run section)."""
    import yaml

    for o in overrides:
        key, _, value = o.partition("=")
        if key.strip() == "run.output_dir":
            return True
        if key.strip() == "run":
            try:
                run = yaml.safe_load(value)
            except yaml.YAMLError:  # refused with its reason when the config is built
                continue
            if isinstance(run, dict) and "output_dir" in run:
                return True
    return False


def eval_config(args: argparse.Namespace, overrides: list[str]):
    """The `EvalConfig` of a command line (`parse_args`' result), its output folder decided: as given
    (`--output`, `run.output_dir=`), else `run.output_dir` + the encoder source's suffix."""
    from vjepa_scale.eval.config import load_eval_config

    cfg = load_eval_config(args.config, overrides)
    if not output_given(overrides):
        cfg.run.output_dir = cfg.run.output_dir.rstrip("/") + source_suffix(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)

    from vjepa_scale.data.skips import NoReadableVideosError
    from vjepa_scale.eval.run import run_eval
    from vjepa_scale.extras import MissingExtraError
    from vjepa_scale.weights import CheckpointMismatchError

    from vjepa_scale.train import preempt

    try:
        cfg = eval_config(args, overrides)
        result = run_eval(cfg)
    except (ConfigError, CheckpointMismatchError, NoReadableVideosError, MissingExtraError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except preempt.Preempted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"eval {e}; run the same command again to continue", file=sys.stderr, flush=True)
        return preempt.EXIT_PREEMPTED
    if os.environ.get("RANK", "0") != "0":
        return 0
    summary = {k: result[k] for k in ("encoder", "val_top1_mean", "val_top1_std", "val_top1_per_seed")}
    print(json.dumps(summary, indent=1))
    print(f"wrote {cfg.run.output_dir}/result.json")
    return 0


if __name__ == "__main__":
    from vjepa_scale.train import preempt

    preempt.prepare_process()  # SIGTERM / SIGUSR1: stop after the current probe step, save, exit 75
    code = main()
    from vjepa_scale.distributed import end_process

    end_process(code)  # no interpreter finalization: it can abort a finished gloo rank
