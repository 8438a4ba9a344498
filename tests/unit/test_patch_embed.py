"""Exact reshape + linear patch embedding, LayerNorm dtypes under autocast, cached position tables."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjepa_scale.models.pos_embed import Positions, interpolate_sincos
from vjepa_scale.models.vit import LayerNorm, PatchEmbed3D


@pytest.mark.parametrize("shape, t, p", [
    ((2, 3, 4, 32, 48), 2, 16),  # whole tubelets
    ((1, 3, 5, 37, 21), 2, 8),  # odd sizes: trailing frame/pixels dropped as Conv3d does
    ((2, 2, 3, 7, 9), 3, 3),  # odd channels, tubelet 3
])
def test_patch_embed_equals_conv3d_forward_and_backward(shape, t, p):
    torch.manual_seed(0)
    C = shape[1]
    pe = PatchEmbed3D(C, 24, t, p)
    assert pe.weight.shape == (24, C, t, p, p) and pe.bias.shape == (24,)
    assert set(dict(pe.named_parameters())) == {"weight", "bias"}  # checkpoint keys unchanged
    video = torch.randn(shape, requires_grad=True)
    tokens, grid = pe(video)
    ref = F.conv3d(video, pe.weight, pe.bias, stride=(t, p, p))  # (B, D, T', H', W')
    assert grid == tuple(ref.shape[2:])
    ref_tokens = ref.flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(tokens)
    grads = torch.autograd.grad(tokens, (video, pe.weight, pe.bias), g)
    ref_grads = torch.autograd.grad(ref_tokens, (video, pe.weight, pe.bias), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_patch_embed_loads_a_conv3d_state_dict():
    conv = torch.nn.Conv3d(3, 16, (2, 4, 4), stride=(2, 4, 4))
    pe = PatchEmbed3D(3, 16, 2, 4)
    pe.load_state_dict(conv.state_dict())
    video = torch.randn(1, 3, 4, 8, 8)
    torch.testing.assert_close(pe(video)[0], conv(video).flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_layernorm_keeps_bf16_without_round_trip(autocast):
    """bf16 activations with fp32 affine parameters (autocast's fp32 master weights): bf16 out,
    equal to the fp32 computation rounded once."""
    torch.manual_seed(0)
    ln = LayerNorm(64, eps=1e-6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(10, 64).bfloat16()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        y = ln(x)
    assert y.dtype == torch.bfloat16
    exact = F.layer_norm(x.float(), (64,), ln.weight, ln.bias, 1e-6)
    ref = exact.bfloat16()
    # at most 1 bf16 ulp (8 significant bits) of the fp32 result per element: a reduction order may differ,
    # a second rounding (e.g. of the normalized values before the affine) does not stay within it
    ulp = torch.ldexp(torch.ones_like(exact), torch.frexp(exact).exponent - 8)
    assert ((y.float() - ref.float()).abs() <= ulp).all(), (y.float() - ref.float()).abs().max()
    assert ln(torch.randn(3, 64)).dtype == torch.float32  # fp32 stays fp32


def test_block_norms_stay_bf16_under_autocast():
    from vjepa_scale.models.vit import Block

    blk = Block(48, 3, 4.0)
    dtypes = []
    for m in (blk.norm1, blk.norm2):
        m.register_forward_hook(lambda mod, inp, out: dtypes.append((inp[0].dtype, out.dtype)))
    with torch.autocast("cpu", torch.bfloat16):
        out = blk(torch.randn(2, 5, 48).bfloat16(), None, None)
    assert out.dtype == torch.bfloat16
    assert dtypes == [(torch.bfloat16, torch.bfloat16)] * 2


def test_sincos_table_is_resampled_once_per_grid_and_dtype():
    pos = Positions("sincos", 48, 16, (4, 8, 8))
    a = pos.additive((4, 6, 6), torch.bfloat16)
    assert pos.additive((4, 6, 6), torch.bfloat16) is a  # cached
    torch.testing.assert_close(a, interpolate_sincos(pos.table, (4, 8, 8), (4, 6, 6)).bfloat16())
    b = pos.additive((4, 8, 8), torch.float32)
    assert b is pos.additive((4, 8, 8), torch.float32) and torch.equal(b, pos.table)
    pos.to(torch.float64)  # a new buffer storage invalidates the cache
    assert pos.additive((4, 8, 8), torch.float64).dtype == torch.float64
    assert Positions("rope", 48, 16, (4, 8, 8)).additive((4, 8, 8), torch.float32) is None
