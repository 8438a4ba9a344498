"""`model.init`: the V-JEPA 1 and V-JEPA 2 init families, checked on per-layer weight statistics."""
from __future__ import annotations

import math

import pytest
import torch

from vjepa_scale.config import ConfigError, ModelConfig, load_config, resolve_vit_size
from vjepa_scale.models import Predictor, VisionTransformer3D

GRID = (2, 2, 2)
RESCALED = ("attn.proj.weight", "mlp.fc2.weight")


def _build(init: str, seed: int = 0):
    """Encoder (width 384, 6 blocks) and predictor (width 256, 4 blocks), big enough to measure a std."""
    cfg = ModelConfig(size="small", depth=6, pred_width=256, pred_depth=4, pred_num_heads=4, init=init)
    torch.manual_seed(seed)
    enc = VisionTransformer3D(cfg, GRID)
    pred = Predictor(cfg, enc.embed_dim, GRID, num_mask_types=2)
    return enc, pred


@pytest.mark.parametrize("init", ["vjepa1", "vjepa2"])
def test_per_layer_std_follows_the_rule(init):
    enc, pred = _build(init)
    for net in (enc, pred):
        for i, blk in enumerate(net.transformer.blocks, start=1):
            want = 0.02 / (math.sqrt(2 * i) if init == "vjepa2" else 1.0)
            for w in (blk.attn.proj.weight, blk.mlp.fc2.weight):
                assert abs(w.std().item() / want - 1) < 0.03, (init, i, w.std().item(), want)
            for w in (blk.attn.qkv.weight, blk.mlp.fc1.weight):  # never rescaled
                assert abs(w.std().item() / 0.02 - 1) < 0.03
            assert torch.equal(blk.attn.proj.bias, torch.zeros_like(blk.attn.proj.bias))
            assert torch.equal(blk.norm1.weight, torch.ones_like(blk.norm1.weight))
    assert abs(enc.patch_embed.weight.std().item() / 0.02 - 1) < 0.03
    assert torch.equal(pred.mask_tokens, torch.zeros_like(pred.mask_tokens))


def test_families_differ_exactly_by_the_rescale():
    """Same seed: every tensor is the same except attn.proj / mlp.fc2 of block i, divided by sqrt(2i)."""
    one, two = _build("vjepa1", seed=3), _build("vjepa2", seed=3)
    for a, b in zip(one, two):
        sa, sb = a.state_dict(), b.state_dict()
        for k, v in sa.items():
            if k.endswith(RESCALED):
                i = int(k.split(".")[2]) + 1
                assert torch.equal(sb[k], v / math.sqrt(2.0 * i)), k
            else:
                assert torch.equal(sb[k], v), k


def test_default_init_is_vjepa1_and_recipes_name_theirs():
    assert ModelConfig().init == "vjepa1"
    for name in ("vitl16", "vith16", "vith384", "cpu_demo"):
        assert load_config(name).model.init == "vjepa1"
    for name in ("vjepa2_vitl", "vjepa2_vitg", "vjepa2_vitg_cool384"):
        assert load_config(name).model.init == "vjepa2"
    with pytest.raises(ConfigError, match="model.init"):
        load_config("cpu_demo", ["model.init=xavier"])


def test_two_giants():
    """`giant` is V-JEPA 1's (16 heads, head dim 88), `giant_vjepa2` V-JEPA 2's released ViT-g (22, head dim 64)."""
    g1, g2 = resolve_vit_size(ModelConfig(size="giant")), resolve_vit_size(ModelConfig(size="giant_vjepa2"))
    assert (g1.width, g1.depth, g1.num_heads, g1.head_dim) == (1408, 40, 16, 88)
    assert (g2.width, g2.depth, g2.num_heads, g2.head_dim) == (1408, 40, 22, 64)
    assert g1.mlp_ratio == g2.mlp_ratio == 48 / 11
