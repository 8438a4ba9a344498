"""Initialize our models from pretrained weights: an exported HF folder or an official V-JEPA checkpoint.

`load_init_state(path, cfg)` detects the format, converts names to ours, and checks every key and
shape against the models `cfg` builds. Supported:
- a Hugging Face folder (`config.json` + safetensors, single or sharded) of model type `vjepa2`
  (RoPE; also `VJEPA2ForVideoClassification`, whose head is ignored) or `vjepa_sincos` (ours);
- the official V-JEPA 1 `torch.save` dict (`encoder`, `predictor`, `target_encoder`, keys prefixed
  `module.backbone.`, fused `qkv`, `mask_tokens.{i}`, sin-cos `pos_embed` / `predictor_pos_embed`);
- the official V-JEPA 2 dict (same names, RoPE; release files may still carry unused tables, ignored).
  Official files are matched against the release table (`weights.releases`): head counts, which the
  weights do not show, must be the release's; mask tokens map by the family's rule (V-JEPA 1: type m
  from token m; V-JEPA 2: every type from token 0, or a `model.mask_tokens: shared` token from token 0;
  a V-JEPA 1 file into a shared token is refused). `official_config(path)` is a release's `Config`;
- one of our own training runs or checkpoints (ZeRO-1/2/3, any world size), consolidated on the CPU.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from vjepa_scale.config import Config, resolve_vit_size
from vjepa_scale.models.pos_embed import sincos_3d
from vjepa_scale.weights import keys
from vjepa_scale.weights.checks import CheckpointMismatchError, check_architecture, check_state_dict, expected_shapes
from vjepa_scale.weights.hf_config import check_hf_fields, hf_pos_embed, read_hf_config
from vjepa_scale.weights.releases import (VJEPA2_MASK_TOKENS, FileLayout, Release, check_heads, identify,
                                          pick_release)
from vjepa_scale.weights.run import (find_latest, is_complete, is_latest_marker, load_consolidated,
                                     resolve_checkpoint)

log = logging.getLogger(__name__)
StateDict = dict[str, torch.Tensor]


def load_init_state(path: str | os.PathLike, cfg: Config, hf: bool = False) -> dict[str, Optional[StateDict]]:
    """Weights at `path` as our state dicts, checked against `cfg`.

    Returns {'encoder': sd, 'predictor': sd or None, 'target_encoder': sd or None} for
    `VisionTransformer3D` / `Predictor`. An HF folder holds one encoder (target_encoder is None);
    official checkpoints and our runs give the online `encoder` and the EMA `target_encoder`.
    Raises `CheckpointMismatchError` naming the offending key (and both shapes) when the weights do
    not fit the configured model, and `FileNotFoundError` / `ValueError` for unknown formats
    (`check_init_source` is the cheap part of these checks). `hf`: read the folder as a Hugging Face
    export even when it is also a training run (evaluation's `encoder.hf_path`).
    """
    p = _source_path(path)
    if p.is_dir():
        state = _from_hf_folder(p, cfg) if hf or _is_hf_folder(p) else _from_training_run(p, cfg)
    elif p.is_file():
        state = _from_torch_file(p, cfg)
    else:
        raise FileNotFoundError(f"'{p}' does not exist")
    if p.is_dir():
        _fit_mask_tokens(state, cfg, str(p))
    shapes = expected_shapes(cfg)
    check_state_dict(state["encoder"], shapes["encoder"], "encoder", str(p))
    if state.get("target_encoder") is not None:
        check_state_dict(state["target_encoder"], shapes["encoder"], "target_encoder", str(p))
    if state.get("predictor") is not None:
        check_state_dict(state["predictor"], shapes["predictor"], "predictor", str(p))
    return state


def _source_path(path: str | os.PathLike) -> Path:
    """`path`, or the checkpoint a run's `checkpoints/latest` marker names (as `--resume` takes it; an
    official file that happens to be called `latest` is no marker: those are a line of text)."""
    p = Path(path).expanduser()
    return resolve_checkpoint(p) if is_latest_marker(p) else p


def _is_hf_folder(p: Path) -> bool:
    """A Hugging Face export folder (config.json), unless it is a training run or checkpoint that also
    holds an export (`convert_to_hf.py RUN RUN`): the run's own checkpoints then win (they have the
    predictor and the EMA target)."""
    return (p / "config.json").is_file() and not is_complete(p) and find_latest(p) is None


def check_init_source(path: str | os.PathLike, cfg: Config) -> None:
    """What `load_init_state(path, cfg)` checks that needs no weights read, with its errors: the format,
    and the architecture the source states (an HF folder's config.json, a run's config.yaml); an official
    file states it only in its tensors, so it gets every check of `load_init_state` (memory-mapped: shapes
    and the small tables are read, not the weights). For the pre-flight checks."""
    p = _source_path(path)
    if p.is_dir() and _is_hf_folder(p):
        hf_cfg = read_hf_config(p)
        _check_positions(hf_pos_embed(hf_cfg, str(p)), cfg, f"{p} (model_type {hf_cfg['model_type']})")
        names = [k.removeprefix("vjepa2.") for k in _hf_tensor_names(p)]
        check_hf_fields(hf_cfg, cfg, f"{p}/config.json", has_predictor=any(k.startswith("predictor.") for k in names))
    elif p.is_dir():
        from vjepa_scale.config import load_config

        ckpt = _run_checkpoint(p)
        check_architecture(load_config(ckpt / "config.yaml").model, cfg.model, str(ckpt))
    elif p.is_file():  # memory-mapped: the whole check reads shapes, the mask tokens and sin-cos tables
        load_init_state(p, cfg)
    else:
        raise FileNotFoundError(f"'{p}' does not exist")


# ---------------------------------------------------------------------------------------------------
# Hugging Face folders
# ---------------------------------------------------------------------------------------------------

def _load_safetensors(path: Path) -> StateDict:
    """The tensors of one safetensors file; a damaged file is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as e:
        raise ValueError(f"{path} is damaged (not a whole safetensors file: {e})") from None


def read_hf_weights(folder: Path) -> StateDict:
    """All tensors of a safetensors export, single file or sharded with `model.safetensors.index.json`."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is damaged (no JSON weight_map: {type(e).__name__}: {e})") from None
        sd: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise FileNotFoundError(f"{index} lists shard '{shard}', which is missing from {folder}")
            sd.update(_load_safetensors(folder / shard))
        return sd
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _hf_tensor_names(folder: Path) -> list[str]:
    """The tensor names of an export, from the safetensors header or the shard index (no weights read)."""
    from safetensors import SafetensorError, safe_open

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    try:
        if single.is_file():
            with safe_open(single, framework="pt") as f:
                return list(f.keys())
        if index.is_file():
            return list(json.loads(index.read_text())["weight_map"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise ValueError(f"{single if single.is_file() else index}: not a readable safetensors export "
                         f"({type(e).__name__}: {e})") from None
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

def _run_checkpoint(p: Path) -> Path:
    try:
        return resolve_checkpoint(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: neither a Hugging Face export (no config.json) nor a training run or "
                                f"checkpoint (no checkpoints/step_*/meta.json)") from None


def _from_training_run(p: Path, cfg: Config) -> dict[str, Optional[StateDict]]:
    ckpt = _run_checkpoint(p)
    online = load_consolidated(ckpt, which="online")
    check_architecture(online["config"].model, cfg.model, str(ckpt))
    target = load_consolidated(ckpt, which="target")
    log.info("%s: consolidated training checkpoint at step %d", ckpt, online["step"])
    return {"encoder": online["encoder"], "predictor": online["predictor"], "target_encoder": target["encoder"]}


# ---------------------------------------------------------------------------------------------------
# Official V-JEPA 1 / V-JEPA 2 torch checkpoints
# ---------------------------------------------------------------------------------------------------

_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")  # torch.save: a zip archive; legacy: pickled magic number
_NOT_TORCH = ("expected an official V-JEPA `torch.save` file (e.g. vitl16.pth.tar), a training run or checkpoint "
              "folder, or a Hugging Face export folder")


def _torch_load(path: Path) -> Any:
    """Tensors and plain containers only (never arbitrary pickled objects), memory-mapped when possible;
    ValueError naming the file when it is no torch checkpoint."""
    import pickle

    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_MAGIC):
        raise ValueError(f"{path}: not a torch checkpoint file ({'empty' if not head else 'unknown format'}); "
                         f"{_NOT_TORCH}")
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
    except (RuntimeError, EOFError, KeyError) as e:  # a truncated or damaged file
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'ends early'}); {_NOT_TORCH}") from None


@dataclass
class OfficialFile:
    """An official V-JEPA 1 / 2 file in our names, with what its tensors say about its architecture."""

    encoder: Optional[StateDict]  # the online encoder
    target_encoder: Optional[StateDict]
    predictor: Optional[StateDict]  # mask tokens as in the file (K, W)
    tables: dict[str, torch.Tensor]  # sin-cos tables by part: encoder / target_encoder / predictor
    layout: FileLayout
    release: Optional[Release]  # the official release it is (by shapes, then file name), or None
    epoch: Any = None


def read_official(path: str | os.PathLike) -> OfficialFile:
    """Read an official V-JEPA `torch.save` dict (tensors only) and identify its release; no config needed."""
    path = Path(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not any(k in ckpt for k in ("encoder", "target_encoder", "ema_encoder")):
        found = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not an official V-JEPA checkpoint (expected a dict with 'encoder' / "
                         f"'target_encoder' / 'predictor' state dicts, found {found})")
    encoders: dict[str, StateDict] = {}
    tables: dict[str, torch.Tensor] = {}
    for name, sd in (("encoder", ckpt.get("encoder")), ("target_encoder", ckpt.get("target_encoder",
                                                                                   ckpt.get("ema_encoder")))):
        if sd is not None:
            encoders[name], table = keys.encoder_from_official(keys.strip_prefixes(sd))
            if table is not None:
                tables[name] = table
    predictor = None
    if ckpt.get("predictor") is not None:
        predictor, table = keys.predictor_from_official(keys.strip_prefixes(ckpt["predictor"]))
        if table is not None:
            tables["predictor"] = table
    enc = encoders.get("encoder", encoders.get("target_encoder"))
    layout = identify(enc, predictor, tables.get("encoder", tables.get("target_encoder", tables.get("predictor"))))
    return OfficialFile(encoders.get("encoder"), encoders.get("target_encoder"), predictor, tables, layout,
                        pick_release(layout, path.name), ckpt.get("epoch"))


def official_config(path: str | os.PathLike) -> Config:
    """The `Config` of the official release at `path` (architecture, clip, init family), from the table in
    `weights.releases`; `CheckpointMismatchError` when its shapes fit no release (then give a config)."""
    f = read_official(path)
    if f.release is None:
        enc = f.encoder if f.encoder is not None else f.target_encoder
        raise CheckpointMismatchError(
            f"{path}: {f.layout.describe()} (width {enc['patch_embed.weight'].shape[0]}); the architecture "
            f"(head counts above all) cannot be read from the weights: give a config")
    log.info("%s: %s", path, f.release.describe())
    return f.release.config()


def _from_torch_file(path: Path, cfg: Config) -> dict[str, Optional[StateDict]]:
    f = read_official(path)
    source, layout = str(path), f.layout
    _check_positions(layout.pos_embed, cfg, f"{source} ({layout.describe()})")
    check_heads(f.release, cfg, source, with_predictor=f.predictor is not None)
    if layout.family == "vjepa2" and f.tables:
        log.info("%s: V-JEPA 2 layout (RoPE); ignoring the position tables it carries (%s), which its model does "
                 "not use", source, ", ".join(sorted(f.tables)))
    if layout.family == "vjepa1":
        dims = resolve_vit_size(cfg.model)
        for name in ("encoder", "target_encoder"):
            if getattr(f, name) is not None and name not in f.tables:
                raise CheckpointMismatchError(f"{source}: '{name}' has no pos_embed while the other encoder has one")
            if name in f.tables:
                _check_table(f.tables[name], dims.width, cfg.grid, f"{source}: {name}.pos_embed")
        if f.predictor is not None:
            if "predictor" not in f.tables:
                raise CheckpointMismatchError(f"{source}: predictor has no predictor_pos_embed (RoPE) but the "
                                              f"encoder uses sin-cos positions")
            _check_table(f.tables["predictor"], cfg.model.pred_width, cfg.grid,
                         f"{source}: predictor.predictor_pos_embed")
    if f.predictor is not None and "mask_tokens" in f.predictor:
        _map_mask_tokens(f.predictor, layout.family, cfg, source)
    log.info("%s: loaded official V-JEPA checkpoint (%s; epoch %s)", source, layout.describe(), f.epoch)
    encoder = f.encoder if f.encoder is not None else f.target_encoder
    return {"encoder": encoder, "predictor": f.predictor, "target_encoder": f.target_encoder}


def _map_mask_tokens(pred: StateDict, family: str, cfg: Config, source: str) -> None:
    """Our mask types start from the token(s) the recipe trained for them.

    V-JEPA 1 trains token m for mask type m (extra tokens are dropped). V-JEPA 2 picks the token by
    clip-length group, so its released recipes (one clip length) trained token 0 for both mask types: every
    type, or the one `model.mask_tokens: shared` token, starts from token 0. A shared token from V-JEPA 1's
    per-type tokens is refused: taking one would drop what the other types' tokens learned.
    """
    tokens = pred["mask_tokens"]
    K, M = tokens.shape[0], len(cfg.mask.types)
    shared = cfg.model.mask_tokens == "shared"
    if family == "vjepa2":
        into = "the shared mask token (model.mask_tokens: shared) starts" if shared else \
            f"all {M} mask types start"
        log.info("%s: V-JEPA 2 predictor with %d mask tokens, chosen by clip-length group (its recipes train "
                 "token 0 for every mask type): %s from token 0", source, K, into)
        pred["mask_tokens"] = tokens[:1].clone() if shared else tokens[:1].expand(M, -1).clone()
    elif shared:
        _check_shared_source(K, family, cfg, source)
    elif K > M:
        log.warning("%s: predictor has %d mask tokens, the config %d mask types: keeping tokens 0..%d",
                    source, K, M, M - 1)
        pred["mask_tokens"] = tokens[:M]


def _check_shared_source(num_tokens: Optional[int], family: str, cfg: Config, source: str) -> None:
    """A shared mask token cannot come from per-type tokens (V-JEPA 1's, or an export of per_type):
    `CheckpointMismatchError` naming model.mask_tokens."""
    if cfg.model.mask_tokens == "shared" and family != "vjepa2" and (num_tokens or 0) > 1:
        raise CheckpointMismatchError(
            f"{source}: predictor 'mask_tokens' holds {num_tokens} tokens, one per mask type (type m trained "
            f"token m), but the config has model.mask_tokens=shared (one token for every type); taking one would "
            f"drop what the others learned: load it with model.mask_tokens: per_type")


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
    """HF folders: our exports hold one token per mask type (type m -> token m, extras dropped), or one
    shared token; a folder with V-JEPA 2's 10 release tokens is a converted V-JEPA 2 release and follows
    its rule (token 0)."""
    pred = state.get("predictor")
    M = 1 if cfg.model.mask_tokens == "shared" else len(cfg.mask.types)
    if pred is None or "mask_tokens" not in pred or pred["mask_tokens"].shape[0] <= M:
        return
    family = "vjepa2" if pred["mask_tokens"].shape[0] == VJEPA2_MASK_TOKENS else "vjepa1"
    _map_mask_tokens(pred, family, cfg, source)
