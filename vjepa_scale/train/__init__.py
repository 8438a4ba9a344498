"""Training: DeepSpeed ZeRO engine (stage 1, 2 or 3; 3 by default) with a sharded fp32 EMA target.

- `engine.Trainer`: builds the online (encoder + predictor) and target engines, trains, logs, saves.
- `step.StepCore`: one training step (target forward + LN gather, loss, backward, clipped optimizer
  step, EMA) over a DeepSpeed engine or `step.TorchEngine`; shared with the step benchmark.
- `ema.ShardedEMA`: shard-local EMA from the optimizer's fp32 master shards (ZeRO-3: no communication;
  ZeRO-1/2: one all-gather of the updated target values per step).
- `schedules`: LR (warmup+cosine, or V-JEPA 2's warmup+constant+linear cooldown), WD (cosine or
  constant), EMA momentum (linear ramp or constant) as pure functions of the step (the shapes are
  `vjepa_scale.schedules`).
- `phases`: a run as a list of phases (clip shape, batch, schedule piece each): step ranges, the
  per-phase configs and the data position across phase boundaries.
- `checkpoint`: atomic save / resume inside the live engines (finding and consolidating checkpoints:
  `vjepa_scale.weights`).
- `launch`: pre-flight checks (batch per phase: `phases.resolve_batch`), DeepSpeed config, joining
  DeepSpeed's process group (rank / device / dtype come from `vjepa_scale.distributed`).
- `elastic`: resuming a checkpoint on another number of ranks (universal DeepSpeed checkpoint,
  resharded EMA, data position in global samples).
- `memory`: the pre-flight per-rank memory estimate (state by ZeRO stage, rough activations).
- `optim`: the AdamW of a run (weight-decay groups) from `optim`.
- `housekeeping`: the checkpoint folder at start (leftovers of dead saves, writable, free space),
  disk-full errors while saving, and the model check when resuming.
- `zero_compat`: every DeepSpeed internal relied on (ZeRO-3 shards and their layout, fp32 masters,
  the op-compatibility table), checked by tests/unit/test_zero_compat.py.
- `metrics`: metrics.jsonl, tensorboard, the rank-0 progress bar, the run's banner and summary (docs/METRICS.md).
- `guard`: divergence guard (non-finite steps skipped on every rank, stop after `train.max_bad_steps`
  in a row, no checkpoint of non-finite weights).
- `watchdog`: per-rank hang watchdog (`train.hang_timeout_s`): names the stalled phase, ends the rank.
- `preempt`: SIGTERM / SIGUSR1 / launcher death -> all ranks stop at one step, save, exit 75.
- `rng`: per-rank seeding of torch / numpy / python, and their states as checkpoints save them.
Submodules are imported explicitly (this package imports nothing heavy on its own).
"""
