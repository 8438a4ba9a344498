"""EMA-update suite over the real encoder's parameter list (ViT-H/16 on GPU, ViT-tiny for quick).

Implementations: the fused multi-tensor Triton kernel; our torch reference (`_foreach_lerp_` then a
cast copy); and the reference implementation's style as baselines: `_foreach_mul_` +
`_foreach_add_` followed by a cast (`torch_foreach`), and a per-parameter `mul_().add_()` loop
followed by a cast (`torch_per_param`). Useful bytes per element: read shadow and master (fp32),
write shadow (fp32) and target (its dtype).
"""
from __future__ import annotations

import torch

from vjepa_scale.bench.common import rate_rows, time_ms, triton_runs_on
from vjepa_scale.config import ModelConfig
from vjepa_scale.kernels import ema_update_
from vjepa_scale.models.vit import VisionTransformer3D

MOMENTUM = 0.9996


def param_shapes(size: str, grid=(8, 24, 24)) -> list[torch.Size]:
    """Parameter shapes of the encoder of a named size (built on the meta device: no memory)."""
    with torch.device("meta"):
        enc = VisionTransformer3D(ModelConfig(size=size), grid)
    return [p.shape for p in enc.parameters()]


def _foreach_baseline(S, M, T, m):
    torch._foreach_mul_(S, m)
    torch._foreach_add_(S, M, alpha=1.0 - m)
    torch._foreach_copy_(T, S)


def _per_param_baseline(S, M, T, m):
    for s, x, t in zip(S, M, T):
        s.mul_(m).add_((1.0 - m) * x)
        t.copy_(s)


def run(device: str, quick: bool) -> list[dict]:
    cuda = torch.device(device).type == "cuda"
    size = "tiny" if quick else "huge"
    shapes = param_shapes(size)
    numels = [s.numel() for s in shapes]
    tdtype = torch.bfloat16 if cuda else torch.float32  # CPU training keeps fp32 targets
    S = [torch.randn(n, device=device) for n in numels]
    M = [torch.randn(n, device=device) for n in numels]
    T = [torch.empty(n, device=device, dtype=tdtype) for n in numels]
    total = sum(numels)
    nbytes = total * (4 + 4 + 4 + T[0].element_size())
    impls = {
        "torch_foreach": lambda: _foreach_baseline(S, M, T, MOMENTUM),
        "torch_per_param": lambda: _per_param_baseline(S, M, T, MOMENTUM),
        "torch_ref": lambda: ema_update_(S, M, T, MOMENTUM, backend="torch"),
    }
    if triton_runs_on(device):
        impls["triton"] = lambda: ema_update_(S, M, T, MOMENTUM, backend="triton")
    iters = 3 if quick else 20
    times = {k: time_ms(f, device, iters=iters) for k, f in impls.items()}
    case = f"EMA ViT-{size} ({len(numels)} tensors, {total / 1e6:.1f}M params), target {str(tdtype).replace('torch.', '')}"
    return rate_rows(case, times, nbytes, device, "torch_foreach")
