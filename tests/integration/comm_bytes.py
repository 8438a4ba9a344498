"""Launched by test_comm_bytes.py on N ranks: for each case, a fresh Trainer of a tiny recipe runs one
warm-up optimizer step, then the bytes each collective moves in the next step are taken from DeepSpeed's
communication logger (`comms_logger`); rank 0 writes the cases' results as a JSON list, in case order,
of {op name: {message bytes: count}}.

    torchrun --nproc_per_node N tests/integration/comm_bytes.py OUT.json [overrides ...] [--case [overrides ...]] ...

Overrides before the first `--case` apply to every case; without `--case`, one case. The cases run one
after another in the same ranks (one launch instead of one per case: the process start-up is most of
the time); each has its own engines, run folder and logger reset, so a case measures what it would alone.
"""
import gc
import json
import sys
import tempfile

from vjepa_scale.config import load_config
from vjepa_scale.distributed import end_process
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.launch import join_process_group, preflight


def split_cases(args: list[str]) -> tuple[list[str], list[list[str]]]:
    """(overrides for every case, [each case's overrides]) from `common... --case a... --case b...`."""
    groups: list[list[str]] = [[]]
    for a in args:
        if a == "--case":
            groups.append([])
        else:
            groups[-1].append(a)
    return groups[0], groups[1:] or [[]]


def measure(env, run_dir: str, opts: list[str]) -> dict:
    """The bytes of each collective of the second optimizer step of a fresh Trainer built with `opts`."""
    from deepspeed.comm.comm import comms_logger

    cfg = load_config("cpu_demo", ["train.progress_bar=false", "deepspeed.comms_logger={enabled: true, prof_all: true}",
                                   *opts])
    tr = Trainer(preflight(cfg, env.world_size), run_dir, env=env)
    a = cfg.optim.grad_accum
    it = iter(tr.loader(2))
    tr.train_step([next(it) for _ in range(a)])
    comms_logger.reset_data()
    tr.train_step([next(it) for _ in range(a)])
    data = {op: {str(size): v[0] for size, v in sizes.items()} for op, sizes in comms_logger.comms_dict.items()}
    comms_logger.reset_data()
    return data


def main(out: str, *args: str) -> None:
    common, cases = split_cases(list(args))
    env = join_process_group()
    results = []
    for i, case in enumerate(cases):
        run_dir = tempfile.mkdtemp() if env.world_size == 1 else f"{out}.run{i}"
        results.append(measure(env, run_dir, [*common, *case]))
        gc.collect()  # the case's engines and loader go before the next case builds its own
    if env.rank == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    end_process(0)  # no interpreter finalization: it can abort a finished gloo rank


if __name__ == "__main__":
    main(*sys.argv[1:])
