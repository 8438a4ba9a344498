"""tools/train.py whose data holds one NaN clip batch (test_divergence): a real non-finite step.

    python -m torch.distributed.run ... tests/integration/nan_batch_at_step.py --nan-micro-step 6 --nan-rank 1 --config ...

The micro-batch of micro-step `--nan-micro-step` on rank `--nan-rank` gets an all-NaN video, so that
rank's loss (and every gradient after the reduction) is NaN in that one optimizer step; the other
ranks' data stay finite. All other arguments go to tools/train.py unchanged.
"""
import argparse
import dataclasses
import runpy
from pathlib import Path

import torch

from vjepa_scale.train import engine

TRAIN = Path(__file__).resolve().parents[2] / "tools" / "train.py"


def main() -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--nan-micro-step", type=int, required=True)
    ap.add_argument("--nan-rank", type=int, default=0)
    args, rest = ap.parse_known_args()
    build = engine.build_dataloader

    def with_nan_batch(cfg, rank=0, world_size=1, **kw):
        for batch in build(cfg, rank, world_size, **kw):
            if rank == args.nan_rank and batch.step == args.nan_micro_step:
                batch = dataclasses.replace(batch, video=torch.full_like(batch.video, float("nan")))
            yield batch

    engine.build_dataloader = with_nan_batch  # what Trainer.loader calls
    train = runpy.run_path(str(TRAIN), run_name="train")
    return train["main"](rest)


if __name__ == "__main__":
    from vjepa_scale.distributed import end_process

    end_process(main())  # as tools/train.py ends
