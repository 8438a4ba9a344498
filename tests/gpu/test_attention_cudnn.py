"""The `cudnn` packed-attention backend (nvidia-cudnn-frontend) on a GPU: outputs and gradients
against `padded` and against each sequence alone, and its bounded graph cache. Skips without CUDA
or without the package."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjepa_scale.attention import (Packed, available_backends, padded_attention, resolve_attention_backend,
                                   varlen_attention)
from vjepa_scale.attention_cudnn import bucket_seqlen, cudnn_graph_cache

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(torch.cuda.is_available() and "cudnn" not in available_backends("cuda"),
                       reason="needs nvidia-cudnn-frontend (pip install .[cudnn])"),
]

LENGTHS = [37, 1, 0, 120, 64, 5, 300]


def _problem(lengths, H, Dh, dtype, seed=0, qkv_views=False):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    if qkv_views:  # as in the model: q, k, v are views of one fused (T, 3, H, Dh) output
        qkv = torch.randn(T, 3, H, Dh, generator=g).to("cuda", dtype).requires_grad_()
        q, k, v = qkv.unbind(1)
        leaves = (qkv,)
    else:
        q, k, v = (torch.randn(T, H, Dh, generator=g).to("cuda", dtype).requires_grad_() for _ in range(3))
        leaves = (q, k, v)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return q, k, v, leaves, cu.cuda(), max(lengths)


def _per_sequence(q, k, v, cu):
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b > a:
            outs.append(F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (q, k, v))).transpose(0, 1))
    return torch.cat(outs)


def test_auto_picks_cudnn_at_half_precision_only():
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16) == "cudnn"
    assert resolve_attention_backend("auto", "cuda", torch.float32) != "cudnn"
    with pytest.raises(RuntimeError, match="model.attention_backend: 'cudnn' takes fp16/bf16"):
        resolve_attention_backend("cudnn", "cuda", torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("Dh", [64, 80, 96])
@pytest.mark.parametrize("qkv_views", [False, True])
def test_cudnn_matches_padded_and_per_sequence(dtype, Dh, qkv_views):
    H = 4
    q, k, v, leaves, cu, L = _problem(LENGTHS, H, Dh, dtype, qkv_views=qkv_views)
    out = varlen_attention(q, k, v, cu, L, "cudnn")
    assert out.shape == q.shape and out.dtype == dtype
    # references in fp32 from the same (rounded) inputs
    ref_leaves = tuple(x.detach().float().requires_grad_() for x in leaves)
    rq, rk, rv = ref_leaves[0].unbind(1) if qkv_views else ref_leaves
    ref_seq = _per_sequence(rq, rk, rv, cu)
    ref_pad = padded_attention(rq, rk, rv, cu, L)
    tol = dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), ref_seq, **tol)
    torch.testing.assert_close(out.float(), ref_pad, **tol)
    # the same-dtype padded path agrees about as well as two half-precision kernels can
    torch.testing.assert_close(out.float(), padded_attention(q, k, v, cu, L).float(), **tol)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).cuda()
    grads = torch.autograd.grad(out, leaves, g.to(dtype))
    for ref in (ref_seq, ref_pad):
        ref_grads = torch.autograd.grad(ref, ref_leaves, g, retain_graph=True)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=5e-2)


def test_cudnn_in_an_attention_layer_with_checkpointing():
    """Through the model's Attention layer under bf16 autocast, with activation recompute."""
    from torch.utils.checkpoint import checkpoint

    from vjepa_scale.models.vit import Attention

    layer = Attention(256, 4, backend="cudnn").cuda()
    cu = torch.tensor([0, 100, 130, 400], dtype=torch.int32, device="cuda")
    x = torch.randn(400, 256, device="cuda", requires_grad=True)
    with torch.autocast("cuda", torch.bfloat16):
        y = checkpoint(layer, x, Packed(cu, 270), None, use_reentrant=False)
        layer_ref = Attention(256, 4, backend="padded").cuda()
        layer_ref.load_state_dict(layer.state_dict())
        y_ref = layer_ref(x, Packed(cu, 270), None)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=3e-2, atol=3e-2)
    gx, = torch.autograd.grad(y.float().sum(), x)
    gx_ref, = torch.autograd.grad(y_ref.float().sum(), x)
    torch.testing.assert_close(gx, gx_ref, rtol=5e-2, atol=5e-2)


def test_graph_cache_is_bounded_and_reused_across_bucketed_lengths():
    cache = cudnn_graph_cache()
    cache.clear()
    H, Dh = 2, 64
    # lengths within one max_seqlen bucket and one total-token bucket reuse the same two graphs
    for Lmax in (130, 150, 170, 190):
        q, k, v, leaves, cu, L = _problem([Lmax, 100, 60], H, Dh, torch.bfloat16)
        assert bucket_seqlen(L) == 192
        out = varlen_attention(q, k, v, cu, L, "cudnn")
        torch.autograd.grad(out, leaves, torch.ones_like(out))
    assert len(cache) <= 4 and cache.misses <= 4  # fwd + bwd graphs, at most one total-token bucket change
    # many distinct buckets: the cache never grows past its bound
    maxsize = cache.maxsize
    cache.maxsize = 3
    try:
        for Lmax in range(100, 1200, 97):
            q, k, v, leaves, cu, L = _problem([Lmax, 7], H, Dh, torch.bfloat16)
            out = varlen_attention(q, k, v, cu, L, "cudnn")
            torch.autograd.grad(out, leaves, torch.ones_like(out))
            assert len(cache) <= 3
    finally:
        cache.maxsize = maxsize
        cache.clear()
