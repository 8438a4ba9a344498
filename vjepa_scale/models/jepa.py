"""The V-JEPA objective: packed context encoder + predictor vs. an EMA target encoder."""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn

from vjepa_scale.config import Config
from vjepa_scale.kernels import layernorm_gather
from vjepa_scale.masks import MaskBatch
from vjepa_scale.models.compiled import is_compiled
from vjepa_scale.models.predictor import Predictor
from vjepa_scale.models.vit import Packed, VisionTransformer3D, compile_blocks

TARGET_LN_EPS = 1e-5  # F.layer_norm's default, as the reference normalizes targets


class JEPA(nn.Module):
    """Trainable part: the context encoder and the predictor. `forward` returns the loss."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.loss_exp = cfg.model.loss_exp
        self.encoder = VisionTransformer3D(cfg.model, cfg.grid)
        self.predictor = Predictor(cfg.model, self.encoder.embed_dim, cfg.grid, len(cfg.mask.types))
        if cfg.model.compile:
            compile_blocks(self)

    def forward(self, video_BCTHW: torch.Tensor, masks: MaskBatch, targets_TD: torch.Tensor,
                type_norm: Optional[torch.Tensor] = None, per_type: bool = False,
                with_types: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The loss, the mean over mask types of each type's loss; `type_norm` as in `jepa_loss` (None:
        this batch's own per-type means). with_types: (loss, the (M,) per-type losses) instead.

        per_type: the reference's schedule, one encoder and one predictor call per mask type
        (`MaskBatch.for_type`), instead of one packed call each; the same loss up to float rounding.
        """
        if per_type:
            types = self.forward_per_type(video_BCTHW, masks, targets_TD, type_norm)
        else:
            pred_TD = self.predict(video_BCTHW, masks)
            types = jepa_type_losses(pred_TD, targets_TD, masks.tgt_type_bounds, self.loss_exp, type_norm)
        loss = types.mean()
        return (loss, types) if with_types else loss

    def forward_per_type(self, video_BCTHW: torch.Tensor, masks: MaskBatch, targets_TD: torch.Tensor,
                         type_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The (M,) per-type losses of `forward` with one pass per mask type."""
        losses = []
        for m in range(masks.num_types):
            a, b = masks.tgt_type_bounds[m], masks.tgt_type_bounds[m + 1]
            sub = masks.for_type(m)
            norm = None if type_norm is None else type_norm[m:m + 1]
            losses.append(jepa_type_losses(self.predict(video_BCTHW, sub), targets_TD[a:b], sub.tgt_type_bounds,
                                           self.loss_exp, norm))
        return torch.cat(losses)

    def predict(self, video_BCTHW: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
        """One packed encoder call over all (type, sample) contexts, one predictor call -> (T_tgt, D)."""
        packed = Packed(masks.ctx_cu_seqlens, masks.ctx_max_seqlen, masks.ctx_pos, grids=masks.grids)
        ctx_TD = self.encoder(video_BCTHW, masks.ctx_idx, packed, masks.ctx_scatter)
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
    if is_compiled(encoder):
        compile_blocks(target)  # its own compiled blocks, not the copied ones of `encoder`
    return target


@torch.no_grad()
def compute_targets(target_encoder: nn.Module, video_BCTHW: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
    """Target encoder on the full clip, LayerNorm without affine, gathered at the targets -> (T_tgt, D).

    A mixed-shape batch (`MixedVideo`) runs as packed variable-length sequences, one per sample."""
    h = target_encoder(video_BCTHW)  # (B, N, D), or (total, D) for a mixed batch
    return layernorm_gather(h if h.dim() == 3 else h[None], masks.tgt_idx, TARGET_LN_EPS)


def jepa_loss(pred_TD: torch.Tensor, target_TD: torch.Tensor, type_bounds: list[int], p: float = 1.0,
              type_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean |pred - target|^p / p within each mask type's targets, averaged over mask types (the mean of
    `jepa_type_losses`)."""
    return jepa_type_losses(pred_TD, target_TD, type_bounds, p, type_norm).mean()


def jepa_type_losses(pred_TD: torch.Tensor, target_TD: torch.Tensor, type_bounds: list[int], p: float = 1.0,
                     type_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(M,): mean |pred - target|^p / p within each mask type's targets.

    type_norm: (M,) divisor of each type's error sum instead of its local token count x D. The
    trainer passes the type's token count over all ranks / world size (`global_type_norm`): each
    rank's loss is then world x its share of the global mean, and the ranks' average (what
    DeepSpeed's gradient averaging computes) is the global per-type token mean.
    """
    losses = []
    for m, (a, b) in enumerate(zip(type_bounds[:-1], type_bounds[1:])):
        diff = (pred_TD[a:b] - target_TD[a:b]).abs().float()
        err = diff if p == 1.0 else diff.pow(p)
        if type_norm is None:
            losses.append(err.mean() / p)
        else:
            losses.append(err.sum() / (type_norm[m] * err.shape[-1]) / p)
    return torch.stack(losses)


def global_type_norm(masks: MaskBatch, device: torch.device) -> torch.Tensor:
    """(M,) float32 on `device`: each mask type's target-token count summed over all ranks / world size.

    One tiny all-reduce of the host-side per-type counts when a process group of more than one
    rank is up (every rank must call it for the same micro-step); else this batch's own counts.
    """
    bounds = masks.tgt_type_bounds
    counts = torch.tensor([b - a for a, b in zip(bounds[:-1], bounds[1:])], dtype=torch.int64, device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            torch.distributed.all_reduce(counts)
    return (counts.double() / world).float()
