"""Training: DeepSpeed ZeRO-3 engine with a sharded fp32 EMA target.

- `engine.Trainer`: builds the online (encoder + predictor) and target engines, trains, logs, saves.
- `ema.ShardedEMA`: shard-local EMA from the optimizer's fp32 master shards (no communication).
- `schedules`: LR warmup+cosine, WD cosine, EMA momentum ramp as pure functions of the step
  (the warmup+cosine shape is `vjepa_scale.schedules`).
- `checkpoint`: atomic save / resume inside the live engines (finding and consolidating checkpoints:
  `vjepa_scale.weights`).
- `launch`: batch resolution, pre-flight checks, DeepSpeed config, joining DeepSpeed's process group
  (rank / device / dtype come from `vjepa_scale.distributed`).
- `zero_compat`: every DeepSpeed internal relied on (ZeRO-3 shards and their layout, fp32 masters,
  the op-compatibility table), checked by tests/unit/test_zero_compat.py.
- `metrics`: metrics.jsonl, tensorboard and the rank-0 progress bar.
Submodules are imported explicitly (this package imports nothing heavy on its own).
"""
