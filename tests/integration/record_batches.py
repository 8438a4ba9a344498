"""tools/train.py that records, per rank, the shape and data position of every batch it trains on.

    python -m torch.distributed.run ... tests/integration/record_batches.py --record-dir DIR --config ...

Wraps `Trainer.loader` (which the trainer rebuilds at every phase boundary): each rank appends
{"step", "micro", "rank", "video", "grid", "index"} lines to DIR/rank{r}.jsonl (test_phases), i.e. the
optimizer step (1-based) the batch trains, its micro-step, the video's shape, the masks' token grid
and the sample indices. All other arguments go to tools/train.py unchanged.
"""
import argparse
import json
import runpy
import sys
from pathlib import Path

from vjepa_scale.train.engine import Trainer

TRAIN = Path(__file__).resolve().parents[2] / "tools" / "train.py"


def main() -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--record-dir", required=True)
    args, rest = ap.parse_known_args()
    out = Path(args.record_dir)
    out.mkdir(parents=True, exist_ok=True)
    loader = Trainer.loader

    def recording(self, num_steps=None):
        a = self.cfg.optim.grad_accum
        for batch in loader(self, num_steps):
            with open(out / f"rank{self.rank}.jsonl", "a") as f:
                f.write(json.dumps({"step": batch.step // a + 1, "micro": batch.step, "rank": self.rank,
                                    "video": list(batch.video.shape), "grid": list(batch.masks.grid),
                                    "index": list(batch.index)}) + "\n")
            yield batch

    Trainer.loader = recording
    train = runpy.run_path(str(TRAIN), run_name="train")
    return train["main"](rest)


if __name__ == "__main__":
    sys.exit(main())
