"""Attention suite: variable-length backends vs padding at real context lengths, and the patch embed.

Sequence lengths come from `MultiBlockMasker` (context of both mask types, 2B sequences, packed).
On a GPU: the recipe's two mask types on ViT-H@384's grid 8x24x24 (B=10, 16 heads of 80, bf16);
rows are named by backend (`cudnn`, `flash_attn`, `torch_varlen`, `nested`, `bucketed`, `padded`).
On CPU (quick): the cpu_demo shape (grid 2x4x4, B=4, 3 heads of 32) and a ViT-tiny step's encoder
(128 px, 8 frames: grid 4x8x8, the paper's masks, B=4, 3 heads of 64), fp32, plus a small ViT-H
case (B=1, one head). Every backend available on the device is timed forward and forward+backward,
with `per_sequence` (one SDPA call per sequence) as a reference row; `padded` (pad to the longest
sequence, key-padding mask) is the reference's behaviour and the baseline. `pad_flop_ratio` =
S * max_len^2 / sum(len^2): the speed-up that attention time proportional to the real tokens would
give.

The dense cases time SDPA's kernels (`model.sdpa_backend`) at the two full-length shapes of a
ViT-H@384 step: the predictor (2B sequences of all 4608 tokens, 16 heads of 24) and the target
encoder (B clips, 16 heads of 80), against torch's own choice (`auto`) and, where present,
`varlen_attn` on the same tokens packed (what the predictor ran before it took the dense path).

The patch-embed case times the tubelet embedding as a Conv3d (`conv3d`, the baseline) and as the
model computes it (`reshape+linear`, `PatchEmbed3D`), forward+backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vjepa_scale.attention import SDPA_BACKENDS, available_backends, dense_attention, varlen_attention
from vjepa_scale.bench.common import rate_rows, time_ms
from vjepa_scale.config import MaskConfig, MaskSpec
from vjepa_scale.masks import MultiBlockMasker

GRID = (8, 24, 24)
CPU_DEMO_MASKS = MaskConfig(types=[MaskSpec(2, (0.15, 0.15)), MaskSpec(1, (0.5, 0.5))])  # configs/cpu_demo.yaml


def run(device: str, quick: bool) -> list[dict]:
    if quick:
        cases = [("cpu_demo", (2, 4, 4), CPU_DEMO_MASKS, 4, 3, 32),
                 ("ViT-tiny 128px 8f", (4, 8, 8), MaskConfig(), 4, 3, 64),
                 ("ViT-H@384 1 clip 1 head", GRID, MaskConfig(), 1, 1, 80)]
    else:
        cases = [("ViT-H@384", GRID, MaskConfig(), 10, 16, 80)]  # ViT-H: 16 heads of 80
    rows = []
    for name, grid, mask_cfg, B, H, Dh in cases:
        rows += varlen_rows(device, quick, name, grid, mask_cfg, B, H, Dh)
    return rows + dense_rows(device, quick) + patch_embed_rows(device, quick)


def backend_preflight(device: str, backend: str = "auto") -> tuple[str, str | None]:
    """(the backend, None or what went wrong): one forward + backward of `backend` (`auto`: what the models
    resolve on `device` in bf16 / fp32 on CPU) at the step suite's context shape (ViT-H@384, B=10, 16 heads
    of 80 on CUDA; the cpu_demo shape on CPU), checked against `padded` within bf16 rounding. Seconds on a
    GPU: tools/device_check.sh runs it before the step stages and, when it fails, runs them on another backend."""
    from vjepa_scale.attention import resolve_attention_backend

    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    grid, mask_cfg, B, H, Dh = (GRID, MaskConfig(), 10, 16, 80) if cuda else ((2, 4, 4), CPU_DEMO_MASKS, 4, 3, 32)
    try:
        name = resolve_attention_backend(backend, device, dtype)
        masks = MultiBlockMasker(mask_cfg, grid)(B, step=0)
        cu, Lmax, T = masks.ctx_cu_seqlens.to(device), masks.ctx_max_seqlen, sum(masks.ctx_lengths)
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(T, H, Dh, device=device, dtype=dtype, generator=g).requires_grad_() for _ in range(3))
        outs = []
        for impl in (name, "padded"):
            o = varlen_attention(q, k, v, cu, Lmax, impl)
            outs.append((o.float(), *torch.autograd.grad(o, (q, k, v), torch.ones_like(o))))
        for what, a, b in zip(("out", "dq", "dk", "dv"), outs[0], outs[1]):
            err = (a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(), 1e-6)
            if not err < (0.05 if cuda else 1e-4):  # `not`: NaN fails too
                return name, f"{what} differs from padded by {err:.3g} (relative to its largest value)"
        return name, None
    except Exception as e:  # cuDNN's errors are no RuntimeError
        return backend, f"{type(e).__name__}: {str(e)[:300]}"


def _per_sequence(q_THD, k_THD, v_THD, lengths: list[int]):
    """One SDPA call per sequence (reference row)."""
    outs = [F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)
            for q, k, v in zip(q_THD.split(lengths), k_THD.split(lengths), v_THD.split(lengths)) if q.shape[0]]
    return torch.cat(outs)


def varlen_rows(device: str, quick: bool, name: str, grid, mask_cfg: MaskConfig, B: int, H: int, Dh: int) -> list[dict]:
    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    masks = MultiBlockMasker(mask_cfg, grid)(B, step=0)
    lengths = list(masks.ctx_lengths)
    cu = masks.ctx_cu_seqlens.to(device)
    Lmax, S, T = masks.ctx_max_seqlen, len(lengths), sum(lengths)
    ratio = S * Lmax ** 2 / sum(L * L for L in lengths)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(T, H, Dh, device=device, dtype=dtype, generator=g) for _ in range(3))
    fwd_flops = 4 * H * Dh * sum(L * L for L in lengths)
    iters, warmup = (5, 2) if quick else (10, 3)
    calls = {b: (lambda qq, kk, vv, b=b: varlen_attention(qq, kk, vv, cu, Lmax, b)) for b in available_backends(device)}
    calls["per_sequence"] = lambda qq, kk, vv: _per_sequence(qq, kk, vv, lengths)
    times_f, times_fb = {}, {}
    for impl, call in calls.items():
        try:
            times_f[impl] = time_ms(lambda call=call: call(q, k, v), device, warmup=warmup, iters=iters)
            qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

            def fb(call=call):
                o = call(qg, kg, vg)
                torch.autograd.grad(o, (qg, kg, vg), torch.ones_like(o))

            times_fb[impl] = time_ms(fb, device, warmup=warmup, iters=iters)
        except Exception as e:  # a kernel without this dtype/head dim, a graph cuDNN does not support, ...
            times_f.pop(impl, None)
            print(f"[bench attention] {impl} skipped: {type(e).__name__}: {str(e)[:200]}")
    desc = (f"{name}: {S} seqs, len {min(lengths)}-{Lmax} (mean {T / S:.0f}), H={H} Dh={Dh} "
            f"{str(dtype).replace('torch.', '')}")
    rows = rate_rows(f"varlen fwd, {desc}", times_f, None, device, "padded", pad_flop_ratio=round(ratio, 2))
    for r in rows:
        r["tflops"] = fwd_flops / (r["time_ms"] * 1e-3) / 1e12
    rows_fb = rate_rows(f"varlen fwd+bwd, {desc}", times_fb, None, device, "padded", pad_flop_ratio=round(ratio, 2))
    for r in rows_fb:
        r["tflops"] = 3.5 * fwd_flops / (r["time_ms"] * 1e-3) / 1e12  # bwd = 2.5x fwd (FlashAttention count)
    return rows + rows_fb


def patch_embed_rows(device: str, quick: bool) -> list[dict]:
    """Tubelet embedding forward+backward: Conv3d vs the model's reshape + linear."""
    from vjepa_scale.models.vit import PatchEmbed3D

    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    # ViT-H@384 (10 clips of 16x384x384, width 1280) on a GPU; a ViT-tiny 128 px step's batch on CPU
    B, T, HW, D = (4, 8, 128, 192) if quick else (10, 16, 384, 1280)
    pe = PatchEmbed3D(3, D, 2, 16).to(device, dtype)
    video = torch.randn(B, 3, T, HW, HW, device=device, dtype=dtype)
    calls = {"conv3d": lambda: F.conv3d(video, pe.weight, pe.bias, stride=(2, 16, 16)).flatten(2).transpose(1, 2),
             "reshape+linear": lambda: pe(video)[0]}
    times = {}
    for impl, call in calls.items():
        def fb(call=call):
            out = call()
            torch.autograd.grad(out, (pe.weight, pe.bias), torch.ones_like(out))

        times[impl] = time_ms(fb, device, warmup=2 if quick else 3, iters=5 if quick else 10)
    N = (T // 2) * (HW // 16) ** 2
    flops = 2 * 2 * B * N * D * 3 * 2 * 16 * 16  # forward GEMM + weight-grad GEMM (the video needs no grad)
    case = f"patch embed fwd+bwd: {B}x3x{T}x{HW}x{HW} -> {N} tokens x {D} {str(dtype).replace('torch.', '')}"
    rows = rate_rows(case, times, None, device, "conv3d")
    for r in rows:
        r["tflops"] = flops / (r["time_ms"] * 1e-3) / 1e12
    return rows


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
            except Exception as e:  # a kernel without this head dim / dtype (cuDNN's errors are no RuntimeError)
                print(f"[bench attention] dense {name} {kern} skipped: {type(e).__name__}: {str(e)[:200]}")
        what = "fwd+bwd" if backward else "fwd"
        case = f"dense SDPA {what}, {name}: {S} seqs x {L}, H={H} Dh={Dh} {str(dtype).replace('torch.', '')}"
        for r in rate_rows(case, times, None, device, "auto"):
            r["tflops"] = (3.5 if backward else 1.0) * fwd_flops / (r["time_ms"] * 1e-3) / 1e12
            rows.append(r)
    return rows
