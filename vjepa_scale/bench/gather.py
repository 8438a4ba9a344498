"""Masked-gather suite: encoder-input gather (+pos) forward and backward, target LayerNorm gather.

Indices are real ViT-H@384 masks (`MultiBlockMasker`, grid 8x24x24, both mask types packed).
The backward has two Triton rows: `triton` builds its destination-row map (a sort) on the device in
each call, `triton_map` takes the one built with the masks (`MaskBatch.ctx_scatter`), as training does.
Baselines follow the reference implementation: the position embedding is added to the whole
(B, N, D) clip, then `torch.gather` with an expanded int64 index; targets are LayerNormed over the
whole clip, then gathered. GB/s counts the useful bytes (rows read and written, indices, one
position table), the same for every implementation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vjepa_scale.bench.common import rate_rows, time_ms, triton_runs_on
from vjepa_scale.config import MaskConfig
from vjepa_scale.kernels import layernorm_gather, masked_gather
from vjepa_scale.masks import MultiBlockMasker

GRID = (8, 24, 24)


def _baseline_gather(x_BND, idx, pos_ND):
    B, N, D = x_BND.shape
    xp = (x_BND + pos_ND).reshape(B * N, D)
    return torch.gather(xp, 0, idx.long()[:, None].expand(-1, D))


def _baseline_ln_gather(h_BND, idx, eps):
    B, N, D = h_BND.shape
    hn = F.layer_norm(h_BND, (D,), eps=eps).reshape(B * N, D)
    return torch.gather(hn, 0, idx.long()[:, None].expand(-1, D))


def run(device: str, quick: bool) -> list[dict]:
    cuda = torch.device(device).type == "cuda"
    B, D = (2, 256) if quick else (10, 1280)
    dtype = torch.bfloat16 if cuda else torch.float32
    iters = 3 if quick else 20
    masks = MultiBlockMasker(MaskConfig(), GRID)(B, step=0)
    N = masks.num_tokens
    ctx_idx = masks.ctx_idx.to(device)
    tgt_idx = masks.tgt_idx.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, N, D, device=device, dtype=dtype, generator=g)
    pos = torch.randn(N, D, device=device, dtype=dtype, generator=g)
    es = x.element_size()
    impls = {"torch_baseline": lambda x_, i_, p_: _baseline_gather(x_, i_, p_),
             "torch_ref": lambda x_, i_, p_: masked_gather(x_, i_, p_, backend="torch")}
    if triton_runs_on(device):
        impls["triton"] = lambda x_, i_, p_: masked_gather(x_, i_, p_, backend="triton")
    scatter = masks.ctx_scatter.to(device)  # built with the masks, as the data workers do in training
    rows = []
    shape = f"B={B} N={N} D={D} {str(dtype).replace('torch.', '')}"

    T = ctx_idx.numel()
    fwd_bytes = 2 * T * D * es + T * ctx_idx.element_size() + N * D * es
    times = {k: time_ms(lambda f=f: f(x, ctx_idx, pos), device, iters=iters) for k, f in impls.items()}
    rows += rate_rows(f"gather+pos fwd, {T} ctx tokens, {shape}", times, fwd_bytes, device, "torch_baseline")

    # The model's path: the patch embedding yields (B, D, N), seen as a (B, N, D) view.
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    times = {k: time_ms(lambda f=f: f(xt, ctx_idx, pos), device, iters=iters) for k, f in impls.items()}
    rows += rate_rows(f"gather+pos fwd from (B,D,N) patch-embed layout, {shape}", times, fwd_bytes, device,
                      "torch_baseline")

    bwd_bytes = T * D * es + B * N * D * es + T * ctx_idx.element_size()
    times = {}
    bwd_impls = dict(impls)
    if "triton" in impls:  # what training runs: the backward map comes with the masks
        bwd_impls["triton_map"] = lambda x_, i_, p_: masked_gather(x_, i_, p_, backend="triton", scatter=scatter)
    for k, f in bwd_impls.items():
        xg = x.detach().requires_grad_()
        out = f(xg, ctx_idx, pos)
        gy = torch.randn_like(out)
        times[k] = time_ms(lambda out=out, xg=xg, gy=gy: torch.autograd.grad(out, xg, gy, retain_graph=True),
                           device, iters=iters)
    rows += rate_rows(f"gather+pos bwd (scatter), {shape}", times, bwd_bytes, device, "torch_baseline")

    Tt = tgt_idx.numel()
    ln_bytes = 2 * Tt * D * es + Tt * tgt_idx.element_size()
    ln_impls = {"torch_baseline": lambda: _baseline_ln_gather(x, tgt_idx, 1e-5),
                "torch_ref": lambda: layernorm_gather(x, tgt_idx, 1e-5, backend="torch")}
    if "triton" in impls:
        ln_impls["triton"] = lambda: layernorm_gather(x, tgt_idx, 1e-5, backend="triton")
    with torch.no_grad():
        times = {k: time_ms(f, device, iters=iters) for k, f in ln_impls.items()}
    rows += rate_rows(f"layernorm+gather fwd, {Tt} tgt tokens, {shape}", times, ln_bytes, device, "torch_baseline")
    return rows
