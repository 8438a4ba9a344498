"""Divergence guard: an optimizer step whose loss or gradient norm is non-finite changes nothing.

A bad step (inf/NaN loss on any rank, or a non-finite global gradient norm) skips the optimizer
update AND the EMA update, on every rank alike; the step counter (and so the data position) still
moves on and `skipped_steps` counts it. After `train.max_bad_steps` bad steps in a row the run stops
with `DivergenceError` (exit code `EXIT_DIVERGED` from tools/train.py). `check_finite_state` refuses
a checkpoint whose fp32 masters or EMA shadows hold inf/NaN.

What DeepSpeed 0.19.8 does on its own (it never looks at the loss):
- ZeRO-3, fp32 and bf16: `step()` skips when the all-reduced gradient norm is inf/NaN, clears the
  accumulated gradients, sets the reported grad norm to inf and counts `engine.skipped_steps`.
- ZeRO-1/2: the same, unless `zero_optimization.compute_grad_norm` is false (fp32) or
  `bf16.check_grad_overflow` is false (bf16): then it applies NaN gradients. bf16 ZeRO-1 with fp32
  gradient accumulation uses BF16_Optimizer, which always checks.
- No ZeRO (stage 0, which the config refuses) or a plain torch optimizer (the step bench's torch
  row): the optimizer steps whatever gradients there are.
- Nothing stops the EMA, which runs after the step, from following the online weights.

So the guard (1) agrees on the loss with one tiny all-reduce at the accumulation boundary and, on a
bad step, backpropagates `loss * nan`: every gradient is NaN, and DeepSpeed's own check skips the
step and drops the accumulated gradients (no half-accumulated step leaks into the next one);
(2) where there is no such check (a plain torch optimizer), skips the wrapped optimizer's update itself;
(3) refuses the DeepSpeed settings that switch the check off (`check_deepspeed_config`), and stops
with an error if DeepSpeed ever applies a step the guard found bad.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional

import torch

from vjepa_scale.config import ConfigError, OptimConfig
from vjepa_scale.train.zero_compat import fp32_master

EXIT_DIVERGED = 3  # tools/train.py's exit code after DivergenceError (75 means preempted, 2 config error)


class DivergenceError(RuntimeError):
    """`train.max_bad_steps` optimizer steps in a row had a non-finite loss or gradient norm."""


class NonFiniteStateError(RuntimeError):
    """The weights to be checkpointed hold inf/NaN; the save was refused."""


def check_deepspeed_config(ds_config: dict) -> None:
    """Refuse DeepSpeed settings under which DeepSpeed applies non-finite gradients (ZeRO-1/2)."""
    zero = ds_config.get("zero_optimization", {})
    if zero.get("compute_grad_norm", True) is False:
        raise ConfigError("deepspeed.zero_optimization.compute_grad_norm=false: DeepSpeed would then "
                          "apply inf/NaN gradients; the divergence guard needs it (remove the key)")
    if ds_config.get("bf16", {}).get("enabled") and ds_config["bf16"].get("check_grad_overflow", True) is False:
        raise ConfigError("deepspeed.bf16.check_grad_overflow=false: DeepSpeed would then apply inf/NaN "
                          "gradients; the divergence guard needs it (remove the key)")


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
    return t


class DivergenceGuard:
    """Per-run state: `skipped_steps` (cumulative), the current streak of bad steps, the last finite loss.

    Per optimizer step the trainer calls, on every rank: `loss_for_backward` for each micro-batch,
    wraps DeepSpeed's `step()` in `optimizer_step`, then `after_step` (True: the update
    was applied, update the EMA), and `check` once the step is logged. Steps are numbered as in
    metrics.jsonl and checkpoint names (step k = the k-th optimizer step).
    """

    def __init__(self, max_bad_steps: int, optim: OptimConfig, skipped_steps: int = 0):
        self.max_bad_steps = max_bad_steps
        self.optim = optim
        self.skipped_steps = skipped_steps
        self.bad_in_row = 0
        self.streak_start: Optional[int] = None
        self.last_finite: Optional[tuple[int, float]] = None  # (step, mean loss over ranks)
        self.last_bad: Optional[str] = None  # what made the last step bad (None: it was not)
        self._losses: list[torch.Tensor] = []
        self._loss_bad = False
        self._step_loss: Optional[float] = None
        self._dropped = False

    def loss_for_backward(self, loss: torch.Tensor, boundary: bool) -> torch.Tensor:
        """The loss to backpropagate. At the boundary micro-batch every rank learns (one all-reduce of
        [non-finite count, finite sum, count]) whether any micro-batch loss of this step on any rank is
        non-finite; then it returns `loss * nan`, so that DeepSpeed discards the step."""
        self._losses.append(loss.detach())
        if not boundary:
            return loss
        ls = torch.stack(self._losses).double()
        self._losses = []
        finite = torch.isfinite(ls)
        v = torch.stack([(~finite).sum().double(), torch.where(finite, ls, 0.0).sum(), ls.new_tensor(ls.numel())])
        bad, total, n = _all_reduce(v).tolist()
        self._loss_bad = bad > 0
        self._step_loss = None if self._loss_bad else total / n
        return loss * float("nan") if self._loss_bad else loss

    @contextmanager
    def optimizer_step(self, engine, boundary: bool):
        """Wrap DeepSpeed's `step()`. Without DeepSpeed's overflow check (no ZeRO, fp32: the optimizer
        has no `overflow`), a bad step's optimizer update is shadowed by a no-op for this one call;
        DeepSpeed still clears the gradients. Gradients are all-reduced by then: ranks agree."""
        self._dropped = False
        opt = engine.optimizer
        if boundary and not hasattr(opt, "overflow"):
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            self._dropped = self._loss_bad or not all(bool(torch.isfinite(g).all()) for g in grads)
        if self._dropped:
            opt.step = lambda *args, **kwargs: None  # an instance attribute shadows the class method
        try:
            yield
        finally:
            if self._dropped:
                del opt.step

    def after_step(self, engine, step: int) -> bool:
        """Book-keeping after DeepSpeed's boundary `step()` of optimizer step `step`; True when its
        update was applied (the caller then updates the EMA), False when it was skipped."""
        norm = engine.get_global_grad_norm()
        norm_bad = norm is not None and not math.isfinite(float(norm))
        applied = engine.was_step_applied() and not self._dropped
        bad = self._loss_bad or norm_bad or not applied
        if bad and applied:
            raise RuntimeError(f"step {step}: DeepSpeed applied an optimizer update although the loss or "
                               f"gradient norm ({norm}) is non-finite; this DeepSpeed mode has no overflow "
                               f"check the divergence guard knows of")
        self.last_bad = None
        if bad:
            self.last_bad = ("the loss was inf/NaN (on some rank)" if self._loss_bad else
                             f"the gradient norm was {norm}" if norm_bad else
                             "the gradients were not finite (the update was skipped)")
            self.skipped_steps += 1
            self.bad_in_row += 1
            if self.bad_in_row == 1:
                self.streak_start = step
        else:
            self.bad_in_row = 0
            self.streak_start = None
            if self._step_loss is not None:
                self.last_finite = (step, self._step_loss)
        self._loss_bad = False
        self._dropped = False
        return not bad

    def describe_bad_step(self, step: int) -> Optional[str]:
        """A warning line for step `step` when `after_step` found it bad (None when it was fine)."""
        if self.last_bad is None:
            return None
        return (f"warning: step {step}: {self.last_bad}; its update and the EMA update were skipped ({self.bad_in_row} "
                f"bad step(s) in a row, the run stops at train.max_bad_steps={self.max_bad_steps}; "
                f"{self.skipped_steps} skipped in all)")

    def state(self) -> dict:
        """meta.json's record of the guard: the skip count and the current streak, so that a diverging
        run preempted again and again still stops after `max_bad_steps` bad steps in a row."""
        return {"skipped_steps": self.skipped_steps, "bad_in_row": self.bad_in_row,
                "streak_start": self.streak_start,
                "last_finite": None if self.last_finite is None else list(self.last_finite)}

    def restore(self, meta: dict) -> None:
        """The record of `state` from a checkpoint's meta.json (one written before it: no streak)."""
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        self.bad_in_row = int(meta.get("bad_in_row", 0))
        self.streak_start = meta.get("streak_start")
        last = meta.get("last_finite")
        self.last_finite = None if last is None else (int(last[0]), float(last[1]))

    @property
    def diverged(self) -> bool:
        return self.bad_in_row >= self.max_bad_steps

    def check(self, step: int) -> None:
        """Raise DivergenceError when the last `max_bad_steps` steps (up to `step`) were all bad."""
        if not self.diverged:
            return
        o = self.optim
        last = ("none (no step had a finite loss)" if self.last_finite is None
                else f"{self.last_finite[1]:.6g} at step {self.last_finite[0]}")
        raise DivergenceError(
            f"training diverged at step {step}: the loss or gradient norm was inf/NaN in {self.bad_in_row} "
            f"optimizer steps in a row (steps {self.streak_start}-{step}, train.max_bad_steps="
            f"{self.max_bad_steps}); their updates were skipped ({self.skipped_steps} skipped in all). "
            f"Last finite loss: {last}. Try a lower optim.lr (now {o.lr:g}), a longer optim.warmup (now "
            f"{o.warmup}), gradient clipping optim.grad_clip (now {o.grad_clip:g}), or check the data "
            f"around step {self.streak_start} for corrupt clips; resume from the last checkpoint.")


@torch.no_grad()
def check_finite_state(engine, ema, step: int) -> None:
    """Collective (every rank): raise NonFiniteStateError on every rank when any rank's fp32 master
    weights (online engine) or EMA shadows hold inf/NaN, before anything of a checkpoint is written."""
    names = dict(engine.module.named_parameters())
    bad = [f"online {n}" for n, p in names.items() if not bool(torch.isfinite(fp32_master(p)).all())]
    bad += [f"target {n}" for n, s in zip(ema.names, ema.shadows) if not bool(torch.isfinite(s).all())]
    device = ema.shadows[0].device  # this rank's device (the collective backend's)
    total = int(_all_reduce(torch.tensor([float(len(bad))], device=device)).item())
    if total:
        here = f"here: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}" if bad else "on another rank"
        raise NonFiniteStateError(
            f"refusing to save the checkpoint of step {step}: {total} weight tensors hold inf/NaN ({here}); "
            f"the last complete checkpoint stays `latest`")
