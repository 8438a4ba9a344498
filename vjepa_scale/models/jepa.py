"""The V-JEPA objective: packed context encoder + predictor vs. an EMA target encoder."""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn

from vjepa_scale.config import Config
from vjepa_scale.kernels import layernorm_gather
from vjepa_scale.masks import MaskBatch
from vjepa_scale.models.predictor import Predictor
from vjepa_scale.models.vit import Packed, VisionTransformer3D

TARGET_LN_EPS = 1e-5  # F.layer_norm's default, as the reference normalizes targets


class JEPA(nn.Module):
    """Trainable part: the context encoder and the predictor. `forward` returns the loss."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.loss_exp = cfg.model.loss_exp
        self.encoder = VisionTransformer3D(cfg.model, cfg.grid)
        self.predictor = Predictor(cfg.model, self.encoder.embed_dim, cfg.grid, len(cfg.mask.types))

    def forward(self, video_BCTHW: torch.Tensor, masks: MaskBatch, targets_TD: torch.Tensor) -> torch.Tensor:
        pred_TD = self.predict(video_BCTHW, masks)
        return jepa_loss(pred_TD, targets_TD, masks.tgt_type_bounds, self.loss_exp)

    def predict(self, video_BCTHW: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
        """One packed encoder call over all (type, sample) contexts, one predictor call -> (T_tgt, D)."""
        packed = Packed(masks.ctx_cu_seqlens, masks.ctx_max_seqlen, masks.ctx_token_ids)
        ctx_TD = self.encoder(video_BCTHW, masks.ctx_idx, packed)
        return self.predictor(ctx_TD, masks)


def make_target_encoder(encoder: VisionTransformer3D,
                        state: Optional[dict[str, torch.Tensor]] = None) -> VisionTransformer3D:
    """The EMA target: a frozen copy of `encoder`, with the weights `state` (strict) when given.

    The one place a target encoder is created (training engine, step benchmark, tests).
    """
    target = copy.deepcopy(encoder)
    if state is not None:
        target.load_state_dict(state, strict=True)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def compute_targets(target_encoder: nn.Module, video_BCTHW: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
    """Target encoder on the full clip, LayerNorm without affine, gathered at the targets -> (T_tgt, D)."""
    h_BND = target_encoder(video_BCTHW)
    return layernorm_gather(h_BND, masks.tgt_idx, TARGET_LN_EPS)


def jepa_loss(pred_TD: torch.Tensor, target_TD: torch.Tensor, type_bounds: list[int], p: float = 1.0) -> torch.Tensor:
    """mean |pred - target|^p / p within each mask type's targets, averaged over mask types."""
    losses = []
    for a, b in zip(type_bounds[:-1], type_bounds[1:]):
        diff = (pred_TD[a:b] - target_TD[a:b]).abs().float()
        losses.append((diff if p == 1.0 else diff.pow(p)).mean() / p)
    return torch.stack(losses).mean()
