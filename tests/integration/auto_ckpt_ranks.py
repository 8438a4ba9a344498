"""Launched by test_memory_preflight_e2e.py on 2 ranks: each rank is made to see a different amount of
memory (rank 0 plenty, rank 1 little), then a Trainer with `model.activation_checkpointing: auto`
trains 2 steps under ZeRO-3; each rank writes OUT/rank{r}.json with the fraction it resolved and its note.

    torchrun --nproc_per_node 2 tests/integration/auto_ckpt_ranks.py OUT
"""
import json
import sys
from pathlib import Path

from vjepa_scale.config import load_config
from vjepa_scale.distributed import end_process
from vjepa_scale.train import memory
from vjepa_scale.train.engine import Trainer
from vjepa_scale.train.launch import join_process_group, preflight

GiB = 1024 ** 3


def main(out: str) -> None:
    env = join_process_group()
    memory.available_bytes = lambda device, n_local: ((64 * GiB, "plenty") if env.rank == 0 else (1, "little"))
    cfg = load_config("cpu_demo", ["train.progress_bar=false", "optim.iterations=2",
                                   "model.activation_checkpointing=auto", "train.memory_check=false"])
    tr = Trainer(preflight(cfg, env.world_size), Path(out) / "run", env=env)
    tr.fit()
    (phase,) = tr.phases
    Path(out, f"rank{env.rank}.json").write_text(json.dumps(
        {"fraction": phase.cfg.model.activation_checkpointing, "note": phase.note, "step": tr.step}))
    end_process(0)  # no interpreter finalization: it can abort a finished gloo rank


if __name__ == "__main__":
    main(*sys.argv[1:])
