"""Schedule shapes as pure functions of the step, shared by pretraining and probe training.

`warmup_cosine`: linear warmup `start -> peak` over `warmup` steps, then a half cosine `peak -> final`
reached at step `total` and held after it. Used by `train.schedules` (LR, and with no warmup the
weight decay) and by the probe trainer (`eval.train_probe`).
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, start: float, peak: float, final: float) -> float:
    """Value at `step` (0-based): linear `start -> peak` for step < warmup, then cosine to `final` at `total`."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
