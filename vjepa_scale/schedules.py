"""Schedule shapes as pure functions of the step, shared by pretraining and probe training.

- `warmup_cosine`: linear warmup `start -> peak` over `warmup` steps, then a half cosine
  `peak -> final` reached at step `total` and held after it. Used by `train.schedules` (LR, and with
  no warmup the weight decay) and by the probe trainer (`eval.train_probe`).
- `warmup_constant_cooldown` (WSD, V-JEPA 2's LR): linear warmup `start -> peak`, `peak` held, then
  a linear cooldown `peak -> final` over the last `cooldown` steps before `total`, held after it.
- `linear`: `start -> end` over `total` steps, held after it (the EMA momentum ramp).
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, start: float, peak: float, final: float) -> float:
    """Value at `step` (0-based): linear `start -> peak` for step < warmup, then cosine to `final` at `total`."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant_cooldown(step: int, warmup: int, total: int, cooldown: int, start: float, peak: float,
                             final: float) -> float:
    """Value at `step` (0-based): linear `start -> peak` for step < warmup, `peak` until
    `total - cooldown`, then linear to `final` at `total` (held after). Needs warmup + cooldown <= total."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    decay_from = total - cooldown
    if step < decay_from or cooldown <= 0:
        return peak
    if step >= total:
        return final
    return peak + (final - peak) * (step - decay_from) / cooldown


def linear(step: int, total: int, start: float, end: float) -> float:
    """`start -> end` linearly over `total` steps (>= 1), `end` after it."""
    return start + (end - start) * min(1.0, step / max(1, total))
