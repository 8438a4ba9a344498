#!/usr/bin/env python
"""V-JEPA pretraining on DeepSpeed ZeRO (zero.stage 1, 2 or 3; 3 by default).

GPU:   deepspeed tools/train.py --config vith384.yaml            (--hostfile HOSTS for several nodes)
       torchrun --nproc_per_node 8 tools/train.py --config vith384.yaml
SLURM: srun python tools/train.py --config vith384.yaml            (one task per GPU; ranks from SLURM_*)
CPU:   DS_ACCELERATOR=cpu DS_SKIP_SHM_BUILD=1 deepspeed --num_gpus 2 tools/train.py --config cpu_demo.yaml

--config takes a path or a bare name from configs/. --opt section.key=value overrides (repeatable; a
list element by index, as errors name it: --opt phases[-1].optim.lr=1e-4).
--resume auto continues the run dir's latest complete checkpoint (if any; without one, the checkpoint its
PREEMPTED file names: a run started from another run's checkpoint and preempted before its first save);
--resume PATH a given one (a checkpoint, a run dir, its checkpoints dir or its checkpoints/latest file).
Without --resume, a run dir that holds checkpoints is refused (a fresh start would overwrite its records).
data.global_batch_size is the global batch per optimizer step (data.batch_size, per rank, is derived; one
given too must agree, so --opt data.batch_size=N on such a recipe also needs --opt data.global_batch_size=null).
Config errors are reported before any process group, model or data is created; those that need the
checkpoint or the run folder (a resume with another model, an unusable checkpoint folder, a run folder
that not every rank sees: SharedDirError) right after the group is joined.
Exit codes: 0 done, 2 config error, 3 diverged (train.max_bad_steps non-finite steps in a row),
4 a rank hung past train.hang_timeout_s (its watchdog ended it), 1 any other error (a rank that
cannot load its batch ends every rank at that step: DataLoadError), 75 preempted: SIGTERM / SIGUSR1 to a
rank or a launcher makes every rank finish its step, save, and exit 75 (EXIT_PREEMPTED: resume with
--resume auto; see vjepa_scale.train.preempt).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML recipe: a path or a name in configs/")
    ap.add_argument("--opt", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value (YAML syntax), repeatable")
    ap.add_argument("--resume", default=None, help="'auto' or a checkpoint / run directory")
    ap.add_argument("--output-dir", default=None, help="run directory (overrides train.output_dir)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    from vjepa_scale.train import preempt  # the standard library only: no torch yet

    preempt.prepare_process()  # first: a signal during setup (importing torch too) must not kill the rank
    args = parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from vjepa_scale.config import ConfigError, load_config
    from vjepa_scale.distributed import dist_env, quiet_deprecated_collectives
    from vjepa_scale.train.housekeeping import check_fresh_run_dir

    quiet_deprecated_collectives()  # DeepSpeed's per-step reduce_scatter / all_gather FutureWarnings
    from vjepa_scale.train.launch import preflight

    overrides = list(args.opt)
    if args.output_dir:
        overrides.append(f"train.output_dir={json.dumps(args.output_dir)}")  # quoted: a path, not YAML
    try:
        cfg = preflight(load_config(args.config, overrides), dist_env().world_size)
        if args.resume not in (None, "auto") and not os.path.exists(args.resume):
            raise ConfigError(f"--resume: '{args.resume}' does not exist (give 'auto', a run dir or a checkpoint dir)")
        if args.resume is None:
            check_fresh_run_dir(cfg.train.output_dir)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    import traceback

    from vjepa_scale.data import DataLoadError
    from vjepa_scale.distributed import SharedDirError, leave_process_group
    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.train.guard import EXIT_DIVERGED, DivergenceError
    from vjepa_scale.train.housekeeping import CheckpointFolderError

    try:  # the checks that need the run folder or the checkpoint: every rank raises the same error
        trainer = Trainer(cfg, cfg.train.output_dir, resume=args.resume)
    except (ConfigError, CheckpointFolderError, SharedDirError) as e:
        if dist_env().rank == 0:
            print(f"config error: {e}", file=sys.stderr, flush=True)
        leave_process_group()
        return 2
    except BaseException:
        _crash()
    # Every rank ends these three ways at the same step, so the group is torn down together; after any
    # other exception it is left alone (a teardown while other ranks wait in a collective can hang).
    try:
        trainer.fit()
        code = 0
    except DivergenceError as e:  # every rank stops at the same step; rank 0 explains
        if trainer.is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        code = EXIT_DIVERGED
    except preempt.Preempted as e:
        if trainer.is_main:
            print(f"{e}; resume with --resume auto", file=sys.stderr, flush=True)
        code = preempt.EXIT_PREEMPTED
    except DataLoadError as e:  # some rank's data failed; every rank stops at the same step
        if e.__cause__ is not None:  # this rank's own error, with where it came from
            traceback.print_exc()
        elif trainer.is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        code = 1
    except BaseException:
        _crash()
    leave_process_group()
    return code


def _crash() -> None:
    """Any other exception: print it and end this rank at once with 1 (130 on Ctrl-C), the group left
    alone. A normal interpreter exit would wait forever for the DataLoader workers (they ignore SIGTERM,
    which multiprocessing's exit handler sends them), so the launcher would never see the rank end."""
    import traceback

    from vjepa_scale.distributed import end_process

    traceback.print_exc()
    end_process(130 if isinstance(sys.exc_info()[1], KeyboardInterrupt) else 1, leave_group=False)


if __name__ == "__main__":
    code = main()  # imports torch only after installing the signal handlers
    from vjepa_scale.distributed import end_process

    end_process(code)  # no interpreter finalization: it can abort a finished gloo rank
