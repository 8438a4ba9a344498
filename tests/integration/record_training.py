"""tools/train.py that records, per rank, what it trains on: DIR/rank{r}.jsonl, one JSON line per batch.

    python -m torch.distributed.run ... tests/integration/record_training.py --record-dir DIR [--what W] --config ...

`--what samples` (test_elastic_resume): {"step", "micro", "rank", "index"} of every micro-batch that
reaches `Trainer.micro_step`, i.e. the optimizer step (1-based), the micro-step and the sample indices
that really went into training, so a test can check that a resumed run repeats or skips no clip.
`--what batches` (test_phases): the same plus "video" (shape) and "grid" (the masks' token grid) of every
batch `Trainer.loader` yields (the trainer rebuilds the loader at each phase boundary).
All other arguments go to tools/train.py unchanged.
"""
import argparse
import json
import runpy
from pathlib import Path

from vjepa_scale.train.engine import Trainer

TRAIN = Path(__file__).resolve().parents[2] / "tools" / "train.py"


def main() -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--record-dir", required=True)
    ap.add_argument("--what", choices=["samples", "batches"], default="samples")
    args, rest = ap.parse_known_args()
    out = Path(args.record_dir)
    out.mkdir(parents=True, exist_ok=True)

    def record(rank: int, **fields) -> None:
        with open(out / f"rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({**fields, "rank": rank}) + "\n")

    if args.what == "samples":
        micro_step = Trainer.micro_step

        def recording_step(self, batch):
            record(self.rank, step=self.step + 1, micro=batch.step, index=list(batch.index))
            return micro_step(self, batch)

        Trainer.micro_step = recording_step
    else:
        loader = Trainer.loader

        def recording_loader(self, num_steps=None):
            a = self.cfg.optim.grad_accum
            for batch in loader(self, num_steps):
                record(self.rank, step=batch.step // a + 1, micro=batch.step, video=list(batch.video.shape),
                       grid=list(batch.masks.grid), index=list(batch.index))
                yield batch

        Trainer.loader = recording_loader
    train = runpy.run_path(str(TRAIN), run_name="train")
    return train["main"](rest)


if __name__ == "__main__":
    from vjepa_scale.distributed import end_process

    end_process(main())  # as tools/train.py ends
