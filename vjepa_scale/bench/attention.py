"""Attention suite: variable-length backends vs padding at the real ViT-H@384 context lengths.

Sequence lengths come from `MultiBlockMasker` with the recipe's two mask types on grid 8x24x24
(context of both types, 2B sequences, packed). Every backend available on the device is timed
forward and forward+backward; `padded` (pad to the longest sequence, key-padding mask) is the
reference's behaviour and the baseline. `pad_flop_ratio` = S * max_len^2 / sum(len^2): the
speed-up that attention time proportional to the real tokens would give.
"""
from __future__ import annotations

import torch

from vjepa_scale.attention import available_backends, varlen_attention
from vjepa_scale.bench.common import rate_rows, time_ms
from vjepa_scale.config import MaskConfig
from vjepa_scale.masks import MultiBlockMasker

GRID = (8, 24, 24)


def run(device: str, quick: bool) -> list[dict]:
    cuda = torch.device(device).type == "cuda"
    B, H, Dh = (1, 1, 80) if quick else (10, 16, 80)  # ViT-H: 16 heads of 80
    dtype = torch.bfloat16 if cuda else torch.float32
    masks = MultiBlockMasker(MaskConfig(), GRID)(B, step=0)
    lengths = masks.ctx_lengths
    cu = masks.ctx_cu_seqlens.to(device)
    Lmax, S, T = masks.ctx_max_seqlen, len(lengths), sum(lengths)
    ratio = S * Lmax ** 2 / sum(L * L for L in lengths)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(T, H, Dh, device=device, dtype=dtype, generator=g) for _ in range(3))
    fwd_flops = 4 * H * Dh * sum(L * L for L in lengths)
    iters = 2 if quick else 10
    times_f, times_fb = {}, {}
    for backend in available_backends(device):
        if not cuda and backend != "padded" and backend != "nested":
            continue
        try:
            times_f[backend] = time_ms(lambda b=backend: varlen_attention(q, k, v, cu, Lmax, b), device,
                                       warmup=1 if quick else 3, iters=iters)
            qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

            def fb(b=backend):
                o = varlen_attention(qg, kg, vg, cu, Lmax, b)
                torch.autograd.grad(o, (qg, kg, vg), torch.ones_like(o))

            times_fb[backend] = time_ms(fb, device, warmup=1 if quick else 3, iters=iters)
        except (RuntimeError, NotImplementedError) as e:  # e.g. a kernel without this dtype/head dim
            times_f.pop(backend, None)
            print(f"[bench attention] {backend} skipped: {type(e).__name__}: {str(e)[:200]}")
    desc = (f"{S} seqs, len {min(lengths)}-{Lmax} (mean {T / S:.0f}), H={H} Dh={Dh} "
            f"{str(dtype).replace('torch.', '')}")
    rows = rate_rows(f"varlen fwd, {desc}", times_f, None, device, "padded", pad_flop_ratio=round(ratio, 2))
    for r in rows:
        r["tflops"] = fwd_flops / (r["time_ms"] * 1e-3) / 1e12
    rows_fb = rate_rows(f"varlen fwd+bwd, {desc}", times_fb, None, device, "padded", pad_flop_ratio=round(ratio, 2))
    for r in rows_fb:
        r["tflops"] = 3.5 * fwd_flops / (r["time_ms"] * 1e-3) / 1e12  # bwd = 2.5x fwd (FlashAttention count)
    return rows + rows_fb
