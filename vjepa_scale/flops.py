"""Model FLOPs of one V-JEPA training step, with attention counted at the real sequence lengths.

Convention (as in MFU reports): a multiply-add is 2 FLOPs; a trained network costs 3x its forward
(forward + backward), so its per-token linear cost is 6 FLOPs per parameter; the target encoder runs
forward only (2 per parameter). Activation recompute is hardware work, not model work: it is
reported separately and excluded from MFU.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from vjepa_scale.config import Config, resolve_vit_size
from vjepa_scale.masks import MaskBatch

# Dense bf16 peak TFLOP/s by device-name fragment (checked in order; first match wins).
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H20", 148.0),
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 125.0),
]


def device_peak_tflops(device: torch.device | str | None = None) -> Optional[float]:
    """Dense bf16 peak of a CUDA device from its name, or None (CPU, unknown card)."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_tflops_of(torch.cuda.get_device_name(device))


def peak_tflops_of(name: str) -> Optional[float]:
    """Dense bf16 peak of the card `torch.cuda.get_device_name` calls `name` (None: not in the table)."""
    for frag, peak in PEAK_BF16_TFLOPS:
        if frag in name:
            return peak
    return None


def _stack_fwd(width: int, depth: int, mlp_ratio: float, lengths: Sequence[int]) -> tuple[float, float]:
    """(linear, attention) forward FLOPs of `depth` blocks over sequences of the given lengths."""
    hidden = int(width * mlp_ratio)
    per_token = 2 * (4 * width * width + 2 * width * hidden)  # qkv + proj + fc1 + fc2
    tokens = sum(lengths)
    attn = 4 * width * sum(L * L for L in lengths)  # QK^T and AV
    return float(depth * per_token * tokens), float(depth * attn)


def _recomputed(depth: int, m) -> float:
    """Share of a stack's blocks that activation checkpointing recomputes (`models.vit.checkpoint_plan`)."""
    return round(m.checkpoint_fraction * depth) / depth


def train_flops(cfg: Config, masks: MaskBatch) -> dict[str, float]:
    """FLOPs of one optimizer micro-step on one rank's batch described by `masks`."""
    m = cfg.model
    dims = resolve_vit_size(m)
    sizes = masks.sample_tokens  # full-clip tokens per sample (they differ in a mixed batch)
    D, W = dims.width, m.pred_width
    patch = 2.0 * 3 * m.tubelet_size * m.patch_size ** 2 * D * sum(sizes)

    t_lin, t_attn = _stack_fwd(D, dims.depth, dims.mlp_ratio, sizes)
    target_fwd = t_lin + t_attn + patch

    e_lin, e_attn = _stack_fwd(D, dims.depth, dims.mlp_ratio, masks.ctx_lengths)

    pred_lengths = [a + b for a, b in zip(masks.ctx_lengths, masks.tgt_lengths)]
    p_lin, p_attn = _stack_fwd(W, m.pred_depth, m.pred_mlp_ratio, pred_lengths)
    predictor_fwd = p_lin + p_attn + 2.0 * D * W * (sum(masks.ctx_lengths) + sum(masks.tgt_lengths))
    tokens = 1 if m.mask_tokens == "shared" else masks.num_types
    mask_tokens = 2.0 * tokens * W * sum(masks.tgt_lengths)  # one-hot GEMM placing the mask tokens

    out = {
        "target_fwd": target_fwd,
        "encoder": 3 * (e_lin + e_attn) + 2 * patch,  # the patch embedding's input (video) needs no gradient
        "predictor": 3 * predictor_fwd + 2 * mask_tokens,  # the one-hot input needs no gradient
        "attention": t_attn + 3 * (e_attn + p_attn),
        # The recomputed blocks' forward again (not model FLOPs: MFU leaves it out).
        "recompute": (e_lin + e_attn) * _recomputed(dims.depth, m) + (p_lin + p_attn) * _recomputed(m.pred_depth, m),
    }
    out["total"] = out["target_fwd"] + out["encoder"] + out["predictor"]
    return out


def mfu(flops_per_s: float, peak_tflops: Optional[float]) -> Optional[float]:
    """Model FLOPs utilization in [0, 1], or None when the peak is unknown."""
    if not peak_tflops:
        return None
    return flops_per_s / (peak_tflops * 1e12)
