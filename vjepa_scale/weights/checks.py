"""Check weights against the models a `Config` builds: state dict names and shapes (`check_state_dict`) and,
for what shapes do not show, the architecture fields of the run that trained them (`check_architecture`)."""
from __future__ import annotations

import torch

from vjepa_scale.config import Config, ModelConfig, resolve_vit_size
from vjepa_scale.models import Predictor, VisionTransformer3D

StateDict = dict[str, torch.Tensor]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the configured model (the message names the key and both shapes)."""


def expected_shapes(cfg: Config) -> dict[str, dict[str, torch.Size]]:
    """{'encoder': {key: shape}, 'predictor': {...}} of the models `cfg` builds (on the meta device)."""
    with torch.device("meta"):
        enc = VisionTransformer3D(cfg.model, cfg.grid)
        pred = Predictor(cfg.model, enc.embed_dim, cfg.grid, len(cfg.mask.types))
    return {"encoder": module_shapes(enc), "predictor": module_shapes(pred)}


_HINTS = {"encoder": "model.size/width/depth/num_heads/patch_size/pos_embed",
          "predictor": "model.pred_width/pred_depth, model.size/width, model.mask_tokens and the number of mask "
                       "types (mask.types)"}


def check_state_dict(sd: StateDict, expected: dict[str, torch.Size], what: str, source: str) -> None:
    """Same keys and shapes as `expected`, else a `CheckpointMismatchError` naming what differs.

    what: 'encoder', 'target_encoder' or 'predictor' (names the part and picks the config keys to check);
    source: where the weights come from (the message starts with it).
    """
    hint = _HINTS["predictor" if what == "predictor" else "encoder"]
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    bad = [k for k in sorted(set(sd) & set(expected)) if tuple(sd[k].shape) != tuple(expected[k])]
    if bad:
        lines = [f"{what} parameter '{k}' has shape {tuple(sd[k].shape)} in the checkpoint but "
                 f"{tuple(expected[k])} in the model built from the config" for k in bad[:6]]
        more = f"; and {len(bad) - 6} more" if len(bad) > 6 else ""
        raise CheckpointMismatchError(f"{source}: " + "; ".join(lines) + more +
                                      f" (a checkpoint of another model size? check {hint})")
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: {what} parameters do not match the model built from the config "
            f"(missing from the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"not in the model: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}); check {hint}")


def module_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    """{key: shape} of a built module's state dict: the `expected` of `check_state_dict`."""
    return {k: v.shape for k, v in module.state_dict().items()}


# Architecture fields a checkpoint's training config must share with the config that loads it.
ENCODER_ARCH_FIELDS = ("pos_embed", "patch_size", "tubelet_size", "qkv_bias")
PREDICTOR_ARCH_FIELDS = ("pred_width", "pred_depth", "pred_num_heads", "pred_mlp_ratio", "mask_tokens")


def check_architecture(have: ModelConfig, want: ModelConfig, source: str, predictor: bool = True) -> None:
    """`CheckpointMismatchError` naming every architecture field (and both values) where the model a
    checkpoint was trained with (`have`) differs from the configured one (`want`).

    width/depth/num_heads/mlp_ratio are compared as resolved from model.size; predictor fields only
    with `predictor`.
    """
    fields = ENCODER_ARCH_FIELDS + (PREDICTOR_ARCH_FIELDS if predictor else ())
    pairs = [(f, getattr(have, f), getattr(want, f)) for f in fields]
    hd, wd = resolve_vit_size(have), resolve_vit_size(want)
    pairs += [(f"{f} (via model.size)", getattr(hd, f), getattr(wd, f))
              for f in ("width", "depth", "num_heads", "mlp_ratio")]
    diffs = [f"model.{f}={a!r} but the config has {b!r}" for f, a, b in pairs if a != b]
    if diffs:
        raise CheckpointMismatchError(f"{source}: the run was trained with " + "; ".join(diffs))
