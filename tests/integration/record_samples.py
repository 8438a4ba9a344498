"""tools/train.py that records, per rank, the sample indices behind each micro-batch it trains on.

    python -m torch.distributed.run ... tests/integration/record_samples.py --record-dir DIR --config ...

Each rank appends {"step", "micro", "rank", "index"} lines to DIR/rank{r}.jsonl (test_elastic_resume):
what really went into training, so a test can check that a resumed run repeats or skips no clip.
All other arguments go to tools/train.py unchanged.
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
    micro_step = Trainer.micro_step

    def recording(self, batch):
        with open(out / f"rank{self.rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step + 1, "micro": batch.step, "rank": self.rank,
                                "index": list(batch.index)}) + "\n")
        return micro_step(self, batch)

    Trainer.micro_step = recording
    train = runpy.run_path(str(TRAIN), run_name="train")
    return train["main"](rest)


if __name__ == "__main__":
    sys.exit(main())
