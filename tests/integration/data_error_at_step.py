"""tools/train.py whose data fail on one rank only (test_data_hangs_e2e): one node without its data.

    python -m torch.distributed.run ... tests/integration/data_error_at_step.py --fail-micro-step 3 --fail-rank 1 --config ...

Loading the micro-batch of micro-step `--fail-micro-step` on rank `--fail-rank` raises the error a data
mount that vanished gives (NoReadableVideosError); the other ranks load theirs. `--where loader`
raises it where the trainer takes the batch; `--where collate` inside a file loader, before its skip
tracker counts the batch (as a worker error or a loader timeout does), so the healthy ranks may be
about to gather an epoch summary that the failing rank never reaches. Other arguments go to
tools/train.py unchanged.
"""
import argparse
import runpy
from pathlib import Path

from vjepa_scale.data import NoReadableVideosError
from vjepa_scale.data import loader as loader_lib
from vjepa_scale.train import engine

TRAIN = Path(__file__).resolve().parents[2] / "tools" / "train.py"


def main() -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--fail-micro-step", type=int, required=True)
    ap.add_argument("--fail-rank", type=int, default=0)
    ap.add_argument("--where", choices=("loader", "collate"), default="loader")
    args, rest = ap.parse_known_args()

    def fail(rank):
        raise NoReadableVideosError(f"rank {rank}: /data/videos.csv: no such file (injected)")

    if args.where == "loader":
        build = engine.build_dataloader

        def failing_on_one_rank(cfg, rank=0, world_size=1, **kw):
            for batch in build(cfg, rank, world_size, **kw):
                if rank == args.fail_rank and batch.step == args.fail_micro_step:
                    fail(rank)
                yield batch

        engine.build_dataloader = failing_on_one_rank  # what Trainer.loader calls
    else:
        class FailingCollator(loader_lib.ClipCollator):
            def __call__(self, samples):
                if self.rank == args.fail_rank and samples[0]["step"] == args.fail_micro_step:
                    fail(self.rank)
                return super().__call__(samples)

        loader_lib.ClipCollator = FailingCollator  # what build_dataloader builds the file loader with
    train = runpy.run_path(str(TRAIN), run_name="train")
    return train["main"](rest)


if __name__ == "__main__":
    from vjepa_scale.distributed import end_process

    end_process(main())  # as tools/train.py ends
