"""Narrow ViT predictor over packed [context ; targets] sequences, one per (mask type, sample)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa_scale.config import ModelConfig
from vjepa_scale.masks import MaskBatch
from vjepa_scale.models.pos_embed import Positions
from vjepa_scale.models.vit import Packed, Transformer, VitDims, init_model


class Predictor(nn.Module):
    """Linear D->W, mask tokens at target slots, `pred_depth` blocks, LN, Linear W->D.

    Mask tokens (`model.mask_tokens`): per_type holds `num_mask_types` tokens (type m uses token m);
    shared holds one, used by every mask type.

    Input: packed encoder outputs of the context tokens (T_ctx, D) in `MaskBatch` order.
    Output: predictions at the target tokens (T_tgt, D), in the same order as `masks.tgt_idx`.
    Positions follow each sample's grid (a mixed batch's `*_pos_ids` into its per-grid tables).
    """

    def __init__(self, cfg: ModelConfig, embed_dim: int, grid: tuple[int, int, int], num_mask_types: int):
        super().__init__()
        W = cfg.pred_width
        self.dims = VitDims(W, cfg.pred_depth, cfg.pred_num_heads, cfg.pred_mlp_ratio)
        self.grid = tuple(grid)
        self.embed = nn.Linear(embed_dim, W)
        self.shared_mask_token = cfg.mask_tokens == "shared"
        self.mask_tokens = nn.Parameter(torch.zeros(1 if self.shared_mask_token else num_mask_types, W))
        self.positions = Positions(cfg.pos_embed, W, self.dims.head_dim, self.grid)
        self.transformer = Transformer(self.dims, cfg.qkv_bias, cfg.attention_backend, cfg.checkpoint_fraction,
                                       cfg.sdpa_backend)
        self.proj = nn.Linear(W, embed_dim)
        init_model(self, self.transformer, cfg.init)  # mask tokens stay zero

    def forward(self, ctx_TD: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
        x_ctx = self.embed(ctx_TD)
        # one-hot (T_tgt, K) @ (K, W) over the K tokens: their gradient is then a GEMM summing ~10^4 rows with
        # fp32 accumulation (index_select's backward adds them one by one in the parameter's dtype: in bf16
        # the sum stalls), and deterministic. Shared: every target takes token 0.
        token_of = torch.zeros_like(masks.tgt_type) if self.shared_mask_token else masks.tgt_type
        onehot_TK = F.one_hot(token_of, self.mask_tokens.shape[0]).to(x_ctx.dtype)
        x_tgt = onehot_TK @ self.mask_tokens.to(x_ctx.dtype)
        grids = masks.pos_grids  # positions: rows of these grids' concatenated tables
        pos_ND = self.positions.additive_multi(grids, x_ctx.dtype)
        if pos_ND is not None:
            x_ctx = x_ctx + pos_ND.index_select(0, masks.ctx_pos)
            x_tgt = x_tgt + pos_ND.index_select(0, masks.tgt_pos)
        total = x_ctx.shape[0] + x_tgt.shape[0]
        x = x_ctx.new_zeros(total, x_ctx.shape[1])
        x = x.index_copy(0, masks.pred_ctx_slot, x_ctx).index_copy(0, masks.pred_tgt_slot, x_tgt)
        packed = Packed(masks.pred_cu_seqlens, masks.pred_max_seqlen, masks.pred_pos)
        rope = self.positions.rotary_multi(masks.pred_pos, grids, x.device, x.dtype)
        y = self.transformer(x, packed, rope)
        return self.proj(y.index_select(0, masks.pred_tgt_slot))
