"""Typed configuration of a frozen-encoder attentive-probe evaluation (YAML + `section.key=value`).

Sections: `encoder` (where the frozen weights come from), `model` (the encoder architecture when the
source does not carry one: random init), `data` (labeled index files and how clips are sampled),
`probe` (architecture), `optim` (probe training), `run` (outputs, seeds, device). Loading reuses
`vjepa_scale.config.from_dict` and its `Section` base, so unknown keys, bad types and out-of-range
values fail with the key's name. Every key with its default and meaning: README.md, "Evaluation config
reference" (tests/unit/test_readme_config_reference.py keeps it complete).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal, Optional

from vjepa_scale.config import (ConfigError, ModelConfig, Section, check_crop_ranges, check_device_name,
                                load_typed_yaml, to_plain, validate_sections)


@dataclass
class EncoderSource(Section):
    """Frozen encoder weights: our run dir / checkpoint, an HF export folder, or random init."""

    checkpoint: Optional[str] = None  # run dir or checkpoint path (vjepa_scale.weights.run)
    which: Literal["target", "online"] = "target"  # EMA target encoder by default
    hf_path: Optional[str] = None  # Hugging Face export folder (vjepa_scale.weights.load)
    random_init: bool = False  # baseline: same architecture (from `model:` or the checkpoint), random weights
    init_seed: int = 0  # seed of the random init

    def validate(self, prefix: str = "encoder") -> None:
        if self.checkpoint and self.hf_path:
            raise ConfigError(f"{prefix}: give one of {prefix}.checkpoint or {prefix}.hf_path, not both")
        if not (self.checkpoint or self.hf_path or self.random_init):
            raise ConfigError(f"{prefix}: give {prefix}.checkpoint, {prefix}.hf_path or {prefix}.random_init=true")
        if self.random_init and self.hf_path:
            raise ConfigError(f"{prefix}.random_init takes its architecture from `model:` or {prefix}.checkpoint, "
                              f"not from {prefix}.hf_path")
        if self.hf_path and self.which != "target":
            raise ConfigError(f"{prefix}.which={self.which} picks an encoder of a training checkpoint; an export "
                              f"({prefix}.hf_path) holds one encoder (its README.md names which): drop {prefix}.which")


@dataclass
class EvalDataConfig(Section):
    """Labeled `path label` index files and the deterministic eval clip sampling."""

    train_index: str = ""
    val_index: str = ""
    allow_overlap: bool = False  # videos in both index files (same resolved path) fail unless true
    num_classes: Optional[int] = None  # default: 1 + the largest label in either index
    train_per_class: Optional[int] = None  # label-efficient probe: this many train videos per class (null: all)
    subset_seed: int = 0  # probe seed s trains on the balanced subset drawn with subset_seed + s
    frames_per_clip: int = 16
    frame_step: int = 4
    # sample each video at this rate, as training's data.fps does: frame step max(1, ceil(video fps) // fps)
    # per video (`frame_step` unused); null: every video at `frame_step`
    fps: Optional[float] = None
    frame_spacing: Literal["exact", "linspace"] = "exact"  # as training's data.frame_spacing
    crop_size: int = 224
    num_clips: int = 1  # temporal clips per video, evenly spaced; their tokens are concatenated
    num_views: int = 1  # spatial views per clip (1 = center; 3 = both ends and center of the long side)
    resize_ratio: float = 1.0  # short side is resized to crop_size * resize_ratio before cropping
    batch_size: int = 8  # videos per feature-extraction batch
    num_workers: int = 2
    # probe training on augmented clips, close to the reference probes: every epoch each train video is one
    # sample whose clips take random windows spread over the video (as pretraining draws them), each a random
    # resized crop (+ optional flip, + random erasing); val keeps the fixed views above. The features change every epoch, so they
    # are streamed (run.features: auto or stream)
    train_augment: bool = False
    random_resize_scale: tuple[float, float] = (0.08, 1.0)  # crop area over the frame's (the reference probe's)
    random_resize_aspect_ratio: tuple[float, float] = (0.75, 4 / 3)  # crop width / height, drawn log-uniformly
    horizontal_flip: bool = False  # mirror half the clips (the reference probe does not)
    random_erase_prob: float = 0.25  # chance a clip gets one box of noise over all its frames (reference: reprob)

    def validate(self, prefix: str = "data") -> None:
        for name in ("train_index", "val_index"):
            if not getattr(self, name):
                raise ConfigError(f"{prefix}.{name} is empty: give a `path label` index file")
        self.check_positive(prefix, "frames_per_clip", "frame_step", "crop_size", "num_clips", "num_views",
                            "batch_size")
        if self.fps is not None:
            self.check_positive(prefix, "fps")
        if self.resize_ratio < 1.0:
            raise ConfigError(f"{prefix}.resize_ratio must be >= 1 (crop inside the resized frame), "
                              f"got {self.resize_ratio}")
        if self.train_per_class is not None and self.train_per_class < 1:
            raise ConfigError(f"{prefix}.train_per_class must be >= 1 or null, got {self.train_per_class}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"{prefix}.num_classes must be >= 2 or null, got {self.num_classes}")
        if self.num_workers < 0:
            raise ConfigError(f"{prefix}.num_workers must be >= 0, got {self.num_workers}")
        check_crop_ranges(self, prefix)
        if not 0 <= self.random_erase_prob <= 1:
            raise ConfigError(f"{prefix}.random_erase_prob must be in [0, 1], got {self.random_erase_prob}")

    @property
    def short_videos(self) -> str:
        """Eval clips of a video shorter than one window repeat its last frame (`data.clips.plan_video`)."""
        return "pad"


@dataclass
class ProbeConfig(Section):
    """Attentive probe. v1: one cross-attention block (learned query) + MLP + linear head.
    v2: `num_self_blocks` self-attention blocks on the tokens first, then that block."""

    kind: Literal["v1", "v2"] = "v1"
    num_heads: Optional[int] = None  # default: the encoder's heads; must divide the encoder width
    mlp_ratio: float = 4.0
    num_self_blocks: int = 3  # v2 only
    num_queries: int = 1

    def validate(self, prefix: str = "probe") -> None:
        self.check_positive(prefix, "mlp_ratio", "num_queries")
        if self.num_heads is not None and self.num_heads <= 0:
            raise ConfigError(f"{prefix}.num_heads must be > 0 or null, got {self.num_heads}")
        if self.kind == "v2" and self.num_self_blocks < 1:
            raise ConfigError(f"{prefix}.num_self_blocks must be >= 1 for kind v2, got {self.num_self_blocks}")


@dataclass
class ProbeOptimConfig(Section):
    """AdamW with linear warmup then cosine decay, stepped per iteration."""

    epochs: int = 20
    batch_size: int = 16  # (video, view) samples per step, over all ranks
    lr: float = 1e-3
    start_lr: Optional[float] = None  # warmup start; default = lr
    final_lr: float = 0.0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)

    def validate(self, prefix: str = "optim") -> None:
        self.check_positive(prefix, "epochs", "batch_size", "lr")
        if self.final_lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ConfigError(f"{prefix}.final_lr, weight_decay and warmup_epochs must be >= 0")


@dataclass
class RunConfig(Section):
    output_dir: str = "runs/probe"
    seeds: list[int] = field(default_factory=lambda: [0])  # one probe trained per seed (each seed once)
    device: str = "auto"  # auto, cpu, cuda or cuda:N; auto: cuda when available, else cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    progress_bar: bool = True
    tensorboard: bool = True
    num_threads: Optional[int] = None  # CPU threads for torch (null: torch's default); 1 on busy machines
    # memory: encode every video once and keep the features in host memory; stream: encode on the fly for every
    # probe batch and val pass (features too large for memory); auto: memory when they take at most half of it
    features: Literal["auto", "memory", "stream"] = "auto"
    # output_dir already holding another encoder's result.json: refused unless true (then replaced, tb/ too)
    overwrite: bool = False

    def validate(self, prefix: str = "run") -> None:
        if not self.seeds:
            raise ConfigError(f"{prefix}.seeds must list at least one seed")
        dup = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if dup:
            raise ConfigError(f"{prefix}.seeds={list(self.seeds)} repeats seed {', '.join(map(str, dup))}: each "
                              f"seed trains one probe, give each once")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"{prefix}.num_threads must be >= 1 or null, got {self.num_threads}")
        check_device_name(self.device, f"{prefix}.device")


@dataclass
class EvalConfig:
    encoder: EncoderSource = field(default_factory=EncoderSource)
    model: Optional[ModelConfig] = None  # needed for random_init; if given with a checkpoint it must match
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    optim: ProbeOptimConfig = field(default_factory=ProbeOptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "EvalConfig":
        validate_sections(self)
        if self.data.train_augment and self.run.features == "memory":
            raise ConfigError("data.train_augment=true draws new crops every epoch, so the train features cannot be "
                              "encoded once: set run.features to auto or stream (run.features=memory given)")
        if self.encoder.random_init and self.model is None and not self.encoder.checkpoint:
            raise ConfigError("encoder.random_init needs a `model:` section or encoder.checkpoint "
                              "(the architecture to initialize)")
        return self

    def to_dict(self) -> dict:
        return to_plain(dataclasses.asdict(self))


def load_eval_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                     validate: bool = True) -> EvalConfig:
    """Read a YAML eval recipe (bare names resolve as `resolve_config_path` says), apply overrides, validate."""
    return load_typed_yaml(EvalConfig, path, overrides, validate)
