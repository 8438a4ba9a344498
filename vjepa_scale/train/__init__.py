"""Training: DeepSpeed ZeRO-3 engine with a sharded fp32 EMA target.

- `engine.Trainer`: builds the online (encoder + predictor) and target engines, trains, logs, saves.
- `ema.ShardedEMA`: shard-local EMA from the optimizer's fp32 master shards (no communication).
- `schedules`: LR warmup+cosine, WD cosine, EMA momentum ramp as pure functions of the step.
- `checkpoint`: atomic save / resume inside the live engines (finding and consolidating checkpoints:
  `vjepa_scale.weights`).
- `launch`: batch resolution, pre-flight checks, DeepSpeed config, process-group setup.
- `metrics`: metrics.jsonl, tensorboard and the rank-0 progress bar.
Submodules are imported explicitly (this package imports nothing heavy on its own).
"""
