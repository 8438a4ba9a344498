"""Our state dicts written in the official V-JEPA `torch.save` layout, renamed here independently of
`vjepa_scale.weights.keys` (so the importer is checked against a second spelling of the map)."""
from __future__ import annotations

from typing import Optional

import torch


def official_layout(encoder: dict, predictor: Optional[dict] = None, enc_table: Optional[torch.Tensor] = None,
                    pred_table: Optional[torch.Tensor] = None) -> tuple[dict, Optional[dict]]:
    """(encoder, predictor) with the `module.backbone.` prefix, the official block and projection names,
    mask token i as `mask_tokens.{i}` of shape (1, 1, W), and the sin-cos tables when given. Weights are
    not copied (mask tokens are)."""
    enc = {}
    for k, v in encoder.items():
        k = k.replace("transformer.blocks.", "blocks.").replace("transformer.norm.", "norm.")
        enc["module.backbone." + k.replace("patch_embed.", "patch_embed.proj.")] = v
    if enc_table is not None:
        enc["module.backbone.pos_embed"] = enc_table[None].clone()
    if predictor is None:
        return enc, None
    pred = {}
    for k, v in predictor.items():
        if k == "mask_tokens":
            for i, tok in enumerate(v):
                pred[f"module.backbone.mask_tokens.{i}"] = tok.reshape(1, 1, -1).clone()
            continue
        if k.startswith("embed."):
            k = "predictor_embed." + k[len("embed."):]
        elif k.startswith("proj."):
            k = "predictor_proj." + k[len("proj."):]
        k = k.replace("transformer.blocks.", "predictor_blocks.").replace("transformer.norm.", "predictor_norm.")
        pred["module.backbone." + k] = v
    if pred_table is not None:
        pred["module.backbone.predictor_pos_embed"] = pred_table[None].clone()
    return enc, pred
