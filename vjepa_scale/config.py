"""Typed configuration: dataclasses loaded from YAML, with strict key and type checks.

Every section is a dataclass. `load_config(path, overrides)` reads a YAML recipe, applies
`section.key=value` overrides, and returns a validated `Config`. Unknown keys are refused with the
closest valid name; wrong types and out-of-range values name the offending key. Errors are raised
before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown, mistyped or out of range (the message names it)."""


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Encoder + predictor architecture. `size` picks a named ViT; width/depth/heads override it."""

    size: str = "huge"
    patch_size: int = 16
    tubelet_size: int = 2
    width: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    qkv_bias: bool = True
    pos_embed: Literal["sincos", "rope"] = "sincos"
    activation_checkpointing: bool = False
    attention_backend: Literal["auto", "flash_attn", "torch_varlen", "nested", "padded"] = "auto"
    sdpa_backend: Literal["auto", "cudnn", "flash", "efficient", "math"] = "auto"  # SDPA kernel, full-length batches
    pred_width: int = 384
    pred_depth: int = 12
    pred_num_heads: int = 16
    pred_mlp_ratio: float = 4.0
    loss_exp: float = 1.0

    def validate(self, prefix: str = "model") -> None:
        from vjepa_scale.models.vit import resolve_vit_size  # late import: models import config

        resolve_vit_size(self, prefix)
        _positive(self, prefix, "patch_size", "tubelet_size", "pred_width", "pred_depth",
                  "pred_num_heads", "pred_mlp_ratio", "loss_exp")
        if self.pred_width % self.pred_num_heads:
            raise ConfigError(f"{prefix}.pred_num_heads={self.pred_num_heads} does not divide "
                              f"{prefix}.pred_width={self.pred_width}")


@dataclass
class MaskSpec:
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
class MaskConfig:
    """Multi-block masking. `truncate: batch_min` reproduces the reference's rectangular batches."""

    types: list[MaskSpec] = field(default_factory=_default_masks)
    truncate: Literal["none", "batch_min"] = "none"
    seed: int = 0

    def validate(self, prefix: str = "mask") -> None:
        if not self.types:
            raise ConfigError(f"{prefix}.types must list at least one mask type")
        for i, spec in enumerate(self.types):
            spec.validate(f"{prefix}.types[{i}]")


@dataclass
class DatasetSpec:
    """One index file (`path label` lines) and its sampling weight in the mixture."""

    path: str = ""
    weight: float = 1.0


@dataclass
class DataConfig:
    """Video clips. `backend: synthetic` needs no files (random tensors, for smoke runs)."""

    backend: Literal["auto", "dali", "cpu", "synthetic"] = "auto"
    datasets: list[DatasetSpec] = field(default_factory=list)
    batch_size: int = 10  # per rank (per GPU) micro-batch; derived from global_batch_size when that is set
    global_batch_size: Optional[int] = None  # clips per optimizer step over all ranks (= batch_size x world x grad_accum)
    crop_size: int = 384
    frames_per_clip: int = 16
    frame_step: int = 4
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

    def validate(self, prefix: str = "data") -> None:
        _positive(self, prefix, "batch_size", "crop_size", "frames_per_clip", "frame_step",
                  "num_clips", "synthetic_size")
        if self.global_batch_size is not None and self.global_batch_size <= 0:
            raise ConfigError(f"{prefix}.global_batch_size must be > 0 or null, got {self.global_batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"{prefix}.num_workers must be >= 0, got {self.num_workers}")
        for key in ("loader_timeout_s", "decode_timeout_s"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{prefix}.{key} must be >= 0 seconds (0 disables), got {getattr(self, key)}")
        lo, hi = self.random_resize_scale
        if not (0 < lo <= hi <= 1):
            raise ConfigError(f"{prefix}.random_resize_scale must satisfy 0 < min <= max <= 1")
        if self.backend != "synthetic" and not self.datasets:
            raise ConfigError(f"{prefix}.datasets is empty: give at least one index file "
                              f"or set {prefix}.backend: synthetic")
        for i, ds in enumerate(self.datasets):
            if ds.weight <= 0:
                raise ConfigError(f"{prefix}.datasets[{i}].weight must be > 0, got {ds.weight}")


@dataclass
class OptimConfig:
    """AdamW with warmup+cosine LR, cosine WD, and a linear EMA momentum ramp.

    Schedules run on a horizon of `ipe_scale * iterations`, as the reference does (1.25x).
    """

    iterations: int = 90_000
    ipe_scale: float = 1.25
    warmup: int = 12_000
    start_lr: float = 2e-4
    lr: float = 6.25e-4
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    ema: tuple[float, float] = (0.998, 1.0)
    grad_clip: float = 10.0
    grad_accum: int = 1

    def validate(self, prefix: str = "optim") -> None:
        _positive(self, prefix, "iterations", "ipe_scale", "lr", "grad_accum")
        if self.warmup < 0:
            raise ConfigError(f"{prefix}.warmup must be >= 0, got {self.warmup}")
        if not (0.0 <= self.ema[0] <= self.ema[1] <= 1.0):
            raise ConfigError(f"{prefix}.ema must satisfy 0 <= start <= end <= 1, got {list(self.ema)}")
        if self.grad_clip < 0:
            raise ConfigError(f"{prefix}.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")


@dataclass
class ZeroConfig:
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
        if self.stage not in (0, 1, 2, 3):
            raise ConfigError(f"{prefix}.stage must be 0, 1, 2 or 3, got {self.stage}")


@dataclass
class TrainConfig:
    """Run-level settings: where outputs go, precision, checkpoints, logging."""

    output_dir: str = "runs/default"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 0
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    progress_bar: bool = True
    device_peak_tflops: Optional[float] = None  # for MFU; looked up from the device name if null
    init_from: Optional[str] = None  # pretrained weights loaded before training (vjepa_scale.hf.load_init_state)

    def validate(self, prefix: str = "train") -> None:
        _positive(self, prefix, "checkpoint_every", "log_every")
        if self.keep_last < 1:
            raise ConfigError(f"{prefix}.keep_last must be >= 1, got {self.keep_last}")


@dataclass
class Config:
    """A whole recipe. `deepspeed` is a raw block merged last into the DeepSpeed config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: dict = field(default_factory=dict)

    def validate(self) -> "Config":
        validate_sections(self)
        if self.data.crop_size % self.model.patch_size:
            raise ConfigError(f"data.crop_size={self.data.crop_size} is not divisible by "
                              f"model.patch_size={self.model.patch_size}")
        if self.data.frames_per_clip % self.model.tubelet_size:
            raise ConfigError(f"data.frames_per_clip={self.data.frames_per_clip} is not divisible by "
                              f"model.tubelet_size={self.model.tubelet_size}")
        return self

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') of one clip."""
        g = self.data.crop_size // self.model.patch_size
        return (self.data.frames_per_clip // self.model.tubelet_size, g, g)

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A path as given, or a bare name (with or without .yaml) looked up in `configs/`."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    known = sorted(x.name for x in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config file '{name}' not found (looked in . and {CONFIG_DIR}; known: {known})")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                validate: bool = True) -> Config:
    """Load a YAML recipe into a validated `Config`; `overrides` are `section.key=value` strings."""
    return load_typed_yaml(Config, path, overrides, validate)


def load_typed_yaml(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                    validate: bool = True) -> Any:
    """YAML (bare names resolve into configs/) + overrides -> dataclass `cls`, validated if asked."""
    raw: dict = {}
    if path is not None:
        p = resolve_config_path(path)
        with open(p) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    cfg = from_dict(cls, raw)
    return cfg.validate() if validate else cfg


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(value)


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
        return _coerce(inner[0], value, name)
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
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
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


def validate_sections(cfg: Any) -> None:
    """Call `validate(section_name)` on every dataclass section of `cfg` that has one."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if section is not None and hasattr(section, "validate"):
            section.validate(f.name)


def _positive(obj: Any, prefix: str, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if v is None or v <= 0:
            raise ConfigError(f"{prefix}.{n} must be > 0, got {v}")


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the effective config as YAML (round-trips through `load_config`)."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
