"""Training schedules as pure functions of the optimizer step (0-based).

All three run on the horizon `ipe_scale * iterations` (the reference uses 1.25x and stops training
at 1x, so LR, WD and EMA momentum never reach their final values). Shapes (`optim.*_schedule`):
- LR `cosine` (default, V-JEPA 1): linear warmup `start_lr -> lr` over `warmup` steps, then cosine
  toward `final_lr`. `wsd` (V-JEPA 2): the same warmup, `lr` held, then a linear cooldown to
  `final_lr` over the last `cooldown` steps of the horizon (`cooldown: 0`: warmup + constant).
- weight decay `cosine` (default): `weight_decay -> final_weight_decay` over the horizon;
  `constant`: `weight_decay` throughout (`final_weight_decay` unused).
- EMA momentum `linear` (default): `ema[0] -> ema[1]` over the horizon; `constant`: `ema[0]`.
Being pure functions of the step, a resumed run needs no scheduler state. A run of several phases
(`config.phases`) gives each phase its own piece: `train.phases.Phase.schedule` evaluates these
functions with the phase's optim config at the step within the phase. The shapes themselves are
`vjepa_scale.schedules` (shared with the probe trainer).
"""
from __future__ import annotations

from dataclasses import dataclass

from vjepa_scale.config import OptimConfig
from vjepa_scale.schedules import linear, warmup_constant_cooldown, warmup_cosine


def horizon(cfg: OptimConfig) -> int:
    """Number of steps the schedules are laid out on (>= 1): `OptimConfig.horizon`."""
    return cfg.horizon


def learning_rate(cfg: OptimConfig, step: int) -> float:
    """`cosine`: warmup then cosine toward `final_lr`; `wsd`: warmup, constant, linear cooldown;
    both on the scaled horizon."""
    if cfg.lr_schedule == "wsd":
        return warmup_constant_cooldown(step, cfg.warmup, horizon(cfg), cfg.cooldown, cfg.start_lr, cfg.lr,
                                        cfg.final_lr)
    return warmup_cosine(step, cfg.warmup, horizon(cfg), cfg.start_lr, cfg.lr, cfg.final_lr)


def weight_decay(cfg: OptimConfig, step: int) -> float:
    """`cosine`: `weight_decay -> final_weight_decay` on the scaled horizon (no warmup); `constant`."""
    if cfg.wd_schedule == "constant":
        return cfg.weight_decay
    return warmup_cosine(step, 0, horizon(cfg), cfg.weight_decay, cfg.weight_decay, cfg.final_weight_decay)


def ema_momentum(cfg: OptimConfig, step: int) -> float:
    """`linear`: `ema[0] -> ema[1]` on the scaled horizon; `constant`: `ema[0]`."""
    m0, m1 = cfg.ema
    if cfg.ema_schedule == "constant":
        return m0
    return linear(step, horizon(cfg), m0, m1)


@dataclass(frozen=True)
class StepSchedule:
    """The three scheduled values used at one optimizer step."""

    lr: float
    weight_decay: float
    momentum: float


def schedule_at(cfg: OptimConfig, step: int) -> StepSchedule:
    """LR and WD for optimizer step `step`, and the EMA momentum applied right after it."""
    return StepSchedule(learning_rate(cfg, step), weight_decay(cfg, step), ema_momentum(cfg, step))
