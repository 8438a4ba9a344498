"""EMA update of the target weights: shadow <- m * shadow + (1 - m) * online, then cast."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from vjepa_scale.kernels.backend import use_triton


@dataclass(frozen=True)
class EmaLaunch:
    """Launch settings of the Triton EMA kernel on a GPU (defaults: tuned on an H100,
    `tools/tune_kernels.py`). The CPU interpreter always uses 64Ki-element chunks and blocks."""

    chunk: int = 8192  # elements per work item (one program)
    block: int = 2048  # elements per inner step of a work item; divides `chunk`
    num_warps: int = 8

    def __post_init__(self):
        if self.block < 1 or self.block & (self.block - 1) or self.chunk % self.block:
            raise ValueError(f"EmaLaunch.block must be a power of two dividing chunk, got {self.block}, {self.chunk}")


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
                targets: Sequence[torch.Tensor], momentum: float, backend: str = "auto",
                launch: Optional[EmaLaunch] = None) -> None:
    """Dispatch: one multi-tensor Triton kernel on CUDA, torch reference elsewhere.

    Lists may hold flat shards of different lengths, some empty; `momentum` is a runtime scalar.
    backend: "auto" | "triton" | "torch" (see `vjepa_scale.kernels.backend.use_triton`).
    launch: the Triton kernel's settings (default `EmaLaunch()`); unused by the torch reference.
    """
    if use_triton(backend, [*shadows, *masters, *targets], "ema_update_"):
        from vjepa_scale.kernels.ema_triton import ema_update_triton

        ema_update_triton(shadows, masters, targets, momentum, launch or EmaLaunch())
        return
    ema_update_reference(shadows, masters, targets, momentum)
