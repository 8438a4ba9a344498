#!/usr/bin/env python
"""Convert a training checkpoint (ZeRO-1/2/3, any number of ranks) or an official V-JEPA 1 / V-JEPA 2
checkpoint file into a Hugging Face model folder.

    python tools/convert_to_hf.py SOURCE OUT_DIR [--which target|online] [--include-predictor] [--config CFG]

SOURCE is a run directory or its `checkpoints` folder (the newest undamaged checkpoint is used: damaged
newer ones are passed over with a warning), its `checkpoints/latest` file or one `checkpoints/step_*`
directory (a damaged one is an error naming the file), or an official `torch.save` file (e.g.
vitl16.pth.tar, vitg.pt). Needs the `hf` extra (and `train` for a training run). Consolidation runs on
the CPU: no GPU, no distributed launch. The EMA target encoder is exported by default (`--which
online` for the trained encoder). An official file's architecture (head counts included, which the
weights do not show) comes from the table of official releases it matches by shapes, or from
`--config` (a recipe, for a file of no official release); a config that disagrees with the release is
refused. RoPE models load with `transformers.VJEPA2Model.from_pretrained(OUT_DIR)`; sin-cos models
with `AutoModel.from_pretrained(OUT_DIR, trust_remote_code=True)`; `AutoVideoProcessor.from_pretrained(
OUT_DIR)` preprocesses clips as the run did. Weights are sharded above --max-shard-size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                    help="run directory, checkpoint directory, or official V-JEPA checkpoint file")
    ap.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must be empty unless --overwrite)")
    ap.add_argument("--which", choices=["target", "online"], default="target",
                    help="encoder to export: the EMA target (default) or the online encoder")
    ap.add_argument("--include-predictor", action="store_true", help="also export the predictor")
    ap.add_argument("--config", help="official files only: the recipe the file was trained with (default: the "
                                     "official release its shapes match)")
    ap.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size (default 5GB)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="dtype of the weights")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    return ap.parse_args(argv)


def _official(args: argparse.Namespace) -> dict:
    """An official file as load_consolidated's dict (config, step, encoder, predictor)."""
    from vjepa_scale.config import load_config
    from vjepa_scale.config import resolve_vit_size
    from vjepa_scale.weights import load_init_state, official_config

    path = Path(args.checkpoint)
    cfg = load_config(args.config) if args.config else official_config(path)
    state = load_init_state(path, cfg)
    # load_init_state's "encoder" falls back to the target encoder (for train.init_from): that is no online one
    online = state["encoder"] if state["encoder"] is not state["target_encoder"] else None
    encoder = state["target_encoder"] if args.which == "target" else online
    if encoder is None:
        raise ValueError(f"{path} holds no {args.which} encoder"
                         + (" (only the target encoder: drop --which online)" if args.which == "online" else ""))
    d, m = resolve_vit_size(cfg.model), cfg.model
    print(f"{path}: {'--config ' + args.config if args.config else 'official release'}: encoder "
          f"{d.width}/{d.depth}, {d.num_heads} heads; predictor {m.pred_width}/{m.pred_depth}, {m.pred_num_heads} "
          f"heads; {m.pos_embed} positions")
    return {"config": cfg, "step": None, "encoder": encoder, "predictor": state["predictor"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from vjepa_scale.extras import MissingExtraError, require_extra
    from vjepa_scale.hf import check_export_dir, export_to_hf
    from vjepa_scale.weights import CheckpointMismatchError, load_consolidated
    from vjepa_scale.weights.run import is_latest_marker

    official = Path(args.checkpoint).is_file() and not is_latest_marker(Path(args.checkpoint))
    if args.config and not official:
        print("error: --config is for official checkpoint files; a run carries its own config", file=sys.stderr)
        return 2
    try:  # before the consolidation, which can take minutes
        for module in ("transformers", "huggingface_hub"):
            require_extra(module, "hf", "a Hugging Face export")
        check_export_dir(args.out_dir, args.overwrite)
    except (FileExistsError, MissingExtraError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        ckpt = _official(args) if official else load_consolidated(args.checkpoint, which=args.which)
    except (FileNotFoundError, CheckpointMismatchError, ValueError, MissingExtraError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in ckpt.get("notes", []):  # damaged newer checkpoints passed over
        print(note, file=sys.stderr)
    if args.include_predictor and ckpt["predictor"] is None:
        print(f"error: {args.checkpoint} holds no predictor", file=sys.stderr)
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
    at = f" at step {ckpt['step']}" if ckpt["step"] is not None else ""
    print(f"wrote {out}: {args.which} encoder{at}"
          f"{' + predictor' if args.include_predictor else ''}; load with {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
