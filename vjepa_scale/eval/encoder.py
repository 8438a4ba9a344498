"""The frozen encoder under evaluation: from our checkpoint (EMA target by default), an HF export, or
random init (the baseline), always a `VisionTransformer3D` in eval mode without gradients.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from vjepa_scale.config import Config, ConfigError, ModelConfig, clip_grid, load_config, resolve_vit_size
from vjepa_scale.eval.config import EvalConfig
from vjepa_scale.models import VisionTransformer3D
from vjepa_scale.weights import (CheckpointMismatchError, DamagedCheckpointError, check_architecture, check_state_dict,
                                 config_from_hf_fields, load_consolidated, load_init_state, module_shapes, read_hf_config,
                                 resolve_checkpoint)
from vjepa_scale.weights.run import CKPT_SUBDIR

log = logging.getLogger("vjepa_scale.eval")


@dataclass
class FrozenEncoder:
    encoder: VisionTransformer3D
    source: str  # human-readable description of where the weights come from
    step: Optional[int]  # pretraining step of the checkpoint, when known
    model_cfg: ModelConfig


def eval_grid(cfg: EvalConfig, model: ModelConfig) -> tuple[int, int, int]:
    """Token grid of one eval clip; the crop and frame count must fit the encoder's patching."""
    return clip_grid(cfg.data.crop_size, cfg.data.frames_per_clip, model, "data", "the encoder's ")


def _build(model_cfg: ModelConfig, grid: tuple[int, int, int], state: Optional[dict], source: str,
           seed: int = 0) -> VisionTransformer3D:
    torch.manual_seed(seed)
    encoder = VisionTransformer3D(model_cfg, grid)
    if state is not None:
        check_state_dict(state, module_shapes(encoder), "encoder", source)
        encoder.load_state_dict(state, strict=True)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def encoder_origin(cfg: EvalConfig) -> str:
    """Where `cfg.encoder`'s weights come from, found without loading them: the same for every checkpoint
    of one run (its resolved run folder) and for any spelling of one path. A result folder is matched
    on it (`eval.run.check_output_dir`)."""
    src = cfg.encoder
    if src.checkpoint:
        try:
            ckpt = resolve_checkpoint(src.checkpoint).resolve()
            where = ckpt.parent.parent if ckpt.parent.name == CKPT_SUBDIR else ckpt  # the run of RUN/checkpoints/step_*
        except FileNotFoundError:  # refused when it is loaded, naming the path
            where = Path(src.checkpoint).expanduser().resolve()
        if src.random_init:
            return f"random init (seed {src.init_seed}), architecture of {where}"
        return f"{where} ({src.which} encoder)"
    if src.hf_path:
        return f"{Path(src.hf_path).expanduser().resolve()} (Hugging Face export)"
    dims = resolve_vit_size(cfg.model)
    return (f"random init (seed {src.init_seed}), {dims.width} wide x {dims.depth} blocks, {dims.num_heads} heads, "
            f"patch {cfg.model.patch_size}, tubelet {cfg.model.tubelet_size}, {cfg.model.pos_embed} positions")


def load_frozen_encoder(cfg: EvalConfig) -> FrozenEncoder:
    """Build and load the encoder named by `cfg.encoder` (one of checkpoint / hf_path / random_init)."""
    src = cfg.encoder
    if src.checkpoint:
        try:
            if src.random_init:  # the architecture only
                ckpt = resolve_checkpoint(src.checkpoint)
                ck = {"config": load_config(ckpt / "config.yaml"), "step": None, "encoder": None}
            else:
                ck = load_consolidated(src.checkpoint, which=src.which)
                for note in ck["notes"]:  # damaged newer checkpoints passed over
                    log.warning("encoder.checkpoint: %s", note)
        except (FileNotFoundError, DamagedCheckpointError) as e:
            raise ConfigError(f"encoder.checkpoint: {e}") from None
        pre: Config = ck["config"]
        if cfg.model is not None:  # must describe the checkpoint's encoder
            check_architecture(pre.model, cfg.model, f"encoder.checkpoint {src.checkpoint}", predictor=False)
        model_cfg = copy.deepcopy(cfg.model if cfg.model is not None else pre.model)
        model_cfg.activation_checkpointing = False
        eval_grid(cfg, model_cfg)
        # Built at the pretraining grid so sin-cos positions are interpolated exactly as the model
        # sees any other clip size.
        grid = pre.grid
        if src.random_init:
            source = f"random init (seed {src.init_seed}), architecture of {src.checkpoint}"
            return FrozenEncoder(_build(model_cfg, grid, None, source, src.init_seed), source, None, model_cfg)
        source = f"{src.checkpoint} ({src.which} encoder, step {ck['step']})"
        return FrozenEncoder(_build(model_cfg, grid, ck["encoder"], source), source, ck["step"], model_cfg)
    if src.hf_path:
        try:  # the pretraining config the export describes
            pcfg = config_from_hf_fields(read_hf_config(src.hf_path), f"{src.hf_path}/config.json")
        except ConfigError as e:
            raise ConfigError(f"encoder.hf_path: {e}") from None
        if cfg.model is not None:
            pcfg.model = copy.deepcopy(cfg.model)
        model_cfg = pcfg.model
        eval_grid(cfg, model_cfg)
        try:
            state = load_init_state(src.hf_path, pcfg, hf=True)["encoder"]  # the export, also in a run folder
        except CheckpointMismatchError:
            raise
        except (FileNotFoundError, ValueError) as e:  # a missing or damaged weights file
            raise ConfigError(f"encoder.hf_path: {e}") from None
        source = f"{src.hf_path} (Hugging Face export)"
        return FrozenEncoder(_build(model_cfg, pcfg.grid, state, source), source, None, model_cfg)
    model_cfg = copy.deepcopy(cfg.model)
    grid = eval_grid(cfg, model_cfg)
    source = f"random init (seed {src.init_seed})"
    return FrozenEncoder(_build(model_cfg, grid, None, source, src.init_seed), source, None, model_cfg)
