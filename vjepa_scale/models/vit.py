"""3D Vision Transformer for video, running on packed variable-length token sets.

Tokens come from a tubelet embedding (tubelet x patch x patch) in (t, h, w) raster order: a Conv3d
with kernel = stride in its parameters, computed as a reshape + one GEMM (`PatchEmbed3D`).
A forward takes either the full clip (rectangular (B, N, D), dense attention) or a packed subset
(`idx` flat indices b*N+n, `cu_seqlens`, `max_seqlen`) where each sequence attends only to itself.
A mixed-shape batch (`vjepa_scale.mixed.MixedVideo`) is patch-embedded per shape group, each group's
position table added to its tokens, and the tokens concatenated in sample order; `idx` then holds
offsets into that concatenation (`MaskBatch.sample_offsets`), RoPE comes from `packed.token_ids`
into the tables of `packed.grids`, and the full-clip forward runs one packed sequence per sample.

Init (`model.init`, set by each recipe; encoder and predictor alike; LayerNorms unit/zero, biases zero):
- `vjepa1` (default): trunc_normal(0.02) on every Linear and the Conv3d, nothing else. This is what
  V-JEPA 1 trains from: its models rescale `attn.proj` / `mlp.fc2` by depth, but its training script
  re-initialises every Linear afterwards, which undoes that rescale. (The reference draws its numbers
  in another order, so the same seed gives other values, from the same distribution.)
- `vjepa2`: the same, then the `attn.proj` and `mlp.fc2` weights of block i (1-based) are divided by
  sqrt(2*i), which V-JEPA 2 keeps (it does not re-initialise after building).
Mask tokens start at zero in both.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vjepa_scale.attention import Packed, dense_attention, resolve_attention_backend
# The size table lives in config (config imports nothing from models); re-exported here.
from vjepa_scale.config import ModelConfig, VitDims, resolve_vit_size
from vjepa_scale.kernels import ScatterMap, masked_gather
from vjepa_scale.mixed import MixedVideo
from vjepa_scale.models.compiled import packed_attention_op  # the opaque op under torch.compile
from vjepa_scale.models.pos_embed import Positions, apply_rope

class PatchEmbed3D(nn.Conv3d):
    """Tubelet embedding: a Conv3d with kernel = stride (its `weight` (D, C, t, p, p) and `bias`,
    so checkpoints and exports keep their keys), computed as what it is, a matmul per tubelet:
    the clip is cut into (t, p, p) tubelets by a reshape and multiplied by the flattened kernel in
    one F.linear, producing the tokens directly. Trailing frames/pixels that fill no whole tubelet
    are dropped, as the convolution does.

    `forward(video_BCTHW)` -> (tokens (B, N, D) in (t, h, w) raster order, grid (T', H', W')).
    A list of clip tensors (the shape groups of a mixed batch) -> (the groups' tokens concatenated
    (total, D), each group's grid), in one module call with one output tensor: under ZeRO-3 every
    rank then records the same module trace, whatever its number of groups.
    """

    def __init__(self, in_chans: int, dim: int, tubelet: int, patch: int):
        super().__init__(in_chans, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, video_BCTHW):
        if isinstance(video_BCTHW, (list, tuple)):
            parts = [self._embed(v) for v in video_BCTHW]
            return torch.cat([x.reshape(-1, x.shape[-1]) for x, _ in parts]), [g for _, g in parts]
        return self._embed(video_BCTHW)

    def _embed(self, video_BCTHW: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        B, C, T, H, W = video_BCTHW.shape
        t, p, _ = self.kernel_size
        grid = (T // t, H // p, W // p)
        x = video_BCTHW[:, :, :grid[0] * t, :grid[1] * p, :grid[2] * p]
        x = x.reshape(B, C, grid[0], t, grid[1], p, grid[2], p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        x = x.reshape(B, grid[0] * grid[1] * grid[2], C * t * p * p)  # (B, N, C*t*p*p), one copy
        return F.linear(x, self.weight.flatten(1), self.bias), grid


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose output keeps a half-precision input's dtype under autocast too.

    CUDA autocast runs layer_norm in fp32 and returns fp32, which the next Linear casts back to bf16:
    a round trip (two extra copies of the activations) per norm. Here the kernel takes the bf16/fp16
    input with the fp32 affine parameters directly (statistics in fp32 inside the kernel) and
    returns the input's dtype, exactly what a DeepSpeed bf16 model (no autocast) computes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return super().forward(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv Linear, on packed or rectangular tokens.

    `backend` is the configured packed-attention backend (`auto` or a name); it is resolved once per
    (device type, dtype) the layer runs on and remembered.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto", sdpa: str = "auto"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.backend = backend
        self.sdpa = sdpa
        self._resolved: dict[tuple[str, torch.dtype], str] = {}

    def resolved_backend(self, device: torch.device, dtype: torch.dtype) -> str:
        """The packed-attention backend this layer uses on `device` at `dtype`."""
        key = (device.type, dtype)
        if key not in self._resolved:
            self._resolved[key] = resolve_attention_backend(self.backend, device, dtype)
        return self._resolved[key]

    def forward(self, x: torch.Tensor, packed: Optional[Packed], rope: Optional[tuple]) -> torch.Tensor:
        # x: (total, D) when packed, else (B, N, D)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if packed is None:
            o = dense_attention(q, k, v, self.sdpa)
        else:
            o = packed_attention_op(q, k, v, packed, self.resolved_backend(q.device, q.dtype), self.sdpa)
        return self.proj(o.flatten(-2))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block (LayerNorm eps 1e-6, GELU MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = True,
                 backend: str = "auto", sdpa: str = "auto"):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, backend, sdpa)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, packed: Optional[Packed], rope: Optional[tuple]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), packed, rope)
        return x + self.mlp(self.norm2(x))


def checkpoint_plan(depth: int, fraction: float) -> list[bool]:
    """Which of `depth` blocks recompute their activations: round(fraction x depth) of them, spread
    evenly over the stack (block i when floor((i+1) n / depth) steps up)."""
    n = round(fraction * depth)
    return [(i + 1) * n // depth > i * n // depth for i in range(depth)]


class Transformer(nn.Module):
    """A stack of blocks sharing the position scheme and per-block activation checkpointing
    (`checkpointing`: the share of blocks recomputed, `checkpoint_plan`)."""

    def __init__(self, dims: VitDims, qkv_bias: bool, backend: str, checkpointing: float, sdpa: str = "auto"):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dims.width, dims.num_heads, dims.mlp_ratio, qkv_bias, backend, sdpa) for _ in range(dims.depth))
        self.norm = LayerNorm(dims.width, eps=1e-6)
        self.set_checkpointing(checkpointing)

    def set_checkpointing(self, fraction: float) -> None:
        """Recompute round(fraction x depth) blocks from now on (a runtime choice: weights unchanged)."""
        self.checkpointed = checkpoint_plan(len(self.blocks), float(fraction))

    def forward(self, x: torch.Tensor, packed: Optional[Packed], rope: Optional[tuple]) -> torch.Tensor:
        recompute = self.training and torch.is_grad_enabled()
        for blk, ckpt in zip(self.blocks, self.checkpointed):
            if ckpt and recompute:
                x = checkpoint(blk, x, packed, rope, use_reentrant=False, determinism_check="none")
            else:
                x = blk(x, packed, rope)
        return self.norm(x)


def set_activation_checkpointing(module: nn.Module, fraction: float) -> None:
    """Every transformer stack inside `module` (encoder, predictor) recomputes `fraction` of its blocks."""
    for m in module.modules():
        if isinstance(m, Transformer):
            m.set_checkpointing(fraction)


def init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) Linear/Conv weights, zero biases, unit LayerNorm (the `vjepa1` init)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def rescale_residual_outputs(transformer: "Transformer") -> None:
    """Divide `attn.proj` and `mlp.fc2` weights of block i (1-based) by sqrt(2*i): the `vjepa2` init."""
    with torch.no_grad():
        for i, blk in enumerate(transformer.blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))


def init_model(module: nn.Module, transformer: "Transformer", scheme: str) -> None:
    """The `model.init` scheme on a freshly built encoder or predictor (see the module docstring)."""
    if scheme not in ("vjepa1", "vjepa2"):
        raise ValueError(f"model.init must be 'vjepa1' or 'vjepa2', got {scheme!r}")
    init_weights(module)
    if scheme == "vjepa2":
        rescale_residual_outputs(transformer)


class VisionTransformer3D(nn.Module):
    """Video ViT encoder. `forward(video_BCTHW)` -> (B, N, D); with `idx`+`packed` -> (total, D)."""

    def __init__(self, cfg: ModelConfig, grid: tuple[int, int, int], in_chans: int = 3):
        super().__init__()
        self.dims = resolve_vit_size(cfg)
        self.cfg = cfg
        self.grid = tuple(grid)
        D = self.dims.width
        self.patch_embed = PatchEmbed3D(in_chans, D, cfg.tubelet_size, cfg.patch_size)
        self.positions = Positions(cfg.pos_embed, D, self.dims.head_dim, self.grid)
        self.transformer = Transformer(self.dims, cfg.qkv_bias, cfg.attention_backend, cfg.checkpoint_fraction,
                                       cfg.sdpa_backend)
        init_model(self, self.transformer, cfg.init)

    @property
    def embed_dim(self) -> int:
        return self.dims.width

    def patchify(self, video_BCTHW: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        return self.patch_embed(video_BCTHW)  # (B, N, D), (T', H', W')

    def forward(self, video_BCTHW, idx: Optional[torch.Tensor] = None,
                packed: Optional[Packed] = None, scatter: Optional[ScatterMap] = None) -> torch.Tensor:
        """All tokens (idx None) -> (B, N, D), or the tokens at flat indices `idx` -> (total, D) as
        packed sequences (`packed`); `scatter`: the gather backward's map of `idx`, when built ahead."""
        if isinstance(video_BCTHW, MixedVideo):
            return self.forward_mixed(video_BCTHW, idx, packed, scatter)
        x_BND, grid = self.patchify(video_BCTHW)
        pos_ND = self.positions.additive(grid, x_BND.dtype)
        if idx is None:
            if pos_ND is not None:
                x_BND = x_BND + pos_ND
            rope = self.positions.rotary(None, grid, x_BND.device, x_BND.dtype)
            return self.transformer(x_BND, None, rope)
        if packed is None:
            raise ValueError("a packed forward needs `packed` (cu_seqlens, max_seqlen, token_ids)")
        x_TD = masked_gather(x_BND, idx, pos_ND, scatter=scatter)
        rope = self.positions.rotary(packed.token_ids, grid, x_TD.device, x_TD.dtype)
        return self.transformer(x_TD, packed, rope)

    def embed_mixed(self, video: MixedVideo) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        """Tokens of every sample with their positions added, concatenated in sample order
        (total, D), and each group's grid. One patch-embed GEMM per shape group."""
        x_TD, grids = self.patch_embed(list(video.groups))
        pos = [self.positions.additive(g, x_TD.dtype) for g in grids]
        if pos[0] is not None:  # each group's table once per sample, in the tokens' order
            x_TD = x_TD + torch.cat([p.repeat(v.shape[0], 1) for p, v in zip(pos, video.groups)])
        return x_TD, grids

    def forward_mixed(self, video: MixedVideo, idx: Optional[torch.Tensor] = None,
                      packed: Optional[Packed] = None, scatter: Optional[ScatterMap] = None) -> torch.Tensor:
        """Mixed-shape batch -> (total, D): every token of every sample (idx None; one packed sequence
        per sample), or the tokens at `idx` (offsets into the concatenation) grouped as `packed` says."""
        x_TD, grids = self.embed_mixed(video)
        if idx is None:
            sizes = [t * h * w for t, h, w in grids]
            lengths = [n for n, v in zip(sizes, video.groups) for _ in range(v.shape[0])]
            cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
            cu[1:] = torch.tensor(lengths).cumsum(0)
            distinct = list(dict.fromkeys(grids))
            base = dict(zip(distinct, [0] + torch.tensor([t * h * w for t, h, w in distinct]).cumsum(0).tolist()))
            pos_ids = torch.cat([torch.arange(n).repeat(v.shape[0]) + base[g]
                                 for g, n, v in zip(grids, sizes, video.groups)]).to(x_TD.device)
            packed = Packed(cu.to(x_TD.device), max(lengths), pos_ids, grids=distinct)
        else:
            if packed is None or packed.grids is None:
                raise ValueError("a packed forward of a mixed batch needs `packed` with token_ids into `grids`")
            x_TD = masked_gather(x_TD[None], idx, None, scatter=scatter)
        rope = self.positions.rotary_multi(packed.token_ids, packed.grids, x_TD.device, x_TD.dtype)
        return self.transformer(x_TD, packed, rope)


def compile_blocks(module: nn.Module) -> int:
    """Compile every transformer `Block` inside `module` in place (dynamic shapes: token counts and
    sequence lengths vary per step). A copied module (the EMA target) must be compiled again: this
    drops a compiled callable copied from another module first. Returns the number of blocks."""
    n = 0
    for m in module.modules():
        if isinstance(m, Block):
            m._compiled_call_impl = None
            m.compile(dynamic=True)
            n += 1
    return n
