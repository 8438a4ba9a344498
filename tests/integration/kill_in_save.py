"""tools/train.py whose rank 0 SIGKILLs itself inside the save of one step (test_train_distributed).

    python -m torch.distributed.run ... tests/integration/kill_in_save.py --kill-in-save-at-step 6 --config ...

The kill comes after every rank wrote its shard files into `.tmp_step_*` and before the commit
(`vjepa_scale.train.checkpoint._commit`: config, meta.json, rename, `latest`), to prove that a dying
save never replaces the previous checkpoint. All other arguments go to tools/train.py unchanged.
"""
import argparse
import os
import runpy
import signal
from pathlib import Path

from vjepa_scale.train import checkpoint

TRAIN = Path(__file__).resolve().parents[2] / "tools" / "train.py"


def main() -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--kill-in-save-at-step", type=int, required=True)
    args, rest = ap.parse_known_args()
    commit = checkpoint._commit

    def commit_or_die(run_dir, tmp, final, cfg, meta, keep_last):
        if meta["step"] == args.kill_in_save_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        commit(run_dir, tmp, final, cfg, meta, keep_last)

    checkpoint._commit = commit_or_die  # only rank 0 commits, so only rank 0 dies
    train = runpy.run_path(str(TRAIN), run_name="train")
    return train["main"](rest)


if __name__ == "__main__":
    from vjepa_scale.distributed import end_process

    end_process(main())  # as tools/train.py ends
