"""Launched by test_comm_bytes.py on N ranks: one warm-up optimizer step of a tiny recipe, then the bytes
each collective moves in the next step, from DeepSpeed's communication logger (`comms_logger`), written
by rank 0 as JSON {op name: {message bytes: count}}.

    torchrun --nproc_per_node N tests/integration/comm_bytes.py OUT.json [config overrides ...]
"""
import json
import sys
import tempfile

from vjepa_scale.config import load_config
from vjepa_scale.distributed import end_process
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.launch import join_process_group, preflight


def main(out: str, *opts: str) -> None:
    from deepspeed.comm.comm import comms_logger

    env = join_process_group()
    cfg = load_config("cpu_demo", ["train.progress_bar=false", "deepspeed.comms_logger={enabled: true, prof_all: true}",
                                   *opts])
    run_dir = tempfile.mkdtemp() if env.world_size == 1 else f"{out}.run"
    tr = Trainer(preflight(cfg, env.world_size), run_dir, env=env)
    a = cfg.optim.grad_accum
    it = iter(tr.loader(2))
    tr.train_step([next(it) for _ in range(a)])
    comms_logger.reset_data()
    tr.train_step([next(it) for _ in range(a)])
    data = {op: {str(size): v[0] for size, v in sizes.items()} for op, sizes in comms_logger.comms_dict.items()}
    if env.rank == 0:
        with open(out, "w") as f:
            json.dump(data, f, indent=1)
    end_process(0)  # no interpreter finalization: it can abort a finished gloo rank


if __name__ == "__main__":
    main(*sys.argv[1:])
