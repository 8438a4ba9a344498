"""Attentive probes: classify a frozen encoder's token set with learned-query cross-attention.

- `kind="v1"` (V-JEPA 1): one cross-attention block (learned query attends to the tokens, then an
  MLP on the query, both residual, pre-LN) followed by a linear head.
- `kind="v2"` (V-JEPA 2): `num_self_blocks` pre-LN self-attention blocks over the tokens first,
  then the same cross-attention block and head.

The probe width equals the encoder width; its head count must divide it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa_scale.config import ConfigError
from vjepa_scale.eval.config import ProbeConfig
from vjepa_scale.models.vit import MLP, Block, init_weights


class CrossAttention(nn.Module):
    """Queries (B, Q, D) attend to tokens (B, N, D) -> (B, Q, D)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q_BQD: torch.Tensor, x_BND: torch.Tensor) -> torch.Tensor:
        B, Q, D = q_BQD.shape
        h = self.num_heads
        q = self.q(q_BQD).view(B, Q, h, D // h).transpose(1, 2)
        k, v = self.kv(x_BND).view(B, -1, 2, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, h, Q, Dh)
        return self.proj(o.transpose(1, 2).reshape(B, Q, D))


class CrossAttentionBlock(nn.Module):
    """q <- q + xattn(q, LN(x)); q <- q + MLP(LN(q))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.xattn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, q_BQD: torch.Tensor, x_BND: torch.Tensor) -> torch.Tensor:
        q_BQD = q_BQD + self.xattn(q_BQD, self.norm1(x_BND))
        return q_BQD + self.mlp(self.norm2(q_BQD))


def resolve_probe_heads(cfg: ProbeConfig, embed_dim: int, encoder_heads: int, prefix: str = "probe") -> int:
    """The probe's head count (default: the encoder's), checked against the encoder width."""
    heads = cfg.num_heads or encoder_heads
    if embed_dim % heads:
        raise ConfigError(f"{prefix}.num_heads={heads} does not divide the encoder width {embed_dim}; "
                          f"pick a divisor of {embed_dim} (e.g. {encoder_heads}, the encoder's heads)")
    return heads


class AttentiveProbe(nn.Module):
    """tokens (B, N, D) -> logits (B, num_classes)."""

    def __init__(self, cfg: ProbeConfig, embed_dim: int, num_classes: int, encoder_heads: int):
        super().__init__()
        heads = resolve_probe_heads(cfg, embed_dim, encoder_heads)
        if num_classes < 2:
            raise ConfigError(f"data.num_classes must be >= 2, got {num_classes}")
        self.kind = cfg.kind
        self.num_classes = num_classes
        self.self_blocks = nn.ModuleList(
            Block(embed_dim, heads, cfg.mlp_ratio, qkv_bias=True)
            for _ in range(cfg.num_self_blocks if cfg.kind == "v2" else 0))
        self.query_BQD = nn.Parameter(torch.zeros(1, cfg.num_queries, embed_dim))
        self.cross_block = CrossAttentionBlock(embed_dim, heads, cfg.mlp_ratio)
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self)
        nn.init.trunc_normal_(self.query_BQD, std=0.02)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        for blk in self.self_blocks:
            x_BND = blk(x_BND, None, None)
        q_BQD = self.cross_block(self.query_BQD.expand(x_BND.shape[0], -1, -1), x_BND)
        return self.head(q_BQD.mean(dim=1))
