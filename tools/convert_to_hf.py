#!/usr/bin/env python
"""Convert a training checkpoint (ZeRO-3, any number of ranks) into a Hugging Face model folder.

    python tools/convert_to_hf.py RUN_OR_CHECKPOINT OUT_DIR [--which target|online] [--include-predictor]

RUN_OR_CHECKPOINT is a run directory (its latest complete checkpoint is used) or one
`checkpoints/step_*` directory. Consolidation runs on the CPU: no GPU, no distributed launch.
The EMA target encoder is exported by default (`--which online` for the trained encoder).
RoPE models load with `transformers.VJEPA2Model.from_pretrained(OUT_DIR)`; sin-cos models with
`AutoModel.from_pretrained(OUT_DIR, trust_remote_code=True)`. Weights are sharded above --max-shard-size.
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run directory or checkpoint directory")
    ap.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must be empty unless --overwrite)")
    ap.add_argument("--which", choices=["target", "online"], default="target",
                    help="encoder to export: the EMA target (default) or the online encoder")
    ap.add_argument("--include-predictor", action="store_true", help="also export the predictor")
    ap.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size (default 5GB)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="dtype of the weights")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from vjepa_scale.hf import export_to_hf
    from vjepa_scale.weights import load_consolidated

    try:
        ckpt = load_consolidated(args.checkpoint, which=args.which)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        out = export_to_hf(ckpt["config"], ckpt["encoder"], args.out_dir,
                           ckpt["predictor"] if args.include_predictor else None, step=ckpt["step"],
                           which=args.which, max_shard_size=args.max_shard_size,
                           dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = "VJEPA2Model" if ckpt["config"].model.pos_embed == "rope" else "AutoModel (trust_remote_code=True)"
    print(f"wrote {out}: {args.which} encoder at step {ckpt['step']}"
          f"{' + predictor' if args.include_predictor else ''}; load with {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
