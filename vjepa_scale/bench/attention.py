"""Attention suite: variable-length backends vs padding at the real ViT-H@384 context lengths.

Sequence lengths come from `MultiBlockMasker` with the recipe's two mask types on grid 8x24x24
(context of both types, 2B sequences, packed). Every backend available on the device is timed
forward and forward+backward; `padded` (pad to the longest sequence, key-padding mask) is the
reference's behaviour and the baseline. `pad_flop_ratio` = S * max_len^2 / sum(len^2): the
speed-up that attention time proportional to the real tokens would give.

The dense cases time SDPA's kernels (`model.sdpa_backend`) at the two full-length shapes of a
ViT-H@384 step: the predictor (2B sequences of all 4608 tokens, 16 heads of 24) and the target
encoder (B clips, 16 heads of 80), against torch's own choice (`auto`) and, where present,
`varlen_attn` on the same tokens packed (what the predictor ran before it took the dense path).
"""
from __future__ import annotations

import torch

from vjepa_scale.attention import SDPA_BACKENDS, available_backends, dense_attention, varlen_attention
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
    return rows + rows_fb + dense_rows(device, quick)


def dense_rows(device: str, quick: bool) -> list[dict]:
    """SDPA kernels at the step's full-length shapes, forward+backward (and forward for the target)."""
    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    B = 1 if quick else 8
    L = 64 if quick else GRID[0] * GRID[1] * GRID[2]
    shapes = [("predictor", 2 * B, 16, 24, True), ("target encoder", B, 16, 80, False),
              ("target encoder", B, 16, 80, True)]
    kernels = [k for k in SDPA_BACKENDS if cuda and k != "math" or not cuda and k in ("auto", "math")]
    iters, warmup = (2, 1) if quick else (10, 3)
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for name, S, H, Dh, backward in shapes:
        q, k, v = (torch.randn(S, L, H, Dh, device=device, dtype=dtype, generator=g, requires_grad=backward)
                   for _ in range(3))
        fwd_flops = 4 * S * H * Dh * L * L
        calls = {kern: (lambda kern=kern: dense_attention(q, k, v, kern)) for kern in kernels}
        if cuda and "torch_varlen" in available_backends(device):
            from torch.nn.attention.varlen import varlen_attn

            cu = torch.arange(0, (S + 1) * L, L, device=device, dtype=torch.int32)
            calls["torch_varlen (packed)"] = lambda: varlen_attn(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                                                                 cu, cu, L, L)
        times = {}
        for kern, call in calls.items():
            fn = call
            if backward:
                def fn(call=call):
                    o = call()
                    torch.autograd.grad(o, (q, k, v), torch.ones_like(o))
            try:
                with torch.set_grad_enabled(backward):
                    times[kern] = time_ms(fn, device, warmup=warmup, iters=iters)
            except (RuntimeError, NotImplementedError) as e:  # a kernel without this head dim / dtype
                print(f"[bench attention] dense {name} {kern} skipped: {type(e).__name__}: {str(e)[:200]}")
        what = "fwd+bwd" if backward else "fwd"
        case = f"dense SDPA {what}, {name}: {S} seqs x {L}, H={H} Dh={Dh} {str(dtype).replace('torch.', '')}"
        for r in rate_rows(case, times, None, device, "auto"):
            r["tflops"] = (3.5 if backward else 1.0) * fwd_flops / (r["time_ms"] * 1e-3) / 1e12
            rows.append(r)
    return rows
