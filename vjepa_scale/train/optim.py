"""The AdamW optimizer of a run, built from `OptimConfig` (the trainer, the benchmark's step rows).

Two parameter groups: weight decay on matrices and kernels only, none on biases and 1-D parameters
(`param_groups`). The trainer sets each group's LR and weight decay per step from the schedules
(weight decay: the group's `wd_scale` x the scheduled value), so the values here are the starting ones.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vjepa_scale.config import OptimConfig


def param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups: weight decay on matrices/kernels only, none on biases and 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "name": "decay", "wd_scale": 1.0},
            {"params": no_decay, "name": "no_decay", "wd_scale": 0.0, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, optim: OptimConfig, fused: Optional[bool] = None) -> torch.optim.AdamW:
    """AdamW over `param_groups(model)` at `optim`'s start LR, betas, eps and weight decay; `fused`
    as torch's AdamW takes it (None: torch's default implementation)."""
    return torch.optim.AdamW(param_groups(model), lr=optim.start_lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay, fused=fused)
