"""The official V-JEPA 1 / V-JEPA 2 checkpoint releases, and which of them a checkpoint file can be.

Head counts are not in the weights: an official file's architecture comes from this table (matched
by format and tensor shapes) or from an explicit config, and a config whose head count disagrees
with the release it matches is refused (`check_heads`).

| release                 | file             | width/depth/heads, MLP | predictor W/D/heads | mask tokens | clip     |
|-------------------------|------------------|------------------------|---------------------|-------------|----------|
| V-JEPA 1 ViT-L/16       | vitl16.pth.tar   | 1024/24/16, 4          | 384/12/16           | 2           | 16x224   |
| V-JEPA 1 ViT-H/16       | vith16.pth.tar   | 1280/32/16, 4          | 384/12/16           | 2           | 16x224   |
| V-JEPA 1 ViT-H/16@384   | vith16-384.pth.tar | 1280/32/16, 4        | 384/12/16           | 2           | 16x384   |
| V-JEPA 2 ViT-L/16       | vitl.pt          | 1024/24/16, 4          | 384/12/12           | 10          | 64x256   |
| V-JEPA 2 ViT-H/16       | vith.pt          | 1280/32/16, 4          | 384/12/12           | 10          | 64x256   |
| V-JEPA 2 ViT-g/16       | vitg.pt          | 1408/40/22, 48/11      | 384/12/12           | 10          | 64x256   |
| V-JEPA 2 ViT-g/16@384   | vitg-384.pt      | 1408/40/22, 48/11      | 384/12/12           | 10          | 64x384   |

V-JEPA 1 released no giant (its code's `vit_giant` has 16 heads: our `giant`); V-JEPA 2's ViT-g has
22 heads (our `giant_vjepa2`). V-JEPA 1 predictors use the encoder's head count and one mask token
per mask type (type m trains token m). V-JEPA 2 predictors have 12 heads and 10 mask tokens, picked
by clip-length group, so the released recipes (one group) trained only token 0 for both mask types: a
release's `Config` has `model.mask_tokens: shared` (one token, from token 0) for V-JEPA 2, `per_type` for
V-JEPA 1.
V-JEPA 1 files carry sin-cos tables (`pos_embed`, `predictor_pos_embed`); V-JEPA 2 uses RoPE, but
its release files may still carry tables its models do not use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vjepa_scale.config import (Config, DataConfig, MaskConfig, ModelConfig, VIT_SIZES,
                                resolve_vit_size)
from vjepa_scale.weights.checks import CheckpointMismatchError

StateDict = dict[str, torch.Tensor]
VJEPA2_MASK_TOKENS = 10  # the release predictors' count; V-JEPA 1 trains one per mask type


@dataclass(frozen=True)
class Release:
    name: str
    file: str
    family: str  # "vjepa1" (sin-cos positions) or "vjepa2" (RoPE)
    size: str  # our model.size
    pred_num_heads: int
    num_mask_tokens: int
    crop_size: int
    frames_per_clip: int
    pred_width: int = 384
    pred_depth: int = 12
    pred_mlp_ratio: float = 4.0

    @property
    def dims(self) -> tuple[int, int, int, float]:
        """(width, depth, heads, mlp_ratio) of the encoder."""
        return VIT_SIZES[self.size]

    @property
    def pos_embed(self) -> str:
        return "sincos" if self.family == "vjepa1" else "rope"

    def describe(self) -> str:
        w, d, h, _ = self.dims
        return f"{self.name} ({self.file}: {w}/{d}, {h} heads, predictor {self.pred_num_heads} heads)"

    def config(self) -> Config:
        """A `Config` that builds this release's encoder and predictor, its clip, and its init family."""
        model = ModelConfig(size=self.size, pos_embed=self.pos_embed, pred_width=self.pred_width,
                            pred_depth=self.pred_depth, pred_num_heads=self.pred_num_heads,
                            pred_mlp_ratio=self.pred_mlp_ratio, init=self.family,
                            mask_tokens="shared" if self.family == "vjepa2" else "per_type")
        data = DataConfig(backend="synthetic", crop_size=self.crop_size, frames_per_clip=self.frames_per_clip)
        return Config(model=model, mask=MaskConfig(), data=data).validate()


RELEASES: tuple[Release, ...] = (
    Release("V-JEPA 1 ViT-L/16", "vitl16.pth.tar", "vjepa1", "large", 16, 2, 224, 16),
    Release("V-JEPA 1 ViT-H/16", "vith16.pth.tar", "vjepa1", "huge", 16, 2, 224, 16),
    Release("V-JEPA 1 ViT-H/16@384", "vith16-384.pth.tar", "vjepa1", "huge", 16, 2, 384, 16),
    Release("V-JEPA 2 ViT-L/16", "vitl.pt", "vjepa2", "large", 12, 10, 256, 64),
    Release("V-JEPA 2 ViT-H/16", "vith.pt", "vjepa2", "huge", 12, 10, 256, 64),
    Release("V-JEPA 2 ViT-g/16", "vitg.pt", "vjepa2", "giant_vjepa2", 12, 10, 256, 64),
    Release("V-JEPA 2 ViT-g/16@384", "vitg-384.pt", "vjepa2", "giant_vjepa2", 12, 10, 384, 64),
)


@dataclass
class FileLayout:
    """What an official file's tensors say: its family and the releases it can be (empty: none fits)."""

    family: str  # "vjepa1" or "vjepa2"
    releases: list[Release]
    has_tables: bool  # sin-cos tables present (used by V-JEPA 1, ignored for V-JEPA 2)
    num_mask_tokens: Optional[int]  # None without a predictor

    @property
    def pos_embed(self) -> str:
        return "sincos" if self.family == "vjepa1" else "rope"

    def describe(self) -> str:
        kind = "V-JEPA 1, sin-cos" if self.family == "vjepa1" else "V-JEPA 2, RoPE"
        if self.releases:
            return f"{kind} layout, matches " + " or ".join(r.name for r in self.releases)
        return f"{kind} layout, no official release of these shapes"


def _shape_facts(encoder: StateDict) -> tuple[int, int, int]:
    """(width, depth, mlp hidden) of one of our encoder state dicts."""
    width = encoder["patch_embed.weight"].shape[0]
    depth = len({k.split(".")[2] for k in encoder if k.startswith("transformer.blocks.")})
    hidden = encoder["transformer.blocks.0.mlp.fc1.weight"].shape[0] if depth else 0
    return width, depth, hidden


def _fits(r: Release, encoder: StateDict, predictor: Optional[StateDict], table_tokens: Optional[int]) -> bool:
    w, d, _, ratio = r.dims
    if _shape_facts(encoder) != (w, d, int(w * ratio)):
        return False
    if tuple(encoder["patch_embed.weight"].shape[2:]) != (2, 16, 16):
        return False
    if predictor is not None:
        pd = len({k.split(".")[2] for k in predictor if k.startswith("transformer.blocks.")})
        if (predictor["embed.weight"].shape[0], pd) != (r.pred_width, r.pred_depth):
            return False
        if "mask_tokens" in predictor and predictor["mask_tokens"].shape[0] != r.num_mask_tokens:
            return False
    if r.family == "vjepa1" and table_tokens is not None:
        g = r.crop_size // 16
        return table_tokens == (r.frames_per_clip // 2) * g * g
    return True


def identify(encoder: StateDict, predictor: Optional[StateDict], table: Optional[torch.Tensor]) -> FileLayout:
    """Family and candidate releases of an official file, from our renamed state dicts.

    encoder/predictor: already in our names (`keys.encoder_from_official` ...); table: the encoder's
    `pos_embed` or None. V-JEPA 2 is recognised without tables, or with tables when the layout is V-JEPA 2's
    all the same: a predictor with 10 mask tokens, or (encoder only) shapes that only a V-JEPA 2 release has.
    """
    try:
        _shape_facts(encoder)
    except KeyError:
        return FileLayout("vjepa2" if table is None else "vjepa1", [], table is not None, None)
    tokens = None if predictor is None or "mask_tokens" not in predictor else predictor["mask_tokens"].shape[0]
    table_tokens = None if table is None else table.reshape(-1, table.shape[-1]).shape[0]

    def fitting(family: str) -> list[Release]:
        return [r for r in RELEASES if r.family == family and _fits(r, encoder, predictor, table_tokens)]

    if table is None:
        family = "vjepa2"
    elif tokens == VJEPA2_MASK_TOKENS or (predictor is None and fitting("vjepa2") and not fitting("vjepa1")):
        family = "vjepa2"  # a V-JEPA 2 release file with leftover position tables
    else:
        family = "vjepa1"
    return FileLayout(family, fitting(family), table is not None, tokens)


def check_heads(release: Optional[Release], cfg: Config, source: str, with_predictor: bool) -> None:
    """The configured head counts must be the matched release's (they are not in the weights)."""
    if release is None:
        return
    w, d, heads, ratio = release.dims
    have = resolve_vit_size(cfg.model).num_heads
    via = "" if cfg.model.num_heads else f" (via model.size={cfg.model.size})"
    if have != heads:
        hint = next((n for n, v in VIT_SIZES.items() if v == release.dims), None)
        raise CheckpointMismatchError(
            f"{source}: the encoder has {heads} heads in {release.describe()}, but the config has "
            f"model.num_heads{via}={have}" + (f"; use model.size: {hint}" if hint else ""))
    if with_predictor and cfg.model.pred_num_heads != release.pred_num_heads:
        raise CheckpointMismatchError(
            f"{source}: the predictor has {release.pred_num_heads} heads in {release.describe()}, but the config "
            f"has model.pred_num_heads={cfg.model.pred_num_heads}")


def pick_release(layout: FileLayout, file_name: str) -> Optional[Release]:
    """The release a file is: among those its shapes fit, the one of its file name first (ViT-g and
    ViT-g@384 have the same shapes); None when none fits."""
    named = [r for r in layout.releases if r.file == file_name]
    return (named or layout.releases or [None])[0]
