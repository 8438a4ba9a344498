"""tools/train.py whose rank `--rank` finds its disk full inside DeepSpeed's save of step `--step`
(test_housekeeping_e2e): its ZeRO optimizer-state write fails with ENOSPC while the other ranks' saves
go on (a node-local disk that filled up, a per-rank quota). All other arguments go to tools/train.py.
"""
import argparse
import errno
import runpy
from pathlib import Path

import torch

TRAIN = Path(__file__).resolve().parents[2] / "tools" / "train.py"


def main() -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--step", type=int, required=True)
    args, rest = ap.parse_known_args()
    save = torch.save

    def save_or_fail(obj, f, *a, **kw):
        if (isinstance(f, str) and "optim_states" in f and f"step_{args.step:08d}" in f
                and torch.distributed.get_rank() == args.rank):
            raise OSError(errno.ENOSPC, "No space left on device (injected)", f)
        return save(obj, f, *a, **kw)

    torch.save = save_or_fail  # DeepSpeed's checkpoint engine calls torch.save
    train = runpy.run_path(str(TRAIN), run_name="train")
    return train["main"](rest)


if __name__ == "__main__":
    from vjepa_scale.distributed import end_process

    end_process(main())  # as tools/train.py ends
