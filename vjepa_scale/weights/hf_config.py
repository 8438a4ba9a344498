"""The one map between our `Config` and a Hugging Face V-JEPA `config.json` (`vjepa2` / `vjepa_sincos`).

- `config_to_hf_fields(cfg)`: the `VJEPA2Config` fields of the models `cfg` builds (export);
- `config_from_hf_fields(fields)`: the pretraining `Config` an export describes (evaluation);
- `check_hf_fields(fields, cfg, ...)`: an export's fields against `cfg` (import), for what shapes
  cannot reveal (head counts, activation);
- `read_hf_config(folder)`: a folder's `config.json`, refused unless its model type is a V-JEPA one
  (`hf_pos_embed` maps the model type to our position scheme).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vjepa_scale.config import (CUSTOM_SIZE, Config, ConfigError, DataConfig, MaskConfig, MaskSpec, ModelConfig,
                                resolve_vit_size, vit_size_name)
from vjepa_scale.weights.checks import CheckpointMismatchError
from vjepa_scale.weights.releases import VJEPA2_MASK_TOKENS

HF_MODEL_TYPES = {"vjepa2": "rope", "vjepa_sincos": "sincos"}  # model_type -> model.pos_embed

# HF field -> our config key. The first four come from model.size unless model.<key> overrides it.
ENCODER_FIELDS = {"hidden_size": "model.width", "num_hidden_layers": "model.depth",
                  "num_attention_heads": "model.num_heads", "mlp_ratio": "model.mlp_ratio",
                  "patch_size": "model.patch_size", "tubelet_size": "model.tubelet_size",
                  "qkv_bias": "model.qkv_bias"}
# pred_mask_tokens is ours (stored as an extra config attribute; the stock VJEPA2Config keeps it unused): with
# `shared`, pred_num_mask_tokens is 1 whatever the number of mask types.
PREDICTOR_FIELDS = {"pred_hidden_size": "model.pred_width", "pred_num_hidden_layers": "model.pred_depth",
                    "pred_num_attention_heads": "model.pred_num_heads", "pred_mlp_ratio": "model.pred_mlp_ratio",
                    "pred_mask_tokens": "model.mask_tokens"}
_VIA_SIZE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio")


def config_to_hf_fields(cfg: Config) -> dict[str, Any]:
    """`VJEPA2Config` keyword arguments for the models `cfg` builds (the export's config.json)."""
    dims = resolve_vit_size(cfg.model)
    m = cfg.model
    return dict(
        patch_size=m.patch_size, crop_size=cfg.data.crop_size, frames_per_clip=cfg.data.frames_per_clip,
        tubelet_size=m.tubelet_size, hidden_size=dims.width, in_chans=3,
        num_attention_heads=dims.num_heads, num_hidden_layers=dims.depth, mlp_ratio=float(dims.mlp_ratio),
        layer_norm_eps=1e-6, qkv_bias=m.qkv_bias, hidden_act="gelu",
        pred_hidden_size=m.pred_width, pred_num_attention_heads=m.pred_num_heads,
        pred_num_hidden_layers=m.pred_depth,
        pred_num_mask_tokens=1 if m.mask_tokens == "shared" else len(cfg.mask.types),
        pred_mlp_ratio=float(m.pred_mlp_ratio), pred_mask_tokens=m.mask_tokens,
    )


def config_from_hf_fields(fields: dict[str, Any], source: str = "config.json") -> Config:
    """The pretraining `Config` (model, clip size, mask-type count) that an export's fields describe.

    model.size is the `VIT_SIZES` name the dims match, else `custom` with the dims given. Predictor fields
    absent from the export take our defaults; without `pred_mask_tokens`, V-JEPA 2's 10 release tokens
    read as a shared token (its rule), any other count as that many mask types. A shared token keeps
    our default mask types. Raises `ConfigError` naming `source`.
    """
    tokens = int(fields.get("pred_num_mask_tokens", 2))
    mask_tokens = fields.get("pred_mask_tokens", "shared" if tokens == VJEPA2_MASK_TOKENS else "per_type")
    pos_embed = hf_pos_embed(fields, source)
    d = ModelConfig()
    try:
        dims = dict(width=fields["hidden_size"], depth=fields["num_hidden_layers"],
                    num_heads=fields["num_attention_heads"], mlp_ratio=float(fields["mlp_ratio"]))
        size = vit_size_name(**dims)  # the named size with these dims, else custom (then the dims are given)
        model = ModelConfig(size=size, **(dims if size == CUSTOM_SIZE else {}),
                            patch_size=fields["patch_size"], tubelet_size=fields["tubelet_size"],
                            qkv_bias=bool(fields.get("qkv_bias", True)), pos_embed=pos_embed,
                            pred_width=fields.get("pred_hidden_size", d.pred_width),
                            pred_depth=fields.get("pred_num_hidden_layers", d.pred_depth),
                            pred_num_heads=fields.get("pred_num_attention_heads", d.pred_num_heads),
                            pred_mlp_ratio=float(fields.get("pred_mlp_ratio", d.pred_mlp_ratio)),
                            mask_tokens=mask_tokens)
        data = DataConfig(backend="synthetic", crop_size=fields["crop_size"],
                          frames_per_clip=fields["frames_per_clip"])
    except KeyError as e:
        raise ConfigError(f"{source} has no field {e}") from None
    masks = MaskConfig() if mask_tokens == "shared" else MaskConfig(types=[MaskSpec() for _ in range(tokens)])
    return Config(model=model, mask=masks, data=data).validate()


def check_hf_fields(fields: dict[str, Any], cfg: Config, source: str, has_predictor: bool) -> None:
    """The export's architecture fields equal `config_to_hf_fields(cfg)`, else `CheckpointMismatchError`.

    Absent fields are not compared; predictor fields only when the export holds a predictor.
    """
    want = config_to_hf_fields(cfg)
    names = {**ENCODER_FIELDS, **(PREDICTOR_FIELDS if has_predictor else {})}
    for field, ours in names.items():
        if field not in fields:
            continue
        have, w = fields[field], want[field]
        same = abs(float(have) - float(w)) < 1e-6 if isinstance(w, float) else have == w
        if not same:
            set_directly = getattr(cfg.model, ours.removeprefix("model."), None) is not None
            via = f" (via model.size={cfg.model.size})" if field in _VIA_SIZE and not set_directly else ""
            raise CheckpointMismatchError(f"{source}: {field}={have!r} but the config has {ours}{via}={w!r}")
    if fields.get("hidden_act", want["hidden_act"]) != want["hidden_act"]:
        raise CheckpointMismatchError(f"{source}: hidden_act={fields['hidden_act']!r}; our blocks use "
                                      f"{want['hidden_act']}")


def read_hf_config(folder: str | os.PathLike) -> dict[str, Any]:
    """`folder/config.json` of a V-JEPA export; `ConfigError` if missing or of another model type."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"'{folder}' is not a Hugging Face export (no config.json)")
    try:
        fields = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{path} holds no JSON object")
    hf_pos_embed(fields, str(path))
    return fields


def hf_pos_embed(fields: dict[str, Any], source: str) -> str:
    """Our `model.pos_embed` for the export's model type; `ConfigError` if it is not a V-JEPA one."""
    kind = fields.get("model_type")
    if kind not in HF_MODEL_TYPES:
        raise ConfigError(f"{source}: model_type {kind!r} is not a V-JEPA export "
                          f"(expected one of {sorted(HF_MODEL_TYPES)})")
    return HF_MODEL_TYPES[kind]
