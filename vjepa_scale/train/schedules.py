"""Training schedules as pure functions of the optimizer step (0-based).

All three run on the horizon `ipe_scale * iterations` (the reference uses 1.25x and stops training
at 1x, so LR, WD and EMA momentum never reach their final values):
- LR: linear warmup `start_lr -> lr` over `warmup` steps, then cosine toward `final_lr`.
- weight decay: cosine `weight_decay -> final_weight_decay` over the horizon.
- EMA momentum: linear `ema[0] -> ema[1]` over the horizon.
Being pure functions of the step, a resumed run needs no scheduler state. The warmup + cosine shape
is `vjepa_scale.schedules.warmup_cosine` (shared with the probe trainer).
"""
from __future__ import annotations

from dataclasses import dataclass

from vjepa_scale.config import OptimConfig
from vjepa_scale.schedules import warmup_cosine


def horizon(cfg: OptimConfig) -> int:
    """Number of steps the schedules are laid out on (>= 1)."""
    return max(1, int(cfg.ipe_scale * cfg.iterations))


def learning_rate(cfg: OptimConfig, step: int) -> float:
    """Linear warmup then cosine decay toward `final_lr`, on the scaled horizon."""
    return warmup_cosine(step, cfg.warmup, horizon(cfg), cfg.start_lr, cfg.lr, cfg.final_lr)


def weight_decay(cfg: OptimConfig, step: int) -> float:
    """Cosine from `weight_decay` to `final_weight_decay` on the scaled horizon (no warmup)."""
    return warmup_cosine(step, 0, horizon(cfg), cfg.weight_decay, cfg.weight_decay, cfg.final_weight_decay)


def ema_momentum(cfg: OptimConfig, step: int) -> float:
    """Linear from `ema[0]` to `ema[1]` on the scaled horizon."""
    m0, m1 = cfg.ema
    return m0 + (m1 - m0) * min(1.0, step / horizon(cfg))


@dataclass(frozen=True)
class StepSchedule:
    """The three scheduled values used at one optimizer step."""

    lr: float
    weight_decay: float
    momentum: float


def schedule_at(cfg: OptimConfig, step: int) -> StepSchedule:
    """LR and WD for optimizer step `step`, and the EMA momentum applied right after it."""
    return StepSchedule(learning_rate(cfg, step), weight_decay(cfg, step), ema_momentum(cfg, step))
