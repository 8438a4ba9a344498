"""One V-JEPA training step, shared by the trainer, the step benchmark and tools/motion_variants.py.

`StepCore` runs, per micro-batch: the target encoder on the full clip + LayerNorm gather at the
targets (no gradients), the online model's loss (the packed encoder + predictor pass, or one pass
per mask type for the reference-style bench row), backward, and at the accumulation boundary the
clipped optimizer step; after the last micro-batch, the EMA update of the target (`ema.update`,
the fused `ema_update_` in `ShardedEMA`). With a `DivergenceGuard` a non-finite step changes
neither weights nor EMA.

Behind `engine` sits either a DeepSpeed engine (the trainer: ZeRO, bf16 weights + fp32 masters,
clipping inside `step()`) or a `TorchEngine`, a plain module + torch optimizer with the small part
of the DeepSpeed engine interface the step uses: `engine(...)` (forward), `backward(loss)`,
`step()`, `is_gradient_accumulation_boundary()`, `get_global_grad_norm()`, `was_step_applied()`,
`module`, `optimizer`.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, Protocol

import torch
import torch.nn as nn

from vjepa_scale.data.batch import Batch
from vjepa_scale.models.jepa import compute_targets, global_type_norm


class EMA(Protocol):
    def update(self, momentum: float) -> None: ...


class TorchEngine:
    """A module + torch optimizer stepped like a DeepSpeed engine (one device, no ZeRO).

    backward scales the loss by 1 / grad_accum (as DeepSpeed does); `step()` counts micro-batches and,
    at the boundary, clips the global gradient norm to `grad_clip` (0: no clipping, no norm), steps the
    optimizer and drops the gradients.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0,
                 grad_accum: int = 1):
        self.module, self.optimizer = module, optimizer
        self.grad_clip, self.grad_accum = grad_clip, grad_accum
        self.micro_steps = 0
        self._grad_norm: Optional[torch.Tensor] = None

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.grad_accum == 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum if self.grad_accum > 1 else loss).backward()

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            params = [p for p in self.module.parameters() if p.grad is not None]
            self._grad_norm = (torch.nn.utils.clip_grad_norm_(params, self.grad_clip) if self.grad_clip > 0
                               else None)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro_steps += 1

    def get_global_grad_norm(self) -> Optional[float]:
        return None if self._grad_norm is None else float(self._grad_norm)

    def was_step_applied(self) -> bool:
        return True  # a step the guard drops is shadowed by `DivergenceGuard.optimizer_step`


class StepCore:
    """The training step over an engine, a target encoder and an EMA.

    device / dtype: where (and in which dtype) the video goes; autocast: compute dtype of an autocast
    region around the target and online forwards (None: none; the DeepSpeed bf16 engine needs none).
    global_norm: the loss is the per-type token mean over all ranks (`global_type_norm`); False: this
    batch's own per-type means. per_type: one encoder and one predictor call per mask type (the
    reference's two passes) instead of one packed call. phase: the watchdog's phase callback.
    """

    def __init__(self, engine, target: nn.Module, ema: EMA, device: torch.device,
                 dtype: Optional[torch.dtype] = None, guard=None, autocast: Optional[torch.dtype] = None,
                 global_norm: bool = True, per_type: bool = False,
                 phase: Optional[Callable[[str], None]] = None):
        self.engine, self.target, self.ema, self.guard = engine, target, ema, guard
        self.device, self.dtype = torch.device(device), dtype
        self.autocast, self.global_norm, self.per_type = autocast, global_norm, per_type
        self.phase = phase or (lambda what: None)
        self.last_stats: dict[str, torch.Tensor] = {}

    def _amp(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def micro_step(self, batch: Batch, step: int) -> torch.Tensor:
        """Forward + backward of one micro-batch of optimizer step `step` (0-based); the engine steps
        at the accumulation boundary (a no-op when the guard finds the step non-finite). Returns the
        detached loss; `last_stats` then holds the micro-batch's numbers for the log (device tensors):
        `loss_types`, the (M,) loss of each mask type (the loss is their mean), and `target_std`, the
        spread of the target features over the batch's target tokens (the std over tokens of each
        feature, averaged over features; the targets are layer-normed per token, so a target encoder
        collapsing towards one output for every token drives it to 0)."""
        self.phase(f"forward/backward step {step + 1}")
        on_device = batch.to(self.device, self.dtype)
        video, masks = on_device.video, on_device.masks
        with self._amp():
            with torch.no_grad():
                targets = compute_targets(self.target, video, masks)
                target_std = targets.std(dim=0, correction=0).float().mean()
            # global per-type token mean: the loss does not depend on how the slots split over ranks
            norm = global_type_norm(masks, self.device) if self.global_norm else None
            loss, type_losses = self.engine(video, masks, targets, norm, per_type=self.per_type, with_types=True)
        self.last_stats = {"loss_types": type_losses.detach(), "target_std": target_std}
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(self.guard.loss_for_backward(loss, boundary) if self.guard else loss)
        if boundary:
            self.phase(f"optimizer step {step + 1}")
        with self.guard.optimizer_step(self.engine, boundary) if self.guard else contextlib.nullcontext():
            self.engine.step()
        return loss.detach()

    def end_step(self, momentum: float, step: int) -> bool:
        """After the boundary micro-batch of step `step`: the EMA update with `momentum` when the
        optimizer update was applied (the guard's verdict; True without a guard). Returns that."""
        self.phase(f"EMA update step {step + 1}")
        applied = self.guard.after_step(self.engine, step + 1) if self.guard else True
        if applied:
            self.ema.update(momentum)
        return applied

    def train_step(self, batches: list[Batch], momentum: float, step: int) -> torch.Tensor:
        """All micro-batches of step `step`, then the EMA; the mean micro-batch loss (detached)."""
        losses = [self.micro_step(b, step) for b in batches]
        self.end_step(momentum, step)
        return torch.stack(losses).mean()

