"""Launched by test_ema_fragments.py on N ranks: a few steps of a tiny ZeRO-1/2 recipe, then each rank
writes OUT/rank{r}.pt = {"target": its replicated target weights (fp32 copies), "ema": its EMA state}.

    torchrun --nproc_per_node N tests/integration/ema_fragments.py OUT [--resume CKPT] [config overrides ...]
        [--then OUT [--resume CKPT] [config overrides ...]] ...

Each `--then` starts another run after the one before it ends, in the same ranks (a Trainer each, run
folder OUT/run): one launch instead of one per run, the process start-up being most of the time.
"""
import gc
import sys
from pathlib import Path

import torch

from vjepa_scale.config import load_config
from vjepa_scale.distributed import end_process
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.launch import join_process_group, preflight


def split_runs(argv: list[str]) -> list[tuple[str, str | None, list[str]]]:
    """[(OUT, resume or None, overrides)] from `OUT [--resume CKPT] opts... --then OUT ...`."""
    groups: list[list[str]] = [[]]
    for a in argv:
        if a == "--then":
            groups.append([])
        else:
            groups[-1].append(a)
    runs = []
    for out, *args in groups:
        resume = None
        if args[:1] == ["--resume"]:
            resume, args = args[1], args[2:]
        runs.append((out, resume, args))
    return runs


def train(env, out: str, resume: str | None, args: list[str]) -> None:
    cfg = load_config("cpu_demo", ["train.progress_bar=false", "train.checkpoint_every=1", *args])
    out = Path(out)
    tr = Trainer(preflight(cfg, env.world_size), out / "run", resume=resume, env=env)
    tr.fit()
    target = {n: p.detach().float().cpu().clone() for n, p in tr.target.module.named_parameters()}
    torch.save({"target": target, "ema": tr.ema.state_dict()}, out / f"rank{env.rank}.pt")


def main(*argv: str) -> None:
    env = join_process_group()
    for out, resume, args in split_runs(list(argv)):
        train(env, out, resume, args)
        gc.collect()  # the run's engines and loader go before the next run builds its own
    end_process(0)  # no interpreter finalization: it can abort a finished gloo rank


if __name__ == "__main__":
    main(*sys.argv[1:])
