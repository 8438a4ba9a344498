"""Initialize our models from pretrained weights: an exported HF folder or an official V-JEPA checkpoint.

`load_init_state(path, cfg)` detects the format, converts names to ours, and checks every key and
shape against the models `cfg` builds. Supported:
- a Hugging Face folder (`config.json` + safetensors, single or sharded) of model type `vjepa2`
  (RoPE; also `VJEPA2ForVideoClassification`, whose head is ignored) or `vjepa_sincos` (ours);
- the official V-JEPA 1 `torch.save` dict (`encoder`, `predictor`, `target_encoder`, keys prefixed
  `module.backbone.`, fused `qkv`, `mask_tokens.{i}`, sin-cos `pos_embed` / `predictor_pos_embed`);
- the official V-JEPA 2 dict (same names, RoPE, no position tables);
- one of our own training runs or checkpoints (ZeRO-3, any world size), consolidated on the CPU.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch

from vjepa_scale.config import Config, resolve_vit_size
from vjepa_scale.models.pos_embed import sincos_3d
from vjepa_scale.weights import keys
from vjepa_scale.weights.checks import CheckpointMismatchError, check_state_dict, expected_shapes
from vjepa_scale.weights.hf_config import check_hf_fields, hf_pos_embed, read_hf_config
from vjepa_scale.weights.run import load_consolidated, resolve_checkpoint

log = logging.getLogger(__name__)
StateDict = dict[str, torch.Tensor]


def load_init_state(path: str | os.PathLike, cfg: Config) -> dict[str, Optional[StateDict]]:
    """Weights at `path` as our state dicts, checked against `cfg`.

    Returns {'encoder': sd, 'predictor': sd or None, 'target_encoder': sd or None} for
    `VisionTransformer3D` / `Predictor`. An HF folder holds one encoder (target_encoder is None);
    official checkpoints and our runs give the online `encoder` and the EMA `target_encoder`.
    Raises `CheckpointMismatchError` naming the offending key (and both shapes) when the weights do
    not fit the configured model, and `FileNotFoundError` / `ValueError` for unknown formats.
    """
    p = Path(path)
    if p.is_dir():
        state = _from_hf_folder(p, cfg) if (p / "config.json").is_file() else _from_training_run(p, cfg)
    elif p.is_file():
        state = _from_torch_file(p, cfg)
    else:
        raise FileNotFoundError(f"train.init_from: '{p}' does not exist")
    _fit_mask_tokens(state, cfg, str(p))
    shapes = expected_shapes(cfg)
    check_state_dict(state["encoder"], shapes["encoder"], "encoder", str(p))
    if state.get("target_encoder") is not None:
        check_state_dict(state["target_encoder"], shapes["encoder"], "target_encoder", str(p))
    if state.get("predictor") is not None:
        check_state_dict(state["predictor"], shapes["predictor"], "predictor", str(p))
    return state


# ---------------------------------------------------------------------------------------------------
# Hugging Face folders
# ---------------------------------------------------------------------------------------------------

def read_hf_weights(folder: Path) -> StateDict:
    """All tensors of a safetensors export, single file or sharded with `model.safetensors.index.json`."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        sd: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise FileNotFoundError(f"{index} lists shard '{shard}', which is missing from {folder}")
            sd.update(load_file(folder / shard))
        return sd
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _from_hf_folder(folder: Path, cfg: Config) -> dict[str, Optional[StateDict]]:
    hf_cfg = read_hf_config(folder)
    model_type = hf_cfg["model_type"]
    _check_positions(hf_pos_embed(hf_cfg, str(folder)), cfg, f"{folder} (model_type {model_type})")
    sd = read_hf_weights(folder)
    if all(k.startswith("vjepa2.") or k.startswith(("pooler.", "classifier.")) for k in sd):
        dropped = [k for k in sd if not k.startswith("vjepa2.")]
        if dropped:
            log.info("%s: ignoring %d classification-head tensors (pooler/classifier)", folder, len(dropped))
        sd = {k[len("vjepa2."):]: v for k, v in sd.items() if k.startswith("vjepa2.")}
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    pred = {k[len("predictor."):]: v for k, v in sd.items() if k.startswith("predictor.")}
    other = sorted(k for k in sd if not k.startswith(("encoder.", "predictor.")))
    if other:
        raise keys.KeyLayoutError(f"{folder}: tensors outside encoder./predictor.: {other[:8]}")
    check_hf_fields(hf_cfg, cfg, f"{folder}/config.json", has_predictor=bool(pred))
    return {"encoder": keys.encoder_from_hf(enc),
            "predictor": keys.predictor_from_hf(pred) if pred else None,
            "target_encoder": None}


# ---------------------------------------------------------------------------------------------------
# Our own training checkpoints
# ---------------------------------------------------------------------------------------------------

_ARCH_FIELDS = ("pos_embed", "patch_size", "tubelet_size", "qkv_bias", "pred_width", "pred_depth",
                "pred_num_heads", "pred_mlp_ratio")


def _from_training_run(p: Path, cfg: Config) -> dict[str, Optional[StateDict]]:
    try:
        ckpt = resolve_checkpoint(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: neither a Hugging Face export (no config.json) nor a training run or "
                                f"checkpoint (no checkpoints/step_*/meta.json)") from None
    online = load_consolidated(ckpt, which="online")
    have, want = online["config"].model, cfg.model
    hd, wd = resolve_vit_size(have), resolve_vit_size(want)
    pairs = [(f, getattr(have, f), getattr(want, f)) for f in _ARCH_FIELDS]
    pairs += [(f"{f} (via model.size)", getattr(hd, f), getattr(wd, f)) for f in ("width", "depth", "num_heads",
                                                                                  "mlp_ratio")]
    for field, a, b in pairs:
        if a != b:
            raise CheckpointMismatchError(f"{ckpt}: the run was trained with model.{field}={a!r} but the config "
                                          f"has {b!r}")
    target = load_consolidated(ckpt, which="target")
    log.info("%s: consolidated training checkpoint at step %d", ckpt, online["step"])
    return {"encoder": online["encoder"], "predictor": online["predictor"], "target_encoder": target["encoder"]}


# ---------------------------------------------------------------------------------------------------
# Official V-JEPA 1 / V-JEPA 2 torch checkpoints
# ---------------------------------------------------------------------------------------------------

def _torch_load(path: Path) -> Any:
    """Tensors and plain containers only (never arbitrary pickled objects), memory-mapped when possible."""
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: holds objects other than tensors and plain containers, which are not loaded "
                         f"for safety; re-save just the state dicts ({e})") from None


def _from_torch_file(path: Path, cfg: Config) -> dict[str, Optional[StateDict]]:
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not any(k in ckpt for k in ("encoder", "target_encoder", "ema_encoder")):
        found = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not an official V-JEPA checkpoint (expected a dict with 'encoder' / "
                         f"'target_encoder' / 'predictor' state dicts, found {found})")
    source = str(path)
    online = ckpt.get("encoder")
    target = ckpt.get("target_encoder", ckpt.get("ema_encoder"))
    encoders = {}
    tables = {}
    for name, sd in (("encoder", online), ("target_encoder", target)):
        if sd is not None:
            encoders[name], tables[name] = keys.encoder_from_official(keys.strip_prefixes(sd))
    predictor = pred_table = None
    if ckpt.get("predictor") is not None:
        predictor, pred_table = keys.predictor_from_official(keys.strip_prefixes(ckpt["predictor"]))
    has_table = any(t is not None for t in tables.values())
    scheme = "sincos" if has_table else "rope"
    _check_positions(scheme, cfg, f"{source} ({'V-JEPA 1, sin-cos' if has_table else 'V-JEPA 2, RoPE'} layout)")
    dims = resolve_vit_size(cfg.model)
    for name, t in tables.items():
        if scheme == "sincos" and t is None:
            raise CheckpointMismatchError(f"{source}: '{name}' has no pos_embed while the other encoder has one")
        if t is not None:
            _check_table(t, dims.width, cfg.grid, f"{source}: {name}.pos_embed")
    if predictor is not None and scheme == "sincos":
        if pred_table is None:
            raise CheckpointMismatchError(f"{source}: predictor has no predictor_pos_embed (RoPE) but the encoder "
                                          f"uses sin-cos positions")
        _check_table(pred_table, cfg.model.pred_width, cfg.grid, f"{source}: predictor.predictor_pos_embed")
    if "encoder" not in encoders:
        encoders["encoder"] = encoders["target_encoder"]
    log.info("%s: loaded official V-JEPA checkpoint (epoch %s)", source, ckpt.get("epoch"))
    return {"encoder": encoders["encoder"], "predictor": predictor, "target_encoder": encoders.get("target_encoder")}


def _check_positions(scheme: str, cfg: Config, source: str) -> None:
    if scheme != cfg.model.pos_embed:
        raise CheckpointMismatchError(f"{source} uses {scheme} positions but the config has "
                                      f"model.pos_embed={cfg.model.pos_embed}")


def _check_table(table: torch.Tensor, dim: int, grid: tuple[int, int, int], what: str) -> None:
    """A stored sin-cos table must be ours (2*ceil(D/6) dims per axis); positions are not loaded."""
    table = table.reshape(-1, table.shape[-1])
    n = grid[0] * grid[1] * grid[2]
    if table.shape[-1] != dim:
        raise CheckpointMismatchError(f"{what} has width {table.shape[-1]} but the model has {dim}")
    if table.shape[0] != n:
        log.info("%s covers %d tokens, the configured grid %s has %d: not compared", what, table.shape[0], grid, n)
        return
    err = (table.float() - sincos_3d(dim, grid)).abs().max().item()
    if err > 1e-4:
        raise CheckpointMismatchError(
            f"{what} differs from our 3D sin-cos table (max abs diff {err:.3g}); the checkpoint was trained "
            f"with another table layout (e.g. the reference's uniform_power=False) and would see wrong positions")


def _fit_mask_tokens(state: dict[str, Optional[StateDict]], cfg: Config, source: str) -> None:
    """Official V-JEPA 2 predictors carry 10 mask tokens; type m uses token m, so extras are dropped."""
    pred = state.get("predictor")
    M = len(cfg.mask.types)
    if pred is None or "mask_tokens" not in pred or pred["mask_tokens"].shape[0] <= M:
        return
    K = pred["mask_tokens"].shape[0]
    log.warning("%s: predictor has %d mask tokens, the config %d mask types: keeping tokens 0..%d",
                source, K, M, M - 1)
    pred["mask_tokens"] = pred["mask_tokens"][:M]
