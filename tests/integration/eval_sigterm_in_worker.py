"""tools/eval_probe.py whose loader worker sends SIGTERM to the whole process group, as SLURM signals every
process of a job (test_eval_e2e): the first train sample of epoch `--epoch` (0-based, with
`data.train_augment: true`) is read by a worker that first signals its group, so the signal reaches the
rank while that pass's workers run. Other arguments go to tools/eval_probe.py unchanged.

    python tests/integration/eval_sigterm_in_worker.py --epoch 1 --random-init ...
"""
import argparse
import os
import runpy
import signal
from pathlib import Path

from vjepa_scale.eval import data as eval_data
from vjepa_scale.train import preempt

EVAL = Path(__file__).resolve().parents[2] / "tools" / "eval_probe.py"


def main() -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--epoch", type=int, required=True)
    args, rest = ap.parse_known_args()
    clips = eval_data.AugmentedClips.clips

    def signalling(self, i, *a, **kw):
        if self.epoch == args.epoch and not os.environ.get("SIGNALLED"):
            os.environ["SIGNALLED"] = "1"  # this worker signals once
            os.killpg(os.getpgid(0), signal.SIGTERM)
        return clips(self, i, *a, **kw)

    eval_data.AugmentedClips.clips = signalling
    return runpy.run_path(str(EVAL), run_name="eval_probe")["main"](rest)


if __name__ == "__main__":
    from vjepa_scale.distributed import end_process

    preempt.prepare_process()  # as tools/eval_probe.py does
    end_process(main())
