"""tools/train.py whose data fail on one rank only (test_data_error_e2e): one node without its data.

    python -m torch.distributed.run ... tests/integration/data_error_at_step.py --fail-micro-step 3 --fail-rank 1 --config ...

Loading the micro-batch of micro-step `--fail-micro-step` on rank `--fail-rank` raises the error a data
mount that vanished gives (NoReadableVideosError); the other ranks load theirs. All other arguments go
to tools/train.py unchanged.
"""
import argparse
import runpy
from pathlib import Path

from vjepa_scale.data import NoReadableVideosError
from vjepa_scale.train import engine

TRAIN = Path(__file__).resolve().parents[2] / "tools" / "train.py"


def main() -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--fail-micro-step", type=int, required=True)
    ap.add_argument("--fail-rank", type=int, default=0)
    args, rest = ap.parse_known_args()
    build = engine.build_dataloader

    def failing_on_one_rank(cfg, rank=0, world_size=1, **kw):
        for batch in build(cfg, rank, world_size, **kw):
            if rank == args.fail_rank and batch.step == args.fail_micro_step:
                raise NoReadableVideosError(f"rank {rank}: /data/videos.csv: no such file (injected)")
            yield batch

    engine.build_dataloader = failing_on_one_rank  # what Trainer.loader calls
    train = runpy.run_path(str(TRAIN), run_name="train")
    return train["main"](rest)


if __name__ == "__main__":
    from vjepa_scale.distributed import end_process

    end_process(main())  # as tools/train.py ends
