"""Parameter-name maps between our models and the Hugging Face / official V-JEPA layouts.

Ours (`VisionTransformer3D`, `Predictor`)       HF `vjepa2` (prefix `encoder.` / `predictor.`)
  patch_embed.{w,b}                               embeddings.patch_embeddings.proj.{w,b}
  transformer.blocks.{i}.attn.qkv (fused)         layer.{i}.attention.{query,key,value} (split)
  transformer.blocks.{i}.attn.proj / norm1 / ...  layer.{i}.attention.proj / norm1 / ...
  transformer.norm                                layernorm
  embed (predictor)                               embeddings.predictor_embeddings
  mask_tokens (M, W)                              embeddings.mask_tokens (M, 1, 1, W)
    (M: one per mask type, or 1 with model.mask_tokens: shared)

Official V-JEPA 1 / 2 `torch.save` layout (after dropping `module.` / `backbone.` prefixes):
  patch_embed.proj, pos_embed (V-JEPA 1 only), blocks.{i}.attn.qkv, norm;
  predictor_embed, mask_tokens.{i} (1, 1, W), predictor_pos_embed (V-JEPA 1 only),
  predictor_blocks.{i}, predictor_norm, predictor_proj.
"""
from __future__ import annotations

import re
from typing import Optional

import torch

StateDict = dict[str, torch.Tensor]

_BLOCK = re.compile(r"^transformer\.blocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = ("norm1.", "norm2.", "attn.proj.", "mlp.fc1.", "mlp.fc2.")


class KeyLayoutError(ValueError):
    """A checkpoint key that the layout does not know (the message names it and the source)."""


def _block_to_hf(i: str, rest: str, value: torch.Tensor, out: StateDict, prefix: str) -> None:
    if rest.startswith("attn.qkv."):
        kind = rest.split(".")[-1]
        for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
            out[f"{prefix}layer.{i}.attention.{name}.{kind}"] = part.clone()  # own storage for safetensors
    elif rest.startswith("attn.proj."):
        out[f"{prefix}layer.{i}.attention.{rest[len('attn.'):]}"] = value
    elif rest.startswith(_BLOCK_PARTS):
        out[f"{prefix}layer.{i}.{rest}"] = value
    else:
        raise KeyLayoutError(f"unknown block parameter 'transformer.blocks.{i}.{rest}'")


def _transformer_to_hf(key: str, value: torch.Tensor, out: StateDict, prefix: str) -> bool:
    m = _BLOCK.match(key)
    if m:
        _block_to_hf(m.group(1), m.group(2), value, out, prefix)
        return True
    if key.startswith("transformer.norm."):
        out[f"{prefix}layernorm.{key.split('.')[-1]}"] = value
        return True
    return False


def encoder_to_hf(encoder: StateDict, prefix: str = "encoder.") -> StateDict:
    """Our encoder state dict -> HF `vjepa2` names (query/key/value split from the fused qkv)."""
    out: StateDict = {}
    for key, value in encoder.items():
        if key.startswith("patch_embed."):
            out[f"{prefix}embeddings.patch_embeddings.proj.{key.split('.')[-1]}"] = value
        elif not _transformer_to_hf(key, value, out, prefix):
            raise KeyLayoutError(f"encoder: unknown parameter '{key}'")
    return out


def predictor_to_hf(predictor: StateDict, prefix: str = "predictor.") -> StateDict:
    """Our predictor state dict -> HF `vjepa2` names; mask tokens (M, W) -> (M, 1, 1, W)."""
    out: StateDict = {}
    for key, value in predictor.items():
        if key.startswith("embed."):
            out[f"{prefix}embeddings.predictor_embeddings.{key.split('.')[-1]}"] = value
        elif key == "mask_tokens":
            out[f"{prefix}embeddings.mask_tokens"] = value.reshape(value.shape[0], 1, 1, value.shape[1]).clone()
        elif key.startswith("proj."):
            out[f"{prefix}{key}"] = value
        elif not _transformer_to_hf(key, value, out, prefix):
            raise KeyLayoutError(f"predictor: unknown parameter '{key}'")
    return out


_HF_LAYER = re.compile(r"^layer\.(\d+)\.(.+)$")


def _hf_transformer_from(sub: StateDict, where: str) -> tuple[StateDict, StateDict]:
    """HF `layer.{i}.*` / `layernorm.*` -> our `transformer.*`; returns (converted, leftovers)."""
    out: StateDict = {}
    rest: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sub.items():
        m = _HF_LAYER.match(key)
        if key.startswith("layernorm."):
            out[f"transformer.norm.{key.split('.')[-1]}"] = value
        elif m:
            i, tail = m.groups()
            am = re.match(r"^attention\.(query|key|value)\.(weight|bias)$", tail)
            if am:
                qkv.setdefault((i, am.group(2)), {})[am.group(1)] = value
            elif tail.startswith("attention.proj."):
                out[f"transformer.blocks.{i}.attn.{tail[len('attention.'):]}"] = value
            elif tail.startswith(_BLOCK_PARTS):
                out[f"transformer.blocks.{i}.{tail}"] = value
            else:
                raise KeyLayoutError(f"{where}: unknown parameter '{where}.{key}'")
        else:
            rest[key] = value
    for (i, kind), parts in qkv.items():
        missing = [n for n in ("query", "key", "value") if n not in parts]
        if missing:
            raise KeyLayoutError(f"{where}: layer {i} has attention {sorted(parts)} {kind} but not {missing}")
        out[f"transformer.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out, rest


def encoder_from_hf(sub: StateDict) -> StateDict:
    """HF `vjepa2` encoder names (without the `encoder.` prefix) -> our encoder state dict."""
    out, rest = _hf_transformer_from(sub, "encoder")
    for key, value in rest.items():
        if key.startswith("embeddings.patch_embeddings.proj."):
            out[f"patch_embed.{key.split('.')[-1]}"] = value
        else:
            raise KeyLayoutError(f"encoder: unknown parameter 'encoder.{key}'")
    return out


def predictor_from_hf(sub: StateDict) -> StateDict:
    """HF `vjepa2` predictor names (without the `predictor.` prefix) -> our predictor state dict."""
    out, rest = _hf_transformer_from(sub, "predictor")
    for key, value in rest.items():
        if key.startswith("embeddings.predictor_embeddings."):
            out[f"embed.{key.split('.')[-1]}"] = value
        elif key == "embeddings.mask_tokens":
            out["mask_tokens"] = value.reshape(value.shape[0], value.shape[-1])
        elif key.startswith("proj."):
            out[key] = value
        else:
            raise KeyLayoutError(f"predictor: unknown parameter 'predictor.{key}'")
    return out


def strip_prefixes(sd: StateDict) -> StateDict:
    """Drop the DDP `module.` and multi-mask wrapper `backbone.` prefixes of official checkpoints."""
    out: StateDict = {}
    for key, value in sd.items():
        k = key
        for p in ("module.", "backbone."):
            if k.startswith(p):
                k = k[len(p):]
        out[k] = value
    return out


_OFF_BLOCK = re.compile(r"^(blocks|predictor_blocks)\.(\d+)\.(.+)$")


def encoder_from_official(sd: StateDict) -> tuple[StateDict, Optional[torch.Tensor]]:
    """Official encoder (prefixes stripped) -> (our state dict, sin-cos table `pos_embed` or None)."""
    out: StateDict = {}
    pos = None
    for key, value in sd.items():
        m = _OFF_BLOCK.match(key)
        if key == "pos_embed":
            pos = value
        elif key.startswith("patch_embed.proj."):
            out[f"patch_embed.{key.split('.')[-1]}"] = value
        elif key.startswith("norm."):
            out[f"transformer.norm.{key.split('.')[-1]}"] = value
        elif m and m.group(1) == "blocks" and m.group(3).startswith(_BLOCK_PARTS + ("attn.qkv.",)):
            out[f"transformer.blocks.{m.group(2)}.{m.group(3)}"] = value
        else:
            raise KeyLayoutError(f"encoder: unknown parameter '{key}' in the official V-JEPA layout")
    return out, pos


def predictor_from_official(sd: StateDict) -> tuple[StateDict, Optional[torch.Tensor]]:
    """Official predictor (prefixes stripped) -> (our state dict, `predictor_pos_embed` or None)."""
    out: StateDict = {}
    pos = None
    tokens: dict[int, torch.Tensor] = {}
    for key, value in sd.items():
        m = _OFF_BLOCK.match(key)
        tm = re.match(r"^mask_tokens\.(\d+)$", key)
        if key == "predictor_pos_embed":
            pos = value
        elif tm:
            tokens[int(tm.group(1))] = value
        elif key.startswith("predictor_embed."):
            out[f"embed.{key.split('.')[-1]}"] = value
        elif key.startswith("predictor_norm."):
            out[f"transformer.norm.{key.split('.')[-1]}"] = value
        elif key.startswith("predictor_proj."):
            out[f"proj.{key.split('.')[-1]}"] = value
        elif m and m.group(1) == "predictor_blocks" and m.group(3).startswith(_BLOCK_PARTS + ("attn.qkv.",)):
            out[f"transformer.blocks.{m.group(2)}.{m.group(3)}"] = value
        else:
            raise KeyLayoutError(f"predictor: unknown parameter '{key}' in the official V-JEPA layout")
    if tokens:
        if sorted(tokens) != list(range(len(tokens))):
            raise KeyLayoutError(f"predictor: mask tokens are not numbered 0..K-1: {sorted(tokens)}")
        out["mask_tokens"] = torch.stack([tokens[i].reshape(-1) for i in range(len(tokens))])
    return out, pos
