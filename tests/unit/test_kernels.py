"""Kernel references and dispatch (pure torch; the Triton kernels are in test_kernels_triton.py, the
package without triton in integration/test_packaging.py)."""
import pytest
import torch
import torch.nn.functional as F

from vjepa_scale.kernels import backend as kb
from vjepa_scale.kernels import ema_update_, layernorm_gather, masked_gather
from vjepa_scale.kernels.ema import ema_update_reference
from vjepa_scale.kernels.gather import layernorm_gather_reference, masked_gather_reference


def test_masked_gather_reference_matches_loop():
    torch.manual_seed(0)
    B, N, D = 2, 5, 3
    x, pos = torch.randn(B, N, D), torch.randn(N, D)
    idx = torch.tensor([7, 0, 4, 9, 7], dtype=torch.int32)
    out = masked_gather(x, idx, pos)
    want = torch.stack([x[i // N, i % N] + pos[i % N] for i in idx.tolist()])
    assert torch.equal(out, want)
    assert masked_gather(x, idx[:0], pos).shape == (0, D)


def test_masked_gather_reference_backward_accumulates_duplicates():
    x = torch.zeros(1, 4, 2, requires_grad=True)
    idx = torch.tensor([1, 3, 1, 1])
    g = torch.arange(8.0).view(4, 2)
    masked_gather(x, idx).backward(g)
    want = torch.zeros(4, 2)
    want[1] = g[0] + g[2] + g[3]
    want[3] = g[1]
    assert torch.equal(x.grad[0], want)


def test_layernorm_gather_reference():
    torch.manual_seed(0)
    h = torch.randn(2, 6, 5)
    idx = torch.tensor([11, 2, 6])
    out = layernorm_gather(h, idx, 1e-6)
    rows = h.reshape(12, 5)[idx]
    want = (rows - rows.mean(-1, keepdim=True)) / torch.sqrt(rows.var(-1, unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(out, want)


def test_ema_reference_empty_aliased_and_cast():
    torch.manual_seed(0)
    sizes = [0, 3, 5]
    shadows = [torch.randn(n) for n in sizes]
    masters = [torch.randn(n) for n in sizes]
    targets = [torch.empty(0, dtype=torch.bfloat16), shadows[1], torch.empty(5, dtype=torch.bfloat16)]
    before = [s.clone() for s in shadows]
    ema_update_(shadows, masters, targets, 0.75)
    for s, b, m in zip(shadows, before, masters):
        torch.testing.assert_close(s, 0.75 * b + 0.25 * m)
    assert targets[1] is shadows[1]
    assert torch.equal(targets[2], shadows[2].to(torch.bfloat16))
    ema_update_([], [], [], 0.5)  # nothing to do


def test_dispatch_auto_uses_torch_on_cpu():
    x = torch.randn(1, 4, 3, requires_grad=True)
    out = masked_gather(x, torch.tensor([0, 2]), torch.randn(4, 3))
    assert "MaskedGather" not in type(out.grad_fn).__name__
    assert not kb.use_triton("auto", [x], "op")
    assert not kb.use_triton("torch", [x], "op")


def test_dispatch_errors_name_the_op():
    x = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match="masked_gather: unknown kernel backend 'cuda'"):
        masked_gather(x, torch.tensor([0]), backend="cuda")
    if not kb.interpreting():
        with pytest.raises(RuntimeError, match="layernorm_gather: backend 'triton' needs CUDA"):
            layernorm_gather(x, torch.tensor([0]), backend="triton")


def test_dispatch_without_triton(monkeypatch):
    monkeypatch.setattr(kb, "triton_available", lambda: False)
    x = torch.randn(1, 4, 3)
    assert not kb.use_triton("auto", [x], "op")
    with pytest.raises(RuntimeError, match="triton is not installed"):
        kb.use_triton("triton", [x], "ema_update_")


def test_references_agree_with_functional_layernorm_on_model_shapes():
    torch.manual_seed(1)
    h = torch.randn(3, 10, 80)
    idx = torch.randperm(30)[:17]
    torch.testing.assert_close(layernorm_gather_reference(h, idx, 1e-6),
                               F.layer_norm(h.reshape(30, 80)[idx], (80,), eps=1e-6))
    x = torch.randn(3, 10, 80)
    assert torch.equal(masked_gather_reference(x, idx), x.reshape(30, 80)[idx])
    s, m = [torch.randn(4)], [torch.randn(4)]
    s0 = s[0].clone()
    ema_update_reference(s, m, s, 0.0)
    assert torch.equal(s[0], m[0]) and not torch.equal(s0, m[0])
