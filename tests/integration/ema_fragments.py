"""Launched by test_ema_fragments.py on N ranks: a few steps of a tiny ZeRO-1/2 recipe, then each rank
writes OUT/rank{r}.pt = {"target": its replicated target weights (fp32 copies), "ema": its EMA state}.

    torchrun --nproc_per_node N tests/integration/ema_fragments.py OUT [--resume CKPT] [config overrides ...]
"""
import sys
from pathlib import Path

import torch

from vjepa_scale.config import load_config
from vjepa_scale.distributed import end_process
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.launch import join_process_group, preflight


def main(out: str, *args: str) -> None:
    resume = None
    if args[:1] == ("--resume",):
        resume, args = args[1], args[2:]
    env = join_process_group()
    cfg = load_config("cpu_demo", ["train.progress_bar=false", "train.checkpoint_every=1", *args])
    out = Path(out)
    tr = Trainer(preflight(cfg, env.world_size), out / "run", resume=resume, env=env)
    tr.fit()
    target = {n: p.detach().float().cpu().clone() for n, p in tr.target.module.named_parameters()}
    torch.save({"target": target, "ema": tr.ema.state_dict()}, out / f"rank{env.rank}.pt")
    end_process(0)  # no interpreter finalization: it can abort a finished gloo rank


if __name__ == "__main__":
    main(*sys.argv[1:])
