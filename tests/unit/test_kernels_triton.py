"""Triton kernels against their torch references, forward and backward.

The cases run in this process on CUDA (real Triton), or under the CPU interpreter when
TRITON_INTERPRET=1 was set before anything imported triton. On a CPU-only machine without it they
skip here, and integration/test_kernels_interpreter.py reruns this file in a fresh process with
TRITON_INTERPRET=1, so the interpreter can never be polluted by a test that imported triton first.
Only the model-sized checks that need real CUDA carry the `gpu` marker.
"""
import pytest
import torch

from vjepa_scale.kernels import ema_update_, layernorm_gather, masked_gather, scatter_map
from vjepa_scale.kernels.backend import interpreting, triton_available
from vjepa_scale.kernels.ema import ema_update_reference
from vjepa_scale.kernels.gather import layernorm_gather_reference, masked_gather_reference

pytestmark = pytest.mark.triton
CUDA = torch.cuda.is_available()
RUN_HERE = triton_available() and (interpreting() or CUDA)
DEV = "cpu" if interpreting() or not CUDA else "cuda"
# `cases` run on CUDA or in the interpreter (not marked `gpu`); `cuda_only` ones (model-sized) need real CUDA.
cases = pytest.mark.skipif(not RUN_HERE, reason="needs CUDA or TRITON_INTERPRET=1 "
                                                "(integration/test_kernels_interpreter.py reruns this file so)")
cuda_only = pytest.mark.skipif(not (CUDA and triton_available() and not interpreting()), reason="needs CUDA and triton")


def ulp_close(a: torch.Tensor, b: torch.Tensor, ulps: float = 1.0) -> None:
    """|a - b| <= ulps bf16 units in the last place of the larger magnitude (plus a tiny floor)."""
    a, b = a.detach().float(), b.detach().float()
    _, exp = torch.frexp(torch.maximum(a.abs(), b.abs()))  # |x| = m * 2**exp, m in [0.5, 1)
    tol = ulps * torch.ldexp(torch.ones_like(a), exp - 8) + 1e-6  # bf16 keeps 8 significant bits
    bad = (a - b).abs() > tol
    assert not bad.any(), f"{int(bad.sum())} elements differ by more than {ulps} ulp: {a[bad][:5]} vs {b[bad][:5]}"


def two_mask_idx(B: int, N: int, lengths: tuple[int, int], dtype, g) -> torch.Tensor:
    """Flat indices like MaskBatch.ctx_idx: per mask type and sample, sorted unique tokens."""
    out = []
    for L in lengths:
        for b in range(B):
            out.append(b * N + torch.randperm(N, generator=g)[:L].sort().values)
    return torch.cat(out).to(dtype)


# ------------------------------------------------------------------------------------------------
# masked gather (+ position embedding)
# ------------------------------------------------------------------------------------------------


@cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [80, 203, 300])  # 300: two column blocks, the second one partial
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("pos_kind", ["none", "fp32", "same"])
def test_masked_gather_bitwise(dtype, D, idx_dtype, pos_kind):
    g = torch.Generator().manual_seed(D + 7 * (dtype == torch.bfloat16) + 3 * (pos_kind == "same"))
    B, N = 3, 37
    # Transposed (B, N, D) view, as the patch embedding produces it.
    x = torch.randn(B, D, N, generator=g).to(dtype).transpose(1, 2).to(DEV)
    pos = None if pos_kind == "none" else torch.randn(N, D, generator=g).to(
        torch.float32 if pos_kind == "fp32" else dtype).to(DEV)
    idx = two_mask_idx(B, N, (29, 13), idx_dtype, g).to(DEV)
    xt, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = masked_gather(xt, idx, pos, backend="triton")
    ref = masked_gather_reference(xr, idx, pos)
    assert "MaskedGather" in type(out.grad_fn).__name__
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    gy = torch.randn(out.shape, generator=g).to(dtype).to(DEV)
    out.backward(gy)
    ref.backward(gy)
    assert torch.equal(xt.grad, xr.grad)  # at most two sources per row: sums are exact in either order


@cases
def test_masked_gather_many_duplicates_and_pos_grad():
    g = torch.Generator().manual_seed(1)
    B, N, D = 2, 23, 130
    x = torch.randn(B, N, D, generator=g).to(DEV)
    pos = torch.randn(N, D, generator=g).to(DEV)
    idx = torch.randint(0, B * N, (300,), generator=g).to(DEV)  # up to ~15 sources per row
    grads = []
    for backend in ("triton", "triton", "torch"):
        xx, pp = x.clone().requires_grad_(), pos.clone().requires_grad_()
        out = masked_gather(xx, idx, pp, backend=backend)
        out.backward(torch.linspace(-1, 1, out.numel(), device=DEV).view_as(out) ** 3)
        grads.append((out.detach(), xx.grad, pp.grad))
    (o1, gx1, gp1), (o2, gx2, gp2), (o3, gx3, gp3) = grads
    assert torch.equal(o1, o3)
    assert torch.equal(gx1, gx2) and torch.equal(gp1, gp2)  # deterministic: no atomics
    torch.testing.assert_close(gx1, gx3, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gp1, gp3, rtol=1e-5, atol=1e-5)


@cases
def test_masked_gather_empty():
    x = torch.randn(2, 5, 80, device=DEV, requires_grad=True)
    idx = torch.empty(0, dtype=torch.int32, device=DEV)
    out = masked_gather(x, idx, torch.randn(5, 80, device=DEV), backend="triton")
    assert out.shape == (0, 80)
    out.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


@cases
def test_masked_gather_rejects_bad_input():
    x = torch.randn(2, 5, 8, device=DEV)
    with pytest.raises(ValueError, match="idx must be 1-D int32/int64"):
        masked_gather(x, torch.zeros(3, device=DEV), backend="triton")
    with pytest.raises(ValueError, match=r"pos must have shape \(N, D\)"):
        masked_gather(x, torch.tensor([1], device=DEV), torch.randn(4, 8, device=DEV), backend="triton")
    if DEV == "cpu":
        with pytest.raises(IndexError, match=r"indices must lie in \[0, 10\)"):
            masked_gather(x, torch.tensor([10]), backend="triton")


@cases
def test_prebuilt_scatter_map_gives_the_same_grads():
    """The backward through a map built ahead (by the data workers, `MaskBatch.ctx_scatter`) equals the
    one that builds its own, for the masked gather and the LayerNorm gather; a map of other indices is refused."""
    g = torch.Generator().manual_seed(5)
    B, N, D = 3, 41, 96
    x = torch.randn(B, N, D, generator=g).to(DEV)
    pos = torch.randn(N, D, generator=g).to(DEV)
    idx = two_mask_idx(B, N, (30, 11), torch.int64, g)
    smap = scatter_map(idx, B * N).to(DEV)
    idx = idx.to(DEV)
    gy = torch.randn(idx.numel(), D, generator=g).to(DEV)
    for op, args in ((masked_gather, (pos,)), (layernorm_gather, (1e-5,))):
        grads = []
        for scatter in (None, smap):
            xt = x.clone().requires_grad_()
            op(xt, idx, *args, backend="triton", scatter=scatter).backward(gy)
            grads.append(xt.grad)
        assert torch.equal(grads[0], grads[1]), op.__name__
        with pytest.raises(ValueError, match="scatter map for"):
            op(x, idx[:-1], *args, backend="triton", scatter=smap)
        with pytest.raises(ValueError, match="scatter map for"):
            op(x[:2], idx[idx < 2 * N], *args, backend="triton", scatter=smap)


# ------------------------------------------------------------------------------------------------
# LayerNorm (no affine) + gather
# ------------------------------------------------------------------------------------------------


@cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [80, 203])
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_layernorm_gather(dtype, D, idx_dtype):
    g = torch.Generator().manual_seed(D)
    B, N = 3, 31
    h = (torch.randn(B, N, D, generator=g) * 3 + 1).to(dtype).to(DEV)
    idx = two_mask_idx(B, N, (19, 11), idx_dtype, g).to(DEV)
    ht = h.clone().requires_grad_()
    out = layernorm_gather(ht, idx, 1e-6, backend="triton")
    assert "LayerNormGather" in type(out.grad_fn).__name__
    gy = torch.randn(out.shape, generator=g).to(dtype).to(DEV)
    out.backward(gy)
    # fp32 truth from the same (rounded) inputs.
    hf = h.float().requires_grad_()
    ref = layernorm_gather_reference(hf, idx, 1e-6)
    ref.backward(gy.float())
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ht.grad, hf.grad, rtol=1e-4, atol=1e-5)
    else:
        ulp_close(out, ref)
        ulp_close(ht.grad, hf.grad)
        ulp_close(out, layernorm_gather_reference(h, idx, 1e-6))


@cases
def test_layernorm_gather_empty_and_no_grad():
    h = torch.randn(2, 4, 80, device=DEV)
    assert layernorm_gather(h, torch.empty(0, dtype=torch.int64, device=DEV), backend="triton").shape == (0, 80)
    with torch.no_grad():
        out = layernorm_gather(h, torch.tensor([7, 0], device=DEV), backend="triton")
    torch.testing.assert_close(out, layernorm_gather_reference(h, torch.tensor([7, 0], device=DEV)),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# EMA update
# ------------------------------------------------------------------------------------------------


def _ema_lists(sizes, target_dtype, g):
    shadows = [torch.randn(n, generator=g).to(DEV) for n in sizes]
    masters = [torch.randn(n, generator=g).to(DEV) for n in sizes]
    targets = [torch.empty(n, dtype=target_dtype, device=DEV) for n in sizes]
    return shadows, masters, targets


@cases
@pytest.mark.parametrize("target_dtype", [torch.bfloat16, torch.float32])
def test_ema_update_matches_reference(target_dtype):
    g = torch.Generator().manual_seed(0)
    sizes = [0, 1, 7, 1000, 70001, 0, 33]  # ZeRO shards: uneven, some empty, one > a work chunk
    S, M, T = _ema_lists(sizes, target_dtype, g)
    T[2] = S[2]  # a target that is the shadow itself (fp32 model): no separate cast
    S2 = [s.clone() for s in S]
    T2 = [t.clone() for t in T]
    T2[2] = S2[2]
    for momentum in (0.9996, 0.998, 0.3):  # runtime scalar; 0.3 takes torch's large-weight lerp form
        ema_update_(S, M, T, momentum, backend="triton")
        ema_update_reference(S2, M, T2, momentum)
        for i, (s, s2, t, t2) in enumerate(zip(S, S2, T, T2)):
            torch.testing.assert_close(s, s2, rtol=2e-7, atol=2e-7, msg=f"shadow {i}")
            assert t.dtype == target_dtype or i == 2
            assert torch.equal(t, s.to(t.dtype)), f"target {i} is not the new shadow rounded to nearest"
            if t.dtype == torch.bfloat16:
                ulp_close(t, t2)
    assert T[2] is S[2]


@cases
def test_ema_update_bf16_masters_and_errors():
    g = torch.Generator().manual_seed(3)
    S, M, T = _ema_lists([5, 130], torch.bfloat16, g)
    Mb = [m.to(torch.bfloat16) for m in M]
    S2 = [s.clone() for s in S]
    ema_update_(S, Mb, T, 0.9, backend="triton")
    for s, s2, m in zip(S, S2, Mb):
        torch.testing.assert_close(s, torch.lerp(s2, m.float(), 0.1), rtol=2e-7, atol=2e-7)
    with pytest.raises(ValueError, match=r"masters\[1\] has 3 elements, shadows\[1\] 130"):
        ema_update_(S, [M[0], M[1][:3]], T, 0.9, backend="triton")
    with pytest.raises(ValueError, match=r"shadows\[0\] must be float32"):
        ema_update_([S[0].to(torch.bfloat16)], M[:1], T[:1], 0.9, backend="triton")
    ema_update_([], [], [], 0.9, backend="triton")


# ------------------------------------------------------------------------------------------------
# CUDA only: model-sized problems with the real masks, and the models' auto dispatch
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda_only
def test_gather_vith384_masks_bitwise_on_cuda():
    from vjepa_scale.config import MaskConfig
    from vjepa_scale.masks import MultiBlockMasker

    masks = MultiBlockMasker(MaskConfig(), (8, 24, 24))(2, step=0)
    B, N, D = 2, 4608, 1280
    x = torch.randn(B, D, N, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    pos = torch.randn(N, D, device="cuda", dtype=torch.bfloat16)
    for idx in (masks.ctx_idx.cuda(), masks.ctx_idx.cuda().int()):
        out = masked_gather(x, idx, pos)  # auto -> Triton on CUDA
        ref = masked_gather_reference(x, idx, pos)
        assert "MaskedGather" in type(out.grad_fn).__name__ and torch.equal(out, ref)
        gy = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, x, gy)
        (gr,) = torch.autograd.grad(ref.float(), x, gy.float())  # fp32 accumulation, then bf16
        assert torch.equal(gx, gr)
    h = torch.randn(B, N, D, device="cuda", dtype=torch.bfloat16)
    ulp_close(layernorm_gather(h, masks.tgt_idx.cuda(), 1e-6),
              layernorm_gather_reference(h.float(), masks.tgt_idx.cuda(), 1e-6))


@pytest.mark.gpu
@cuda_only
def test_ema_update_model_sized_on_cuda():
    sizes = [3 * 1280 * 1280, 3 * 1280, 1280 * 1280, 1280, 5120 * 1280, 5120, 0, 1280 * 5120 + 3]
    g = torch.Generator().manual_seed(0)
    S, M, T = _ema_lists(sizes, torch.bfloat16, g)
    S2, T2 = [s.clone() for s in S], [t.clone() for t in T]
    for momentum in (0.9996, 0.9997):
        ema_update_(S, M, T, momentum)  # auto -> Triton on CUDA
        ema_update_reference(S2, M, T2, momentum)
    for s, s2, t in zip(S, S2, T):
        torch.testing.assert_close(s, s2, rtol=1e-6, atol=1e-6)
        assert torch.equal(t, s.to(torch.bfloat16))


@cases
def test_ema_update_unaligned_shard_views():
    """ZeRO shards are views into flat buffers at arbitrary offsets: mixed alignment groups."""
    g = torch.Generator().manual_seed(5)
    flat_s = torch.randn(4000, generator=g).to(DEV)
    flat_m = torch.randn(4000, generator=g).to(DEV)
    flat_t = torch.zeros(4000, dtype=torch.bfloat16, device=DEV)
    cuts = [(0, 1000), (1001, 1999), (2003, 3997)]  # aligned, 4-byte, 12-byte offsets
    S = [flat_s[a:b] for a, b in cuts]
    M = [flat_m[a + 1:b + 1] for a, b in cuts]
    T = [flat_t[a:b] for a, b in cuts]
    S2, T2 = [s.clone() for s in S], [t.clone() for t in T]
    ema_update_(S, M, T, 0.99, backend="triton")
    ema_update_reference(S2, M, T2, 0.99)
    for s, s2, t in zip(S, S2, T):
        torch.testing.assert_close(s, s2, rtol=2e-7, atol=2e-7)
        assert torch.equal(t, s.to(torch.bfloat16))
    untouched = torch.ones(4000, dtype=torch.bool)
    for a, b in cuts:
        untouched[a:b] = False
    assert torch.equal(flat_t.cpu()[untouched], torch.zeros(int(untouched.sum()), dtype=torch.bfloat16))
