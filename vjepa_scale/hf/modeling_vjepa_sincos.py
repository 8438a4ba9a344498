"""V-JEPA with fixed 3D sin-cos positions (V-JEPA 1), for `trust_remote_code` loading.

This file is copied into exported Hugging Face folders and registered there for
`AutoConfig` / `AutoModel.from_pretrained(folder, trust_remote_code=True)`. It depends only on torch
and transformers (>= 5). Module and parameter names follow transformers' `vjepa2` model, so the
weights are interchangeable with `VJEPA2Model`; the difference is the positions: a fixed sin-cos
table is added to the patch tokens (and to the predictor's context and mask tokens) instead of RoPE.

Inputs follow `VJEPA2Model`: video `(B, T, C, H, W)`; `context_mask` / `target_mask` are lists of
`(B, N_ctx)` / `(B, N_tgt)` token indices in (t, h, w) raster order. As in `VJEPA2Model`, the
predictor uses mask token `mask_index % num_mask_tokens` (default 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel, VJEPA2Config
from transformers import initialization as init
from transformers.utils import ModelOutput


class VJEPASinCosConfig(VJEPA2Config):
    """`VJEPA2Config` fields; the model type says the positions are sin-cos tables."""

    model_type = "vjepa_sincos"


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): [sin(pos*w_i), cos(pos*w_i)], w_i = 10000^(-i/(dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angle = pos.double()[:, None] * omega[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """(T*H*W, dim) table in (t, h, w) raster order: 2*ceil(dim/6) dims per axis, [t, h, w], cut to dim."""
    t, h, w = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    d_axis = int(math.ceil(dim / 6) * 2)
    table = torch.cat([sincos_1d(d_axis, a.flatten()) for a in (t, h, w)], dim=1)
    return table[:, :dim].float()


def position_table(dim: int, base_grid: tuple[int, int, int], grid: tuple[int, int, int]) -> torch.Tensor:
    """The table of the configured grid, resampled trilinearly when the input grid differs."""
    table = sincos_3d(dim, base_grid)
    if tuple(grid) == tuple(base_grid):
        return table
    x = table.reshape(1, *base_grid, dim).permute(0, 4, 1, 2, 3)
    x = F.interpolate(x, size=tuple(grid), mode="trilinear", align_corners=False)
    return x.permute(0, 2, 3, 4, 1).reshape(-1, dim)


def config_grid(config: VJEPA2Config) -> tuple[int, int, int]:
    g = config.crop_size // config.patch_size
    return (config.frames_per_clip // config.tubelet_size, g, g)


def gather_tokens(x_BND: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """Rows of x at each mask's indices, masks concatenated along the batch."""
    return torch.cat([torch.gather(x_BND, 1, m.to(x_BND.device)[..., None].expand(-1, -1, x_BND.shape[-1]))
                      for m in masks], dim=0)


@dataclass
class VJEPASinCosPredictorOutput(ModelOutput):
    last_hidden_state: Optional[torch.Tensor] = None
    target_hidden_state: Optional[torch.Tensor] = None


@dataclass
class VJEPASinCosModelOutput(ModelOutput):
    last_hidden_state: Optional[torch.Tensor] = None
    masked_hidden_state: Optional[torch.Tensor] = None
    predictor_output: Optional[VJEPASinCosPredictorOutput] = None


class VJEPASinCosPatchEmbeddings3D(nn.Module):
    def __init__(self, config: VJEPA2Config, hidden_size: int):
        super().__init__()
        k = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, hidden_size, kernel_size=k, stride=k)

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.proj(video_BCTHW)


class VJEPASinCosEmbeddings(nn.Module):
    """Tubelet embedding plus the sin-cos table: (B, T, C, H, W) -> (B, N, D)."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        self.config = config
        self.patch_embeddings = VJEPASinCosPatchEmbeddings3D(config, config.hidden_size)

    def forward(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        x = pixel_values_videos.permute(0, 2, 1, 3, 4).to(self.patch_embeddings.proj.weight.dtype)
        x = self.patch_embeddings(x)  # (B, D, T', H', W')
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        pos = position_table(x.shape[-1], config_grid(self.config), grid).to(x.device, x.dtype)
        return x + pos


class VJEPASinCosAttention(nn.Module):
    def __init__(self, config: VJEPA2Config, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = (lin(x).view(shape).transpose(1, 2) for lin in (self.query, self.key, self.value))
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).flatten(2))


class VJEPASinCosMLP(nn.Module):
    def __init__(self, hidden_size: int, mlp_ratio: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, int(hidden_size * mlp_ratio))
        self.fc2 = nn.Linear(int(hidden_size * mlp_ratio), hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VJEPASinCosLayer(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: VJEPA2Config, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = VJEPASinCosAttention(config, hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = VJEPASinCosMLP(hidden_size, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VJEPASinCosEncoder(nn.Module):
    def __init__(self, config: VJEPA2Config):
        super().__init__()
        self.embeddings = VJEPASinCosEmbeddings(config)
        self.layer = nn.ModuleList(
            VJEPASinCosLayer(config, config.hidden_size, config.num_attention_heads, config.mlp_ratio)
            for _ in range(config.num_hidden_layers))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values_videos)
        for layer in self.layer:
            x = layer(x)
        return self.layernorm(x)


class VJEPASinCosPredictorEmbeddings(nn.Module):
    def __init__(self, config: VJEPA2Config):
        super().__init__()
        self.predictor_embeddings = nn.Linear(config.hidden_size, config.pred_hidden_size)
        self.mask_tokens = nn.Parameter(torch.zeros(config.pred_num_mask_tokens, 1, 1, config.pred_hidden_size))


class VJEPASinCosPredictor(nn.Module):
    """Context tokens + one mask token per target (each with its sin-cos position) -> predictions."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        self.config = config
        self.embeddings = VJEPASinCosPredictorEmbeddings(config)
        self.layer = nn.ModuleList(
            VJEPASinCosLayer(config, config.pred_hidden_size, config.pred_num_attention_heads, config.pred_mlp_ratio)
            for _ in range(config.pred_num_hidden_layers))
        self.layernorm = nn.LayerNorm(config.pred_hidden_size, eps=config.layer_norm_eps)
        self.proj = nn.Linear(config.pred_hidden_size, config.hidden_size)

    def forward(self, encoder_hidden_states: torch.Tensor, context_mask: list[torch.Tensor],
                target_mask: list[torch.Tensor], mask_index: int = 1) -> torch.Tensor:
        if len(context_mask) != len(target_mask):
            raise ValueError(f"context_mask has {len(context_mask)} masks but target_mask has {len(target_mask)}")
        grid = config_grid(self.config)
        W = self.config.pred_hidden_size
        pos = position_table(W, grid, grid).to(encoder_hidden_states.device)
        ctx_ids = torch.cat(context_mask, 0).to(pos.device)
        tgt_ids = torch.cat(target_mask, 0).to(pos.device)
        x_ctx = self.embeddings.predictor_embeddings(gather_tokens(encoder_hidden_states, context_mask))
        x_ctx = x_ctx + pos[ctx_ids].to(x_ctx.dtype)
        token = self.embeddings.mask_tokens[mask_index % self.embeddings.mask_tokens.shape[0]].reshape(1, 1, W)
        x_tgt = token.to(x_ctx.dtype) + pos[tgt_ids].to(x_ctx.dtype)
        x = torch.cat([x_ctx, x_tgt], dim=1)
        for layer in self.layer:
            x = layer(x)
        x = self.layernorm(x)
        return self.proj(x[:, x_ctx.shape[1]:])


class VJEPASinCosPreTrainedModel(PreTrainedModel):
    config_class = VJEPASinCosConfig
    config: VJEPASinCosConfig
    base_model_prefix = "vjepa2"
    main_input_name = "pixel_values_videos"
    input_modalities = "video"
    _no_split_modules = ["VJEPASinCosLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VJEPASinCosPredictorEmbeddings):
            init.zeros_(module.mask_tokens)


class VJEPASinCosModel(VJEPASinCosPreTrainedModel):
    """Encoder + predictor; `forward` mirrors `VJEPA2Model.forward`."""

    def __init__(self, config: VJEPASinCosConfig):
        super().__init__(config)
        self.encoder = VJEPASinCosEncoder(config)
        self.predictor = VJEPASinCosPredictor(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.embeddings.patch_embeddings

    def forward(self, pixel_values_videos: torch.Tensor, context_mask: Optional[list[torch.Tensor]] = None,
                target_mask: Optional[list[torch.Tensor]] = None, skip_predictor: bool = False,
                mask_index: int = 1, **kwargs) -> VJEPASinCosModelOutput:
        h = self.encoder(pixel_values_videos)
        if context_mask is None and target_mask is None:
            every = torch.arange(h.shape[1], device=h.device).unsqueeze(0).repeat(h.shape[0], 1)
            context_mask, target_mask = [every], [every]
        predictor_output = None
        if not skip_predictor:
            pred = self.predictor(h, context_mask, target_mask, mask_index)
            predictor_output = VJEPASinCosPredictorOutput(last_hidden_state=pred,
                                                          target_hidden_state=gather_tokens(h, target_mask))
        return VJEPASinCosModelOutput(last_hidden_state=h, masked_hidden_state=gather_tokens(h, context_mask),
                                      predictor_output=predictor_output)

    def get_vision_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values_videos)


__all__ = ["VJEPASinCosConfig", "VJEPASinCosModel", "VJEPASinCosPreTrainedModel"]
