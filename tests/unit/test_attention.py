"""Packed variable-length attention: every backend against per-sequence SDPA and the padded path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import require
from vjepa_scale.attention import (SDPA_BACKENDS, Packed, available_backends, bucket_plan, bucketed_attention,
                                   dense_attention, padded_attention, resolve_attention_backend, varlen_attention)
from vjepa_scale.attention_cudnn import bucket_seqlen


def _problem(lengths, H=3, Dh=80, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, H, Dh, generator=g, dtype=dtype).to(device).requires_grad_() for _ in range(3))
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return q, k, v, cu.to(device), max(lengths)


def _per_sequence(q, k, v, cu):
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b > a:
            o = F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (q, k, v)))
            outs.append(o.transpose(0, 1))
    return torch.cat(outs)


LENGTHS = [37, 1, 0, 120, 64, 5]


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_backend_matches_per_sequence_and_padded(backend):
    q, k, v, cu, L = _problem(LENGTHS)
    out = varlen_attention(q, k, v, cu, L, backend)
    ref = _per_sequence(q, k, v, cu)
    pad = padded_attention(q, k, v, cu, L)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, pad, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(pad, (q, k, v), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_equal_lengths_take_the_dense_path_exactly(backend):
    """All sequences of one length: packed attention runs one rectangular SDPA call, same numbers."""
    q, k, v, cu, L = _problem([48, 48, 48])
    out = varlen_attention(q, k, v, cu, L, backend)
    torch.testing.assert_close(out, _per_sequence(q, k, v, cu), rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref = torch.autograd.grad(padded_attention(q, k, v, cu, L), (q, k, v), g)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the forced SDPA kernel is used: math on CPU matches, an unknown name is refused
    rect = [x.view(3, 48, 3, 80) for x in (q, k, v)]
    torch.testing.assert_close(dense_attention(*rect, "math").reshape(out.shape), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="model.sdpa_backend: unknown SDPA kernel 'xformers'"):
        dense_attention(*rect, "xformers")


def test_backend_resolution_and_errors():
    assert resolve_attention_backend("auto", "cpu") == "bucketed"  # measured fastest exact on CPU
    with pytest.raises(ValueError, match="attention_backend"):
        resolve_attention_backend("xformers", "cpu")
    with pytest.raises(RuntimeError, match="flash_attn"):
        resolve_attention_backend("flash_attn", "cpu")


def test_auto_never_picks_cudnn_on_cpu_and_asking_for_it_names_the_key():
    for dtype in (torch.float32, torch.bfloat16, torch.float16, None):
        assert resolve_attention_backend("auto", "cpu", dtype) == "bucketed"
    assert "cudnn" not in available_backends("cpu")
    with pytest.raises(RuntimeError, match=r"model.attention_backend: 'cudnn' is not available on cpu; it needs "
                                           r"CUDA and the nvidia-cudnn-frontend package"):
        resolve_attention_backend("cudnn", "cpu", torch.bfloat16)


@pytest.mark.parametrize("lengths, call_cost", [
    ([200, 3, 200, 7, 90, 88, 0, 1], 3e5),  # equal-length group, masked groups, an empty sequence
    ([37, 1, 0, 120, 64, 5], 0.0),  # free calls: one group per distinct length
    ([50, 40, 30], 1e12),  # expensive calls: one padded group
])
def test_bucketed_matches_per_sequence_with_gradients(lengths, call_cost, monkeypatch):
    import vjepa_scale.attention as attn

    monkeypatch.setattr(attn, "SDPA_CALL_COST", call_cost)
    q, k, v, cu, L = _problem(lengths, H=2, Dh=16)
    out = bucketed_attention(q, k, v, Packed(cu, L))
    ref = _per_sequence(q, k, v, cu)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bucket_plan_groups_by_cost():
    # sorted longest first, contiguous groups, every non-empty sequence exactly once
    groups = bucket_plan([200, 3, 200, 7, 90, 88, 0, 1], width=96)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3, 4, 5, 7]
    flat = [i for g in groups for i in g]
    lens = [200, 3, 200, 7, 90, 88, 0, 1]
    assert [lens[i] for i in flat] == sorted((L for L in lens if L), reverse=True)
    assert bucket_plan([5, 6, 7], width=64, call_cost=1e12) == [[2, 1, 0]]  # padding is cheaper
    assert bucket_plan([5, 6, 7], width=64, call_cost=0.0) == [[2], [1], [0]]  # calls are free
    assert bucket_plan([0, 0], width=64) == []


def test_bucket_seqlen_bounds_the_number_of_graphs():
    for n in range(1, 20000, 7):
        b = bucket_seqlen(n)
        assert b >= n and b % 64 == 0 and (n <= 64 or b <= n * 1.125 + 63)
    assert bucket_seqlen(1) == 64 and bucket_seqlen(1024) == 1024 and bucket_seqlen(1025) == 1152
    # ViT-H@384 context lengths (up to 4608 tokens) fall in a few dozen buckets
    assert len({bucket_seqlen(n) for n in range(1, 4609)}) <= 40


def test_cudnn_graph_description_validates_without_a_gpu():
    """The forward and backward cuDNN graphs pass the frontend's own validation (no device needed)."""
    require("cudnn")  # nvidia-cudnn-frontend, a dev extra
    from vjepa_scale.attention_cudnn import _U, describe_cudnn_graph

    H, Dh = 3, 80
    qkv = (3 * H * Dh, Dh, 1)  # q, k, v are views of one fused qkv output
    packed_ = (H * Dh, Dh, 1)
    strides = {_U.Q: qkv, _U.K: qkv, _U.V: qkv, _U.O: packed_, _U.DO: packed_, _U.STATS: (H, 1, 1)}
    for backward in (False, True):
        describe_cudnn_graph(backward, None, torch.bfloat16, 4, H, Dh, bucket_seqlen(300), strides, bucket_seqlen(900))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flash_attn", "torch_varlen", "nested", "bucketed", "padded"])
def test_cuda_backends_bf16(backend):
    """Ragged lengths (one of 1, an empty one) in bf16: forward and q / k / v gradients against fp32
    per-sequence SDPA, at bf16 tolerance."""
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not available")
    q, k, v, cu, L = _problem(LENGTHS, dtype=torch.bfloat16, device="cuda")
    out = varlen_attention(q, k, v, cu, L, backend)
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = _per_sequence(qf, kf, vf, cu)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref.device)  # a cotangent
    grads = torch.autograd.grad(out, (q, k, v), g.to(out.dtype))
    for name, a, b in zip("qkv", grads, torch.autograd.grad(ref, (qf, kf, vf), g)):
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=5e-2, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sdpa", [s for s in SDPA_BACKENDS if s != "math"])
@pytest.mark.parametrize("Dh", [24, 80])  # the ViT-H predictor's and encoder's head dims
def test_cuda_sdpa_kernels_on_equal_lengths(sdpa, Dh):
    """The predictor's shape (equal lengths) through each SDPA kernel: forward and grads vs fp32."""
    q, k, v, cu, L = _problem([256, 256], H=4, Dh=Dh, dtype=torch.bfloat16, device="cuda")
    rect = [x.view(2, 256, 4, Dh) for x in (q, k, v)]
    try:
        out = dense_attention(*rect, sdpa)
    except RuntimeError as e:
        pytest.skip(f"SDPA kernel {sdpa} does not take this call here: {str(e)[:120]}")
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = _per_sequence(qf, kf, vf, cu)
    torch.testing.assert_close(out.reshape(ref.shape).float(), ref, rtol=2e-2, atol=2e-2)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out.reshape(ref.shape), (q, k, v), g.to(out.dtype))
    for a, b in zip(grads, torch.autograd.grad(ref, (qf, kf, vf), g)):
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=5e-2)


def test_attention_layer_resolves_its_backend_once_per_dtype(monkeypatch):
    """The configured backend is resolved on a layer's first forward at a (device type, dtype), not per call."""
    from vjepa_scale.attention import Packed
    from vjepa_scale.models import vit

    calls = []
    real = vit.resolve_attention_backend
    monkeypatch.setattr(vit, "resolve_attention_backend", lambda *a: calls.append(a[1:]) or real(*a))
    layer = vit.Attention(48, 3, backend="auto")
    cu = torch.tensor([0, 7, 10], dtype=torch.int32)
    packed = Packed(cu, 7)
    x = torch.randn(10, 48)
    outs = [layer(x, packed, None) for _ in range(3)]
    assert len(calls) == 1 and all(torch.equal(o, outs[0]) for o in outs)
    assert layer.resolved_backend(x.device, x.dtype) == resolve_attention_backend("auto", "cpu", torch.float32)
    layer.to(torch.bfloat16)
    for _ in range(2):
        layer(x.bfloat16(), packed, None)
    assert [dt for _, dt in calls] == [torch.float32, torch.bfloat16]
    with pytest.raises(RuntimeError, match="flash_attn"):  # an unavailable backend still fails on first use
        vit.Attention(48, 3, backend="flash_attn")(x, packed, None)
