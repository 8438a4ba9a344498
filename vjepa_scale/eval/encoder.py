"""The frozen encoder under evaluation: from our checkpoint (EMA target by default), an HF export, or
random init (the baseline), always a `VisionTransformer3D` in eval mode without gradients.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch

from vjepa_scale.config import Config, ConfigError, DataConfig, ModelConfig, clip_grid
from vjepa_scale.eval.config import EvalConfig
from vjepa_scale.hf.checks import CheckpointMismatchError  # one error type for "weights do not fit"
from vjepa_scale.models import VisionTransformer3D


@dataclass
class FrozenEncoder:
    encoder: VisionTransformer3D
    source: str  # human-readable description of where the weights come from
    step: Optional[int]  # pretraining step of the checkpoint, when known
    model_cfg: ModelConfig


def eval_grid(cfg: EvalConfig, model: ModelConfig) -> tuple[int, int, int]:
    """Token grid of one eval clip; the crop and frame count must fit the encoder's patching."""
    return clip_grid(cfg.data.crop_size, cfg.data.frames_per_clip, model, "data", "the encoder's ")


def check_encoder_state(state: dict[str, torch.Tensor], encoder: VisionTransformer3D, source: str) -> None:
    """Same parameter names and shapes as `encoder`, else CheckpointMismatchError naming key and shapes."""
    expected = encoder.state_dict()
    for key in sorted(set(state) & set(expected)):
        if tuple(state[key].shape) != tuple(expected[key].shape):
            raise CheckpointMismatchError(
                f"{source}: encoder parameter '{key}' has shape {tuple(state[key].shape)} in the checkpoint "
                f"but {tuple(expected[key].shape)} in the model built from the config (a checkpoint of "
                f"another model size? check model.size/width/depth/num_heads/patch_size)")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: encoder parameters do not match the model built from the config "
            f"(missing from the checkpoint: {missing[:6]}{' ...' if len(missing) > 6 else ''}; "
            f"not in the model: {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}; "
            f"check model.size/depth/pos_embed)")


def config_from_hf_folder(folder: str) -> Config:
    """The pretraining `Config` (model, clip size, mask-type count) an HF export describes."""
    import json
    from pathlib import Path

    from vjepa_scale.config import MaskConfig, MaskSpec
    from vjepa_scale.hf.load import HF_MODEL_TYPES

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"encoder.hf_path: '{folder}' is not a Hugging Face export (no config.json)")
    hf = json.loads(path.read_text())
    if hf.get("model_type") not in HF_MODEL_TYPES:
        raise ConfigError(f"encoder.hf_path: {path}: model_type {hf.get('model_type')!r} is not a V-JEPA export "
                          f"(expected one of {sorted(HF_MODEL_TYPES)})")
    try:
        model = ModelConfig(size="tiny", width=hf["hidden_size"], depth=hf["num_hidden_layers"],
                            num_heads=hf["num_attention_heads"], mlp_ratio=float(hf["mlp_ratio"]),
                            patch_size=hf["patch_size"], tubelet_size=hf["tubelet_size"],
                            qkv_bias=bool(hf.get("qkv_bias", True)), pos_embed=HF_MODEL_TYPES[hf["model_type"]],
                            pred_width=hf.get("pred_hidden_size", 384),
                            pred_depth=hf.get("pred_num_hidden_layers", 12),
                            pred_num_heads=hf.get("pred_num_attention_heads", 16),
                            pred_mlp_ratio=float(hf.get("pred_mlp_ratio", 4.0)))
        data = DataConfig(backend="synthetic", crop_size=hf["crop_size"], frames_per_clip=hf["frames_per_clip"])
    except KeyError as e:
        raise ConfigError(f"encoder.hf_path: {path} has no field {e}") from None
    masks = MaskConfig(types=[MaskSpec() for _ in range(int(hf.get("pred_num_mask_tokens", 2)))])
    return Config(model=model, mask=masks, data=data).validate()


def _build(model_cfg: ModelConfig, grid: tuple[int, int, int], state: Optional[dict], source: str,
           seed: int = 0) -> VisionTransformer3D:
    torch.manual_seed(seed)
    encoder = VisionTransformer3D(model_cfg, grid)
    if state is not None:
        check_encoder_state(state, encoder, source)
        encoder.load_state_dict(state, strict=True)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def load_frozen_encoder(cfg: EvalConfig) -> FrozenEncoder:
    """Build and load the encoder named by `cfg.encoder` (one of checkpoint / hf_path / random_init)."""
    src = cfg.encoder
    if src.checkpoint:
        from vjepa_scale.config import load_config
        from vjepa_scale.train.checkpoint import load_consolidated, resolve_checkpoint

        try:
            if src.random_init:  # the architecture only
                ckpt = resolve_checkpoint(src.checkpoint)
                ck = {"config": load_config(ckpt / "config.yaml"), "step": None, "encoder": None}
            else:
                ck = load_consolidated(src.checkpoint, which=src.which)
        except FileNotFoundError as e:
            raise ConfigError(f"encoder.checkpoint: {e}") from None
        pre: Config = ck["config"]
        model_cfg = copy.deepcopy(cfg.model) if cfg.model is not None else copy.deepcopy(pre.model)
        model_cfg.activation_checkpointing = False
        eval_grid(cfg, model_cfg)
        # Built at the pretraining grid so sin-cos positions are interpolated exactly as the model
        # sees any other clip size.
        grid = pre.grid if cfg.model is None else eval_grid(cfg, model_cfg)
        if src.random_init:
            source = f"random init (seed {src.init_seed}), architecture of {src.checkpoint}"
            return FrozenEncoder(_build(model_cfg, grid, None, source, src.init_seed), source, None, model_cfg)
        source = f"{src.checkpoint} ({src.which} encoder, step {ck['step']})"
        return FrozenEncoder(_build(model_cfg, grid, ck["encoder"], source), source, ck["step"], model_cfg)
    if src.hf_path:
        from vjepa_scale.hf import load_init_state

        pcfg = config_from_hf_folder(src.hf_path)
        if cfg.model is not None:
            pcfg.model = copy.deepcopy(cfg.model)
        model_cfg = pcfg.model
        eval_grid(cfg, model_cfg)
        try:
            state = load_init_state(src.hf_path, pcfg)["encoder"]
        except FileNotFoundError as e:
            raise ConfigError(f"encoder.hf_path: {e}") from None
        source = f"{src.hf_path} (Hugging Face export)"
        return FrozenEncoder(_build(model_cfg, pcfg.grid, state, source), source, None, model_cfg)
    model_cfg = copy.deepcopy(cfg.model)
    grid = eval_grid(cfg, model_cfg)
    source = f"random init (seed {src.init_seed})"
    return FrozenEncoder(_build(model_cfg, grid, None, source, src.init_seed), source, None, model_cfg)
