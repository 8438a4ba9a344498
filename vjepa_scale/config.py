"""Typed configuration: dataclasses loaded from YAML, with strict key and type checks.

Every section is a dataclass deriving from `Section` (its `validate(prefix)` names `prefix.key` in
errors). `load_config(path, overrides)` reads a YAML recipe, applies `section.key=value` overrides,
and returns a validated `Config`. Unknown keys are refused with the closest valid name; wrong types
and out-of-range values name the offending key. Errors are raised before any work starts.

Recipes: a bare name (`vith384` or `vith384.yaml`) resolves into the checkout's top-level `configs/`
first, then into the recipes shipped in the package (`vjepa_scale/configs/`, via importlib.resources).
A run may be split into `phases` (clip shape, batch and schedule piece per phase): `Config.phase_configs()`
expands them into single-phase configs. This module also holds the ViT size table (`VIT_SIZES`, `resolve_vit_size`, `vit_size_name`), the clip token grid
(`clip_grid`) and the token budget's window (`window_clips`), so config imports nothing from models or data.
"""
from __future__ import annotations

import dataclasses
import decimal
import difflib
import importlib.resources
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown, mistyped or out of range (the message names it)."""


class Section:
    """Base of every config section (a dataclass): `validate(prefix)` raises ConfigError naming
    `prefix.key`; `check_positive` is the common range check."""

    def validate(self, prefix: str) -> None:
        """Check the section's values; a section without constraints accepts everything."""

    def check_positive(self, prefix: str, *names: str) -> None:
        """Each named field must be set and > 0."""
        for n in names:
            v = getattr(self, n)
            if v is None or not v > 0 or v == float("inf"):  # `not v > 0` also refuses NaN
                raise ConfigError(f"{prefix}.{n} must be > 0, got {v}")


def check_crop_ranges(section, prefix: str) -> None:
    """ConfigError unless `section.random_resize_scale` is 0 < min <= max <= 1 and
    `section.random_resize_aspect_ratio` 0 < min <= max."""
    lo, hi = section.random_resize_scale
    if not (0 < lo <= hi <= 1):
        raise ConfigError(f"{prefix}.random_resize_scale must satisfy 0 < min <= max <= 1, "
                          f"got {list(section.random_resize_scale)}")
    lo, hi = section.random_resize_aspect_ratio
    if not (0 < lo <= hi):
        raise ConfigError(f"{prefix}.random_resize_aspect_ratio must satisfy 0 < min <= max (width / height), "
                          f"got {list(section.random_resize_aspect_ratio)}")


def check_device_name(name: str, key: str) -> None:
    """A device setting is `auto`, `cpu`, `cuda` or `cuda:N` (N a GPU index); ConfigError naming `key` if not."""
    if not (isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", name)):
        raise ConfigError(f"{key} must be auto, cpu, cuda or cuda:N (N: a GPU index), got {name!r}")


def to_plain(x: Any) -> Any:
    """Nested dicts/lists/tuples (e.g. `dataclasses.asdict` output) -> plain dicts and lists (YAML-safe)."""
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig(Section):
    """Encoder + predictor architecture. `size` picks a named ViT (`VIT_SIZES`); width/depth/heads/mlp_ratio
    override it. `size: custom` names none: then all four must be given."""

    size: str = "huge"
    patch_size: int = 16
    tubelet_size: int = 2
    width: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    qkv_bias: bool = True
    pos_embed: Literal["sincos", "rope"] = "sincos"
    # Recompute blocks in the backward instead of keeping their activations: false, true (every block),
    # a fraction in [0, 1] (that share of each stack's blocks, spread evenly), or auto (the memory
    # preflight picks the smallest share whose estimate fits the device, per phase; see train.memory).
    activation_checkpointing: Union[bool, float, Literal["auto"]] = False
    compile: bool = False  # regional torch.compile of each transformer block (models.compiled)
    attention_backend: Literal["auto", "cudnn", "flash_attn", "torch_varlen", "nested", "bucketed", "padded"] = "auto"
    sdpa_backend: Literal["auto", "cudnn", "flash", "efficient", "math"] = "auto"  # SDPA kernel, full-length batches
    pred_width: int = 384
    pred_depth: int = 12
    pred_num_heads: int = 16
    pred_mlp_ratio: float = 4.0
    loss_exp: float = 1.0
    # Predictor mask tokens: per_type = one learned token per mask type (V-JEPA 1: type m uses token m);
    # shared = one token for every mask type, parameter (1, pred_width) (V-JEPA 2, whose reference picks the
    # token by clip-length group: its single-clip-length recipes train token 0 for both mask types).
    mask_tokens: Literal["per_type", "shared"] = "per_type"
    # Weight init of the recipe family (see models/vit.py): vjepa1 = trunc_normal(0.02) on every Linear /
    # Conv3d, no depth rescale; vjepa2 = the same, then attn.proj / mlp.fc2 of block i scaled by 1/sqrt(2i).
    init: Literal["vjepa1", "vjepa2"] = "vjepa1"

    @property
    def checkpoint_fraction(self) -> float:
        """Share of each stack's blocks recomputed in the backward; `auto` not yet resolved by the
        memory preflight (`train.memory.resolve_checkpointing`) counts as every block, the safe choice."""
        ac = self.activation_checkpointing
        return 1.0 if ac == "auto" else float(ac)

    def validate(self, prefix: str = "model") -> None:
        resolve_vit_size(self, prefix)
        self.check_positive(prefix, "patch_size", "tubelet_size", "pred_width", "pred_depth",
                            "pred_num_heads", "pred_mlp_ratio", "loss_exp")
        ac = self.activation_checkpointing
        if isinstance(ac, float) and not 0.0 <= ac <= 1.0:
            raise ConfigError(f"{prefix}.activation_checkpointing must be true, false, auto or a fraction of "
                              f"the blocks in [0, 1], got {ac}")
        if self.pred_width % self.pred_num_heads:
            raise ConfigError(f"{prefix}.pred_num_heads={self.pred_num_heads} does not divide "
                              f"{prefix}.pred_width={self.pred_width}")
        check_rope_head(self.pos_embed, self.pred_width // self.pred_num_heads,
                        f"{prefix}.pred_width / {prefix}.pred_num_heads")


@dataclass
class MaskSpec(Section):
    """One mask type: the union of `num_blocks` spatio-temporal blocks is the prediction target."""

    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    max_temporal_keep: float = 1.0
    max_keep: Optional[int] = None

    def validate(self, prefix: str) -> None:
        if self.num_blocks < 1:
            raise ConfigError(f"{prefix}.num_blocks must be >= 1, got {self.num_blocks}")
        for name in ("spatial_scale", "temporal_scale"):
            lo, hi = getattr(self, name)
            if not (0.0 < lo <= hi <= 1.0):
                raise ConfigError(f"{prefix}.{name} must satisfy 0 < min <= max <= 1, got {[lo, hi]}")
        lo, hi = self.aspect_ratio
        if not (0.0 < lo <= hi):
            raise ConfigError(f"{prefix}.aspect_ratio must satisfy 0 < min <= max, got {[lo, hi]}")
        if not (0.0 < self.max_temporal_keep <= 1.0):
            raise ConfigError(f"{prefix}.max_temporal_keep must be in (0, 1], got {self.max_temporal_keep}")
        if self.max_keep is not None and self.max_keep < 1:
            raise ConfigError(f"{prefix}.max_keep must be >= 1 or null, got {self.max_keep}")


def _default_masks() -> list[MaskSpec]:
    return [MaskSpec(8, (0.15, 0.15)), MaskSpec(2, (0.7, 0.7))]


@dataclass
class MaskConfig(Section):
    """Multi-block masking. `truncate: batch_min` reproduces the reference's rectangular batches."""

    types: list[MaskSpec] = field(default_factory=_default_masks)
    truncate: Literal["none", "batch_min"] = "none"
    seed: int = 0

    def validate(self, prefix: str = "mask") -> None:
        if not self.types:
            raise ConfigError(f"{prefix}.types must list at least one mask type")
        for i, spec in enumerate(self.types):
            spec.validate(f"{prefix}.types[{i}]")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def index_file_lines(path: str | os.PathLike, key: str):
    """(line number, text) of each line of index file `path`, read as UTF-8; a byte-order mark at its
    start (some Windows editors write one) is dropped, not taken into the first path. Bytes that are not
    UTF-8 are a ConfigError naming `key`, the file and the line."""
    with open(path, encoding="utf-8-sig") as f:
        try:
            yield from enumerate(f, 1)
        except UnicodeDecodeError:
            raise _not_utf8_error(path, key) from None


def _not_utf8_error(path: str | os.PathLike, key: str) -> ConfigError:
    """The error for an index file that is not UTF-8, naming its first undecodable line (read again as bytes:
    a text read fails on a whole chunk, not a line)."""
    where, what = f"{path}", "not UTF-8 text"
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                utf16 = raw.startswith((b"\xff\xfe", b"\xfe\xff"))
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f"{path}:{lineno}"
                what = (f"not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line"
                        + ("; the file looks like UTF-16)" if utf16 else ")"))
                break
    return ConfigError(f"{key}: {where}: {what}; index files are read as UTF-8: convert it, e.g. "
                       f"`iconv -f latin1 -t utf-8 old.txt > new.txt` (name the file's real encoding)")


def split_index_line(line: str) -> Optional[tuple[str, Optional[str]]]:
    """(path, label field or None) of one index-file line; None for a blank or `#` line. The line
    rule (README "Data"): a line of several fields ends with its label, everything before it is
    the path (inner spaces included); a line of one field is a path without label."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.rsplit(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (line, None)


@dataclass
class DatasetSpec(Section):
    """One index file (`path label` lines) or image folder, its sampling weight in the mixture, and
    optionally its own clip shape (null: `data.frames_per_clip` / `data.crop_size`).

    `weight: null` weighs the dataset by its number of entries (the datasets concatenated, as V-JEPA 1
    mixes them: each epoch is then a permutation of all entries); either every dataset's weight is null
    or none is.

    `kind: image` (or `auto` on a folder, or an index whose first entry is a .jpg/.jpeg/.png) reads
    still images, each entering as a clip of one tubelet (the image repeated `model.tubelet_size`
    times, as V-JEPA 2 does); `frames_per_clip` is then ignored.
    """

    path: str = ""
    weight: Optional[float] = 1.0  # null: in proportion to its number of entries
    frames_per_clip: Optional[int] = None
    crop_size: Optional[int] = None
    kind: Literal["auto", "video", "image"] = "auto"

    def is_image(self) -> bool:
        """Whether this dataset holds still images (see the class docstring). With `kind: auto` the
        answer is kept on this instance while its path and that file (inode, mtime, size) stay the same:
        shapes are asked for at every log window, the index file is read once."""
        if self.kind != "auto":
            return self.kind == "image"
        p = Path(self.path).expanduser()
        try:
            st = p.stat()
        except OSError:
            return False
        key = (self.path, st.st_ino, st.st_mtime_ns, st.st_size)
        cached = getattr(self, "_is_image_cache", None)
        if cached is None or cached[0] != key:
            cached = self._is_image_cache = (key, p.is_dir() or _first_entry_is_image(p))
        return cached[1]


def _first_entry_is_image(index_file: Path) -> bool:
    """Whether the first entry of an index file names an image (False when it cannot be read or is not UTF-8)."""
    try:
        for _, line in index_file_lines(index_file, "data.datasets"):
            entry = split_index_line(line)
            if entry is not None:
                return entry[0].lower().endswith(IMAGE_SUFFIXES)
    except (OSError, ConfigError):  # not UTF-8: the pre-flight check (`data.index.check_index`) names the line
        return False
    return False


DEFAULT_BATCH_SIZE = 10  # clips per rank when neither data.batch_size nor data.global_batch_size is set


@dataclass
class DataConfig(Section):
    """Video clips. `backend: synthetic` needs no files (random tensors, for smoke runs)."""

    backend: Literal["auto", "dali", "cpu", "synthetic"] = "auto"
    datasets: list[DatasetSpec] = field(default_factory=list)
    # Per rank (per GPU) micro-batch. Null: derived from global_batch_size, else DEFAULT_BATCH_SIZE. Given
    # together with global_batch_size, both must agree for the world size (`train.phases.resolve_batch`).
    batch_size: Optional[int] = None
    global_batch_size: Optional[int] = None  # clips per optimizer step over all ranks (= batch_size x world x grad_accum)
    crop_size: int = 384
    frames_per_clip: int = 16
    frame_step: int = 4  # frames between a clip's frames (unused when `fps` is set)
    # sample each video at this rate: its frame step is max(1, ceil(video fps) // fps), per video (V-JEPA 2's
    # `fps: 4`); null: every video at `frame_step`
    fps: Optional[float] = None
    # exact: a clip's frames exactly `step` apart; linspace: the reference repos' spacing, frames_per_clip
    # frames spread over frames_per_clip x step frames (~4.27 apart at 16 x 4; `data.clips.frame_offsets`)
    frame_spacing: Literal["exact", "linspace"] = "exact"
    # a video with fewer frames than one clip window: skip (counted as too_short) or pad (its last frame
    # repeated, `data.clips.short_frame_indices`; counted as data_padded), as both references do
    short_videos: Literal["skip", "pad"] = "skip"
    num_clips: int = 1
    random_resize_scale: tuple[float, float] = (0.3, 1.0)
    random_resize_aspect_ratio: tuple[float, float] = (0.75, 1.35)
    horizontal_flip: bool = True
    num_workers: int = 4
    pin_memory: bool = True
    seed: int = 0
    synthetic_size: int = 256  # samples per epoch for backend=synthetic
    loader_timeout_s: float = 600.0  # no batch from the DataLoader workers within this: error (0: wait forever)
    decode_timeout_s: float = 60.0  # reading one file longer than this: skipped like a broken file (0: no limit)
    dali_prefetch: int = 2  # backend dali: batches decoded ahead of training in its helper thread
    max_bad_fraction: float = 0.5  # unusable index entries are replaced; error when surely more than this share
    # Mixed shapes (datasets with their own frames_per_clip / crop_size, or images):
    # packed = shapes mixed inside a batch; per_step = each micro-step one shape (V-JEPA 2's way)
    mixing: Literal["packed", "per_step"] = "packed"
    tokens_per_batch: Optional[int] = None  # per-rank micro-batch filled to this many full-clip tokens

    def dataset_shape(self, i: int, tubelet: int) -> tuple[int, int]:
        """(frames, crop) of dataset i's clips: its own keys, else data's; images: one tubelet."""
        ds = self.datasets[i]
        frames = tubelet if ds.is_image() else (ds.frames_per_clip or self.frames_per_clip)
        return frames, ds.crop_size or self.crop_size

    def shapes(self, tubelet: int) -> list[tuple[int, int]]:
        """(frames, crop) per dataset (synthetic: data's one shape)."""
        if self.backend == "synthetic" or not self.datasets:
            return [(self.frames_per_clip, self.crop_size)]
        return [self.dataset_shape(i, tubelet) for i in range(len(self.datasets))]

    def several_shapes(self, tubelet: int) -> bool:
        """The datasets' clips come in more than one (frames, crop) shape (two shapes may share a token count)."""
        return len(set(self.shapes(tubelet))) > 1

    def is_mixed(self, tubelet: int) -> bool:
        """More than one clip shape among the datasets, or a token budget: batches vary."""
        return self.several_shapes(tubelet) or self.tokens_per_batch is not None

    def one_video_shape(self, tubelet: int) -> bool:
        """Every batch holds videos of data's own (frames_per_clip, crop_size): no image set, no
        dataset with its own shape, no token budget (what DALI's fixed-shape pipelines read)."""
        return (self.tokens_per_batch is None and not any(ds.is_image() for ds in self.datasets)
                and set(self.shapes(tubelet)) == {(self.frames_per_clip, self.crop_size)})

    def validate(self, prefix: str = "data") -> None:
        self.check_positive(prefix, "crop_size", "frames_per_clip", "frame_step",
                            "num_clips", "synthetic_size", "dali_prefetch")
        if self.fps is not None:
            self.check_positive(prefix, "fps")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ConfigError(f"{prefix}.batch_size must be > 0 or null, got {self.batch_size}")
        if self.global_batch_size is not None and self.global_batch_size <= 0:
            raise ConfigError(f"{prefix}.global_batch_size must be > 0 or null, got {self.global_batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"{prefix}.num_workers must be >= 0, got {self.num_workers}")
        for key in ("loader_timeout_s", "decode_timeout_s"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{prefix}.{key} must be >= 0 seconds (0 disables), got {getattr(self, key)}")
        if not 0 <= self.max_bad_fraction < 1:
            raise ConfigError(f"{prefix}.max_bad_fraction must be in [0, 1) (0: any unusable entry is an error), "
                              f"got {self.max_bad_fraction}")
        check_crop_ranges(self, prefix)
        if self.backend != "synthetic" and not self.datasets:
            raise ConfigError(f"{prefix}.datasets is empty: give at least one index file "
                              f"or set {prefix}.backend: synthetic")
        null = [i for i, ds in enumerate(self.datasets) if ds.weight is None]
        if null and len(null) < len(self.datasets):
            i = null[0]
            j = next(j for j, ds in enumerate(self.datasets) if ds.weight is not None)
            raise ConfigError(f"{prefix}.datasets[{i}].weight is null (in proportion to its entries) but "
                              f"{prefix}.datasets[{j}].weight is {self.datasets[j].weight}: make every dataset's "
                              f"weight null (concatenated) or none")
        for i, ds in enumerate(self.datasets):
            if ds.weight is not None and not 0 < ds.weight < float("inf"):
                raise ConfigError(f"{prefix}.datasets[{i}].weight must be > 0 or null, got {ds.weight}")
            for key in ("frames_per_clip", "crop_size"):
                if getattr(ds, key) is not None and getattr(ds, key) <= 0:
                    raise ConfigError(f"{prefix}.datasets[{i}].{key} must be > 0 or null, got {getattr(ds, key)}")
        if self.tokens_per_batch is not None and self.tokens_per_batch <= 0:
            raise ConfigError(f"{prefix}.tokens_per_batch must be > 0 or null, got {self.tokens_per_batch}")
        if self.num_clips > 1 and self.is_mixed(1):
            raise ConfigError(f"{prefix}.num_clips > 1 is not supported with mixed shapes or tokens_per_batch")


@dataclass
class OptimConfig(Section):
    """AdamW with scheduled LR, weight decay and EMA momentum (shapes: `train.schedules`).

    Defaults are V-JEPA 1's: warmup + cosine LR, cosine WD, linear EMA ramp. V-JEPA 2 uses
    `lr_schedule: wsd` (warmup + constant + linear `cooldown`), `wd_schedule: constant` and
    `ema_schedule: constant`. Schedules run on a horizon of `ipe_scale * iterations`, as the
    reference does (1.25x). `cooldown` counts the last steps of that horizon.
    """

    iterations: int = 90_000
    ipe_scale: float = 1.25
    warmup: int = 12_000
    start_lr: float = 2e-4
    lr: float = 6.25e-4
    final_lr: float = 1e-6
    lr_schedule: Literal["cosine", "wsd"] = "cosine"
    cooldown: int = 0  # wsd: linear decay lr -> final_lr over the horizon's last `cooldown` steps
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    wd_schedule: Literal["cosine", "constant"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    ema: tuple[float, float] = (0.998, 1.0)
    ema_schedule: Literal["linear", "constant"] = "linear"  # constant: ema[0] throughout
    grad_clip: float = 10.0
    grad_accum: int = 1

    @property
    def horizon(self) -> int:
        """Number of steps the schedules are laid out on, `ipe_scale x iterations` (>= 1)."""
        return max(1, int(self.ipe_scale * self.iterations))

    def validate(self, prefix: str = "optim") -> None:
        self.check_positive(prefix, "iterations", "ipe_scale", "lr", "grad_accum")
        if self.warmup < 0:
            raise ConfigError(f"{prefix}.warmup must be >= 0, got {self.warmup}")
        if self.cooldown < 0:
            raise ConfigError(f"{prefix}.cooldown must be >= 0, got {self.cooldown}")
        for key in ("start_lr", "final_lr", "weight_decay", "final_weight_decay", "grad_clip"):
            v = getattr(self, key)
            if not 0.0 <= v < float("inf"):  # `not` also refuses NaN (grad_clip: 0 disables clipping)
                raise ConfigError(f"{prefix}.{key} must be >= 0 and finite, got {v}")
        h = self.horizon
        if self.lr_schedule == "wsd":
            if self.warmup + self.cooldown > h:
                raise ConfigError(f"{prefix}.warmup={self.warmup} + {prefix}.cooldown={self.cooldown} exceed the "
                                  f"schedule horizon {prefix}.ipe_scale x iterations = {h} steps")
        if self.cooldown and self.lr_schedule != "wsd":
            raise ConfigError(f"{prefix}.cooldown={self.cooldown} needs {prefix}.lr_schedule: wsd "
                              f"(got {self.lr_schedule!r})")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{prefix}.betas must each be in [0, 1), got {list(self.betas)}")
        if not 0.0 <= self.eps < float("inf"):
            raise ConfigError(f"{prefix}.eps must be >= 0 and finite, got {self.eps}")
        if not (0.0 <= self.ema[0] <= self.ema[1] <= 1.0):
            raise ConfigError(f"{prefix}.ema must satisfy 0 <= start <= end <= 1, got {list(self.ema)}")


@dataclass
class PhaseOptimConfig(Section):
    """A phase's schedule overrides; unset keys (null) come from the run's `optim` section."""

    ipe_scale: Optional[float] = None
    warmup: Optional[int] = None
    start_lr: Optional[float] = None
    lr: Optional[float] = None
    final_lr: Optional[float] = None
    lr_schedule: Optional[Literal["cosine", "wsd"]] = None
    cooldown: Optional[int] = None
    weight_decay: Optional[float] = None
    final_weight_decay: Optional[float] = None
    wd_schedule: Optional[Literal["cosine", "constant"]] = None
    ema: Optional[tuple[float, float]] = None
    ema_schedule: Optional[Literal["linear", "constant"]] = None

    def overrides(self) -> dict:
        return {k: getattr(self, k) for k in PHASE_OPTIM_KEYS if getattr(self, k) is not None}


# The optim keys a phase may set for its own schedule piece.
PHASE_OPTIM_KEYS = tuple(f.name for f in dataclasses.fields(PhaseOptimConfig))


@dataclass
class PhaseConfig(Section):
    """One piece of a run (`phases:` list): its length, clip shape, batch, and schedule piece.

    Unset (null) clip and batch keys come from `data`. `steps` may be left out on the last phase
    (it then runs to `optim.iterations`); the phases' steps must add up to `optim.iterations`.
    The schedule piece is the run's `optim` with `optim` here overriding it, laid out on this
    phase's steps (horizon `ipe_scale x steps`) and evaluated at the step within the phase.
    """

    name: Optional[str] = None
    steps: Optional[int] = None
    crop_size: Optional[int] = None
    frames_per_clip: Optional[int] = None
    batch_size: Optional[int] = None  # per rank; or global_batch_size (not both)
    global_batch_size: Optional[int] = None
    optim: PhaseOptimConfig = field(default_factory=PhaseOptimConfig)

    def validate(self, prefix: str) -> None:
        for key in ("steps", "crop_size", "frames_per_clip", "batch_size", "global_batch_size"):
            v = getattr(self, key)
            if v is not None and v <= 0:
                raise ConfigError(f"{prefix}.{key} must be > 0 or null, got {v}")
        if self.batch_size is not None and self.global_batch_size is not None:
            raise ConfigError(f"{prefix}: give batch_size (per rank) or global_batch_size, not both")


@dataclass
class ZeroConfig(Section):
    """DeepSpeed ZeRO knobs most often tuned; anything else goes in `deepspeed:` raw."""

    stage: int = 3
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    stage3_max_live_parameters: int = 1_000_000_000
    stage3_max_reuse_distance: int = 1_000_000_000

    def validate(self, prefix: str = "zero") -> None:
        if self.stage not in (1, 2, 3):
            raise ConfigError(f"{prefix}.stage must be 1, 2 or 3, got {self.stage} (stage 0 keeps no ZeRO optimizer "
                              f"partitions, which the sharded EMA, checkpoint consolidation, export and "
                              f"train.init_from read; stage 1 is data parallelism with the optimizer state split)")


@dataclass
class TrainConfig(Section):
    """Run-level settings: where outputs go, precision, checkpoints, logging."""

    output_dir: str = "runs/default"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 0
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    progress_bar: bool = True
    device_peak_tflops: Optional[float] = None  # for MFU; looked up from the device name if null
    init_from: Optional[str] = None  # pretrained weights loaded before training (vjepa_scale.weights.load_init_state)
    # with init_from a training run / checkpoint: also take its optimizer state (Adam moments). Default
    # false: V-JEPA 2's cooldown keeps weights and EMA target, the optimizer and schedules start afresh
    init_from_optimizer: bool = False
    check_free_disk: bool = True  # refuse to start when the checkpoint folder lacks room for one checkpoint
    memory_check: bool = True  # refuse configs whose per-rank memory estimate exceeds the device (train.memory)
    max_bad_steps: int = 5  # non-finite steps (update skipped) in a row before the run stops (train.guard)
    hang_timeout_s: float = 1800.0  # one phase (batch, step, save, all-reduce) longer than this ends the job; 0: off

    def validate(self, prefix: str = "train") -> None:
        self.check_positive(prefix, "checkpoint_every", "log_every", "max_bad_steps")
        if self.keep_last < 1:
            raise ConfigError(f"{prefix}.keep_last must be >= 1, got {self.keep_last}")
        if self.init_from_optimizer and not self.init_from:
            raise ConfigError(f"{prefix}.init_from_optimizer: true needs {prefix}.init_from (a training run or "
                              f"checkpoint)")
        if not 0 <= self.hang_timeout_s < float("inf"):  # `not` also refuses NaN
            raise ConfigError(f"{prefix}.hang_timeout_s must be >= 0 and finite (0 disables the watchdog), "
                              f"got {self.hang_timeout_s}")
        if self.device_peak_tflops is not None and not 0 < self.device_peak_tflops < float("inf"):
            raise ConfigError(f"{prefix}.device_peak_tflops must be > 0 (null: the device's known peak), "
                              f"got {self.device_peak_tflops}")


@dataclass
class Config:
    """A whole recipe. `deepspeed` is a raw block merged last into the DeepSpeed config.

    `phases` (optional) splits the run into pieces with their own clip shape, batch and schedule
    piece (`PhaseConfig`); without it the run is one phase made of `data` and `optim`.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    phases: list[PhaseConfig] = field(default_factory=list)
    deepspeed: dict = field(default_factory=dict)

    def validate(self) -> "Config":
        validate_sections(self)
        clip_grid(self.data.crop_size, self.data.frames_per_clip, self.model)
        self.check_clips_fit_the_budget()
        if not self.phases:  # with phases, each phase's clip is checked (`phase_configs`)
            self.check_truncation()
        for i, p in enumerate(self.phases):
            if self.data.tokens_per_batch is not None and (p.batch_size or p.global_batch_size) is not None:
                key = "batch_size" if p.batch_size is not None else "global_batch_size"
                raise ConfigError(f"phases[{i}].{key} would be ignored: data.tokens_per_batch="
                                  f"{self.data.tokens_per_batch} sets every phase's batch")
        self.phase_configs()  # validates every phase (ConfigError naming `phases[i].key`)
        return self

    def check_truncation(self, where: str = "") -> None:
        """`mask.truncate: batch_min` needs one clip shape per batch (`where`: the phase, for the error)."""
        if (self.mask.truncate == "batch_min" and self.data.mixing == "packed"
                and self.data.several_shapes(self.model.tubelet_size)):
            raise ConfigError(f"mask.truncate: batch_min cuts every sample's masks to the batch's shortest, which with "
                              f"clip shapes mixed in one batch{where} (data.mixing: packed) is the smallest shape's: "
                              f"use data.mixing: per_step (one shape per batch, as the reference batches) or "
                              f"mask.truncate: none")

    def check_clips_fit_the_budget(self, where: str = "") -> None:
        """Every dataset's clip shape patches, and one clip of it fits `data.tokens_per_batch` (`where`:
        the phase whose clip shape this config has, for the error)."""
        for i, n in enumerate(self.dataset_tokens()):
            if self.data.tokens_per_batch is not None and n > self.data.tokens_per_batch:
                raise ConfigError(f"data.tokens_per_batch={self.data.tokens_per_batch} is below one clip of "
                                  f"data.datasets[{i}]{where} ({n} tokens)")

    def dataset_tokens(self) -> list[int]:
        """Full-clip tokens of one clip of each dataset, in its own shape (`DataConfig.shapes`);
        ConfigError naming `data.datasets[i]` when a shape does not patch."""
        return [math.prod(clip_grid(crop, frames, self.model, prefix=f"data.datasets[{i}]"))
                for i, (frames, crop) in enumerate(self.data.shapes(self.model.tubelet_size))]

    def budget_window(self) -> Optional[int]:
        """Stream positions a rank's window takes per micro-step under `data.tokens_per_batch`
        (`window_clips`); None without a budget."""
        if self.data.tokens_per_batch is None:
            return None
        return window_clips(self.data.tokens_per_batch, self.dataset_tokens())

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') of one clip (ConfigError when the clip does not fit the patching).

        With `phases`, this is `data`'s grid, the model's reference grid (its sin-cos table); each
        phase's clips have their own (`phase_configs()[i].grid`)."""
        return clip_grid(self.data.crop_size, self.data.frames_per_clip, self.model)

    def phase_configs(self) -> list["Config"]:
        """One single-phase Config per phase, validated: `data` with the phase's clip and batch,
        `optim` with its schedule overrides and `iterations` = its steps. No `phases`: `[self]`."""
        if not self.phases:
            return [self]
        total = self.optim.iterations
        given = [p.steps for p in self.phases]
        last = len(given) - 1
        for i, n in enumerate(given[:-1]):
            if n is None:
                raise ConfigError(f"phases[{i}].steps is missing (only the last phase may leave it out)")
        for i, p in enumerate(self.phases):
            p.validate(f"phases[{i}]")
        head = sum(given[:-1])
        if given[-1] is None and head >= total:
            raise ConfigError(f"phases[0..{last - 1}] take {head} steps, leaving none of optim.iterations={total} "
                              f"for phases[{last}]")
        if given[-1] is not None and head + given[-1] != total:
            raise ConfigError(f"the phases' steps add up to {head + given[-1]}, optim.iterations={total}: make them "
                              f"equal (or leave out phases[{last}].steps)")
        out = []
        for i, p in enumerate(self.phases):
            prefix = f"phases[{i}]"
            c = dataclasses.replace(self, phases=[])
            data = {k: getattr(p, k) for k in ("crop_size", "frames_per_clip") if getattr(p, k) is not None}
            if p.global_batch_size is not None:  # the phase's global batch replaces data's per-rank one
                data.update(batch_size=None, global_batch_size=p.global_batch_size)
            elif p.batch_size is not None:
                data.update(batch_size=p.batch_size, global_batch_size=None)
            c.data = dataclasses.replace(self.data, **data)
            steps = given[i] if given[i] is not None else total - head
            c.optim = dataclasses.replace(self.optim, iterations=steps, **p.optim.overrides())
            c.optim.validate(f"{prefix}.optim")
            clip_grid(c.data.crop_size, c.data.frames_per_clip, self.model, prefix=prefix)
            c.check_clips_fit_the_budget(f" in {prefix}")
            c.check_truncation(f" in {prefix}")
            out.append(c)
        return out

    def to_dict(self) -> dict:
        return to_plain(dataclasses.asdict(self))


# --------------------------------------------------------------------------------------------------
# Model sizes and the clip token grid
# --------------------------------------------------------------------------------------------------

# name -> (width, depth, heads, mlp_ratio); the reference's sizes. The two giants differ only in heads:
# `giant` is V-JEPA 1's vit_giant (16 heads, head dim 88), `giant_vjepa2` V-JEPA 2's released ViT-g
# (vit_giant_xformers: 22 heads, head dim 64). Released checkpoints and their sizes: weights/releases.py.
VIT_SIZES: dict[str, tuple[int, int, int, float]] = {
    "tiny": (192, 12, 3, 4.0),
    "small": (384, 12, 6, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 16, 48 / 11),
    "giant_vjepa2": (1408, 40, 22, 48 / 11),
    "gigantic": (1664, 48, 16, 64 / 13),
}


@dataclass
class VitDims:
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


CUSTOM_SIZE = "custom"  # model.size of dims that are no named size: width/depth/num_heads/mlp_ratio all given
_DIM_KEYS = ("width", "depth", "num_heads", "mlp_ratio")


def resolve_vit_size(cfg: ModelConfig, prefix: str = "model") -> VitDims:
    """Named size (or `custom`) with optional width/depth/num_heads/mlp_ratio overrides; validated."""
    if cfg.size == CUSTOM_SIZE:
        unset = [f"{prefix}.{k}" for k in _DIM_KEYS if getattr(cfg, k) is None]
        if unset:
            raise ConfigError(f"{prefix}.size={CUSTOM_SIZE} needs {', '.join(unset)} (no named size to take "
                              f"them from)")
        w, d, h, r = (getattr(cfg, k) for k in _DIM_KEYS)
    elif cfg.size not in VIT_SIZES:
        raise ConfigError(f"{prefix}.size: unknown model size '{cfg.size}' (choose from {list(VIT_SIZES)}, or "
                          f"{CUSTOM_SIZE} with width, depth, num_heads and mlp_ratio)")
    else:
        w, d, h, r = VIT_SIZES[cfg.size]
    dims = VitDims(*(getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in zip(_DIM_KEYS, (w, d, h, r))))
    for name in _DIM_KEYS:
        if getattr(dims, name) <= 0:
            raise ConfigError(f"{prefix}.{name} must be > 0, got {getattr(dims, name)}")
    if dims.width % dims.num_heads:
        raise ConfigError(f"{prefix}.num_heads={dims.num_heads} does not divide {prefix}.width={dims.width}")
    check_rope_head(cfg.pos_embed, dims.head_dim, f"{prefix}.width / {prefix}.num_heads")
    return dims


def check_rope_head(pos_embed: str, head_dim: int, what: str) -> None:
    """RoPE rotates pairs of channels over three axes: a head needs an even size of at least 6."""
    if pos_embed == "rope" and (head_dim < 6 or head_dim % 2):
        raise ConfigError(f"pos_embed=rope needs an even head size >= 6, got {what} = {head_dim}")


def vit_size_name(width: int, depth: int, num_heads: int, mlp_ratio: float) -> str:
    """The `VIT_SIZES` name with exactly these dims, else `custom`."""
    for name, (w, d, h, r) in VIT_SIZES.items():
        if (w, d, h) == (width, depth, num_heads) and math.isclose(r, mlp_ratio, rel_tol=1e-9):
            return name
    return CUSTOM_SIZE


def clip_grid(crop_size: int, frames_per_clip: int, model: ModelConfig, prefix: str = "data",
              model_prefix: str = "model.") -> tuple[int, int, int]:
    """Token grid (T', H', W') of a clip of `frames_per_clip` frames cropped to `crop_size`.

    The crop must be a multiple of the patch and the frame count of the tubelet, else ConfigError
    naming `{prefix}.crop_size` / `{prefix}.frames_per_clip` and the model's key, spelled
    `{model_prefix}patch_size` ("model." for a config section, "the encoder's " for loaded weights).
    """
    if crop_size % model.patch_size:
        raise ConfigError(f"{prefix}.crop_size={crop_size} is not divisible by "
                          f"{model_prefix}patch_size={model.patch_size}")
    if frames_per_clip % model.tubelet_size:
        raise ConfigError(f"{prefix}.frames_per_clip={frames_per_clip} is not divisible by "
                          f"{model_prefix}tubelet_size={model.tubelet_size}")
    g = crop_size // model.patch_size
    return (frames_per_clip // model.tubelet_size, g, g)


def window_clips(budget: int, tokens_per_dataset: list[int]) -> int:
    """Clips a rank's window holds under a token `budget`: as many of the smallest clips as fit (>= 1)."""
    return max(1, int(budget) // min(tokens_per_dataset))


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def checkout_config_dir() -> Optional[Path]:
    """The top-level `configs/` of the source checkout this package runs from; None when installed."""
    root = Path(__file__).resolve().parent.parent
    d = root / "configs"
    return d if (root / "setup.py").is_file() and d.is_dir() else None


def packaged_config_dir() -> Optional[Path]:
    """The recipes shipped in the package (`vjepa_scale/configs/`, present in a built wheel)."""
    d = importlib.resources.files("vjepa_scale") / "configs"
    return Path(str(d)) if d.is_dir() else None


def config_search_path() -> list[Path]:
    """Folders a bare recipe name is looked up in, in order: the checkout's, then the packaged one."""
    return [d for d in (checkout_config_dir(), packaged_config_dir()) if d is not None]


def resolve_config_path(name: str | os.PathLike, search: Optional[list[Path]] = None) -> Path:
    """A path as given, else a bare name (with or without .yaml) in the first folder of `search`
    (default `config_search_path()`) that holds it. The error lists the recipes that exist."""
    p = Path(name)
    if p.is_file():
        return p
    search = config_search_path() if search is None else search
    if len(p.parts) > 1:  # a path with a folder names that file (.yaml may be left out), never a shipped recipe
        if p.with_name(f"{p.name}.yaml").is_file():
            return p.with_name(f"{p.name}.yaml")
        raise ConfigError(f"config file '{name}' not found (a path with a folder is read as given; a bare "
                          f"recipe name looks in {', '.join(str(d) for d in search) or 'the recipe folders'})")
    for d in search:
        for cand in (d / p.name, d / f"{p.name}.yaml"):
            if cand.is_file():
                return cand
    known = sorted({x.name for d in search for x in d.glob("*.yaml")})
    where = ", ".join(str(d) for d in search) or "no recipe folder found"
    raise ConfigError(f"config file '{name}' not found (looked in . and {where}; known: {known})")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                validate: bool = True) -> Config:
    """Load a YAML recipe into a validated `Config`; `overrides` are `section.key=value` strings."""
    return load_typed_yaml(Config, path, overrides, validate)


def load_typed_yaml(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                    validate: bool = True) -> Any:
    """YAML (bare names resolve as `resolve_config_path` says) + overrides -> dataclass `cls`, validated if asked."""
    raw: dict = {}
    if path is not None:
        p = resolve_config_path(path)
        with open(p) as f:
            try:
                raw = yaml.load(f, Loader=_UniqueKeyLoader) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{p}: invalid YAML{_yaml_where(e)}: {_yaml_problem(e)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    cfg = from_dict(cls, raw)
    return cfg.validate() if validate else cfg


_OVERRIDE_PART = re.compile(r"([^.\[\]=\s]+)((?:\[-?\d+\])*)$")  # a key (any name: unknown ones are refused
# with a suggestion when the config is built), then list indices


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, lists, null). A list
    element is named by its index, as errors name it: `phases[1].steps=2000`, `phases[-1].optim.lr=1e-4`.
    A mapping given for a mapping is merged into it (`optim={lr: 1.0e-3}` keeps the recipe's other optim
    keys); null resets a section to the defaults."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, value = item.split("=", 1)
    path: list = []  # dict keys (str) and list indices (int)
    for part in key.strip().split("."):
        m = _OVERRIDE_PART.match(part)
        if m is None:
            raise ConfigError(f"override '{item}': '{part}' is not a key or key[index]")
        path += [m.group(1), *(int(i) for i in re.findall(r"-?\d+", m.group(2)))]
    node: Any = raw
    for i, step in enumerate(path):
        where = _override_name(path[:i + 1])
        last = i == len(path) - 1
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ConfigError(f"override '{item}': {_override_name(path[:i])} is not a list")
            if not -len(node) <= step < len(node):
                raise ConfigError(f"override '{item}': {where} is out of range ({_override_name(path[:i])} "
                                  f"has {len(node)} element(s))")
        elif not isinstance(node, dict):
            raise ConfigError(f"override '{item}': {_override_name(path[:i])} is not a section")
        if last:
            try:
                new = yaml.load(value, Loader=_UniqueKeyLoader)
            except yaml.YAMLError as e:
                raise ConfigError(f"override '{item}': the value {value!r} is not valid YAML "
                                  f"({_yaml_problem(e)}{_yaml_where(e, line=False)})") from None
            old = node[step] if isinstance(step, int) else node.get(step)
            node[step] = _merged(old, new) if isinstance(old, dict) and isinstance(new, dict) else new
        elif isinstance(step, int):
            node = node[step]
        else:
            if node.get(step) is None and not isinstance(path[i + 1], int):
                node[step] = {}
            node = node.get(step)
            if node is None:
                raise ConfigError(f"override '{item}': {where} is not set in the recipe (its default applies), so it "
                                  f"has no element {path[i + 1]} to change: give the whole list, {where}=[...]")


def _merged(base: dict, new: dict) -> dict:
    """`new` merged into a copy of `base`, mappings key by key (an override of a section keeps the
    recipe's other keys); any other value, a list included, replaces."""
    out = dict(base)
    for k, v in new.items():
        out[k] = _merged(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a key given twice in one mapping (where PyYAML keeps the last silently:
    a second `optim:` section would drop the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # a list or mapping as a key: SafeLoader's own error names it
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_where(e: yaml.YAMLError, line: bool = True) -> str:
    """' at line L, column C' of a YAML error (1-based), or '' when it has no position."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}" if line else f" at column {mark.column + 1}"


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What a YAML error says, on one line."""
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    return ", ".join(p for p in parts if p) or str(e).splitlines()[0]


def _override_name(path: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "the config"


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and coercing/validating types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{name}'{hint} (valid: {sorted(fields)})")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, name)
        errors = []
        for alt in inner:  # the first alternative that takes the value (bool before numbers)
            try:
                return _coerce(alt, value, name)
            except ConfigError as e:
                errors.append(str(e).removeprefix(f"{name} "))
        raise ConfigError(f"{name}: {value!r} is none of the accepted forms ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        if origin is tuple:
            if len(args) != len(value) and not (len(args) == 2 and args[1] is Ellipsis):
                raise ConfigError(f"{name} must have {len(args)} elements, got {list(value)}")
            elem = args if args[-1] is not Ellipsis else (args[0],) * len(value)
            return tuple(_coerce(t, v, f"{name}[{i}]") for i, (t, v) in enumerate(zip(elem, value)))
        return [_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        whole = _whole_number(value)
        if whole is None:
            raise ConfigError(f"{name} must be an integer, got {value!r}"
                              + (" (not a whole number)" if _NUMBER.fullmatch(str(value)) else ""))
        return whole
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")  # decimal / exponent form, as YAML 1.1
# leaves `1e5`, `1.0e5` or `2.5e3` (no dot or no exponent sign) a string


def _whole_number(value: Any) -> Optional[int]:
    """`value` as an int when it is a float or a decimal / exponent-form string that is exactly a whole
    number (1e5, 1.0e5, 2.5e3 -> 2500); None otherwise (1.5, 2.5e-1, inf, 'abc')."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        d = decimal.Decimal(value)
        return int(d) if d == d.to_integral_value() else None
    return None


def validate_sections(cfg: Any) -> None:
    """Call `validate(field_name)` on every `Section` field of `cfg` (None: an absent optional section)."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if isinstance(section, Section):
            section.validate(f.name)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the effective config as YAML (round-trips through `load_config`)."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
