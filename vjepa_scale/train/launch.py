"""Launch helpers: pre-flight checks (batch resolution per phase: `train.phases.resolve_batch`), the DeepSpeed config and process group.

Batch sizes: `data.batch_size` is the per-rank micro-batch. When `data.global_batch_size` is set
(the recipes do: 2400 or 3072 clips per optimizer step, as in the paper) it must divide evenly into
`world_size x optim.grad_accum` micro-batches, and `data.batch_size` is derived from it: one given
too must agree (a per-rank batch that gives another global batch is refused, naming both keys).
Everything here runs before any model is built, so bad configs fail fast; `preflight` ends with
the per-rank memory estimate (`train.memory.check_memory`), which refuses configs that cannot fit. Rank, device and
precision come from `vjepa_scale.distributed` (shared with evaluation).
"""
from __future__ import annotations

import copy
import difflib
import functools
import logging
import os
from pathlib import Path

import torch

from vjepa_scale.config import Config, ConfigError
from vjepa_scale.distributed import DistEnv, compute_dtype, device_for, init_distributed
from vjepa_scale.extras import MissingExtraError, require_extra
from vjepa_scale.train.memory import check_memory
from vjepa_scale.train.phases import check_per_step_offsets, plan, resolve_batch
from vjepa_scale.train.zero_compat import skip_shm_comm_build, untested_deepspeed_note


def check_data_paths(cfg: Config) -> None:
    """Every dataset of the config (unless synthetic) must be an index file listing videos or a folder of
    images: read (not the videos, so a large index stays fast; `data.index.check_index`), the error naming the
    path and the problem. A file or folder listed twice (by resolved path) gets a warning (rank 0)."""
    if cfg.data.backend == "synthetic":
        return
    from vjepa_scale.data.index import check_index

    seen = {}
    for i, ds in enumerate(cfg.data.datasets):
        if not ds.path:
            raise ConfigError(f"data.datasets[{i}].path is empty")
        check_index(ds.path, f"data.datasets[{i}].path", ds.kind)
        real = os.path.realpath(os.path.expanduser(ds.path))
        if real in seen and os.environ.get("RANK", "0") == "0":
            logging.getLogger("vjepa_scale.data").warning(
                "data.datasets[%d].path and data.datasets[%d].path are the same %s (%s): its entries are drawn as "
                "two datasets, with both weights; list it once unless that is intended", seen[real], i,
                "folder" if os.path.isdir(real) else "index file", real)
        seen.setdefault(real, i)


def check_first_videos(cfg: Config) -> None:
    """Every video dataset of the config (unless synthetic; image datasets are not opened) has a readable
    video among its first entries (`data.index.check_first_videos`: at most 8 files opened, their first
    frame decoded), so a dataset of broken or non-video files is refused before any process group or
    engine, the error naming the index and each file's reason. Every rank comes to the same verdict."""
    if cfg.data.backend == "synthetic":
        return
    from vjepa_scale.data.index import check_first_videos as check_index_videos

    for i, ds in enumerate(cfg.data.datasets):
        if not ds.is_image():
            check_index_videos(ds.path, f"data.datasets[{i}].path", cfg.data.decode_timeout_s)


def preflight(cfg: Config, world_size: int) -> Config:
    """All checks that need no model or process group; returns the batch-resolved config.

    With `phases`, each phase's batch must divide over the world and each phase's memory estimate
    must fit (the errors name the phase).
    """

    check_deepspeed_installed()
    check_data_paths(cfg)
    check_first_videos(cfg)
    check_deepspeed_block(cfg.deepspeed, cfg.zero.stage)
    if cfg.data.tokens_per_batch is not None:  # checked on the user's config: resolution fills both keys
        for key in ("global_batch_size", "batch_size"):
            if getattr(cfg.data, key) is not None:
                raise ConfigError(f"data.tokens_per_batch={cfg.data.tokens_per_batch} sets the batch (clips vary per "
                                  f"step), so data.{key}={getattr(cfg.data, key)} would be ignored: set "
                                  f"data.{key}: null")
    if cfg.train.init_from:
        check_init_from(cfg)
    cfg = resolve_batch(cfg, world_size)
    phases = plan(cfg, world_size)
    check_per_step_offsets(phases)
    for p in phases:
        check_attention_backend(p.cfg)
        try:
            check_masks(p.cfg)
            check_memory(p.cfg, world_size)
        except ConfigError as e:
            if len(phases) == 1:
                raise
            raise ConfigError(f"phases[{p.index}] ({p.cfg.data.frames_per_clip} frames x {p.cfg.data.crop_size} px, "
                              f"global batch {p.global_batch}): {e}") from None
    return cfg


MASK_CHECK_STEPS = 4  # steps of masks drawn per clip grid in pre-flight


def check_masks(cfg: Config) -> None:
    """Every clip grid the run trains (each dataset's shape) leaves context under every mask type: a few
    steps' masks are drawn per distinct grid, so a grid the blocks always cover (e.g. an image set at a
    crop of one patch) is refused naming its dataset before the run, not at its first batch."""
    from vjepa_scale.config import clip_grid
    from vjepa_scale.masks import MultiBlockMasker

    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    named = cfg.data.backend != "synthetic" and cfg.data.datasets
    seen = set()
    for i, (frames, crop) in enumerate(cfg.data.shapes(cfg.model.tubelet_size)):
        grid = clip_grid(crop, frames, cfg.model)
        if grid in seen:
            continue
        seen.add(grid)
        try:
            for step in range(MASK_CHECK_STEPS):
                masker.sample(2, step, grids=[grid, grid])
        except ConfigError as e:
            what = f"data.datasets[{i}] ({frames} frames x {crop} px)" if named else "data"
            raise ConfigError(f"{what}, token grid {grid}: {e}") from None


def check_deepspeed_installed() -> None:
    """Training runs on DeepSpeed: refused naming the extra when it is missing; a release outside the
    tested ones gets a warning (rank 0)."""
    try:
        require_extra("deepspeed", "train", "training")
    except MissingExtraError as e:
        raise ConfigError(str(e)) from None
    note = untested_deepspeed_note()
    if note and os.environ.get("RANK", "0") == "0":
        print(note, flush=True)


def check_attention_backend(cfg: Config, device: torch.device | None = None) -> None:
    """`model.attention_backend` must run on the device this rank trains on (CUDA when present, else
    the CPU) at the training dtype (`train.precision`); refused here, not in the first forward pass."""
    from vjepa_scale.attention import resolve_attention_backend

    device = device or device_for()
    try:
        resolve_attention_backend(cfg.model.attention_backend, device, compute_dtype(cfg.train.precision, device))
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None


def check_init_from(cfg: Config) -> None:
    """`train.init_from` must be a source of weights for this model: its format and the architecture it
    states are checked here (`weights.check_init_source`, no weights read); the weights at the model build."""
    from vjepa_scale.weights import check_init_source

    if not Path(cfg.train.init_from).expanduser().exists():
        raise ConfigError(f"train.init_from: '{cfg.train.init_from}' does not exist (give a training run, "
                          f"a checkpoint dir, a Hugging Face export folder or an official checkpoint file)")
    if cfg.train.init_from_optimizer:
        check_optimizer_source(cfg.train.init_from)
    try:
        check_init_source(cfg.train.init_from, cfg)
    except (FileNotFoundError, ValueError) as e:  # ConfigError and CheckpointMismatchError are ValueErrors
        raise ConfigError(f"train.init_from: {e}") from None


def check_optimizer_source(init_from: str) -> None:
    """`train.init_from_optimizer: true` needs a checkpoint of our training runs (it holds the optimizer)."""
    from vjepa_scale.weights import resolve_checkpoint

    try:
        resolve_checkpoint(init_from)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"train.init_from_optimizer: true needs train.init_from to be a training run or one of "
                          f"its checkpoints (the optimizer state is only there): {e}") from None


def deepspeed_config(cfg: Config, world_size: int, with_optimizer: bool = True) -> dict:
    """The DeepSpeed JSON config for the online engine (or the optimizer-less target engine).

    `cfg.deepspeed` is merged last (recursively), so any DeepSpeed key can be set from the YAML.
    """
    z = cfg.zero
    zero = {
        "stage": z.stage,
        "overlap_comm": z.overlap_comm,
        "contiguous_gradients": z.contiguous_gradients,
        "reduce_bucket_size": z.reduce_bucket_size,
    }
    if z.stage == 3:
        zero.update(stage3_prefetch_bucket_size=z.stage3_prefetch_bucket_size,
                    stage3_param_persistence_threshold=z.stage3_param_persistence_threshold,
                    stage3_max_live_parameters=z.stage3_max_live_parameters,
                    stage3_max_reuse_distance=z.stage3_max_reuse_distance)
    out = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.data.batch_size * cfg.optim.grad_accum * world_size,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if compute_dtype(cfg.train.precision) == torch.bfloat16:
        out["bf16"] = {"enabled": True}
    if with_optimizer and cfg.optim.grad_clip > 0:
        out["gradient_clipping"] = cfg.optim.grad_clip
    out = _merge(out, cfg.deepspeed)
    if not with_optimizer and z.stage == 3:
        # Every target parameter is re-gathered from its (EMA-updated) shard at each forward:
        # a persistent (never released) full copy would not see the shard-local update.
        out["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    elif not with_optimizer:
        # ZeRO-1/2 partition optimizer state only: the target (no optimizer) is replicated.
        out["zero_optimization"] = {"stage": 0}
    return out


# Raw `deepspeed:` keys that the typed config sets (one place for each setting): refused there.
_OWNED = {"train_micro_batch_size_per_gpu": "data.batch_size (or data.global_batch_size)",
          "train_batch_size": "data.global_batch_size", "gradient_accumulation_steps": "optim.grad_accum",
          "gradient_clipping": "optim.grad_clip", "fp16": "train.precision (bf16 or fp32)",
          "optimizer": "optim (the trainer builds its own AdamW)", "scheduler": "optim (lr_schedule and the rest)"}
_OWNED_ZERO = ("stage", "overlap_comm", "contiguous_gradients", "reduce_bucket_size", "stage3_prefetch_bucket_size",
               "stage3_param_persistence_threshold", "stage3_max_live_parameters", "stage3_max_reuse_distance")
# DeepSpeed's config sections, for spotting a misspelt one (DeepSpeed ignores unknown top-level keys)
_DS_SECTIONS = ("zero_optimization", "bf16", "activation_checkpointing", "flops_profiler", "comms_logger",
                "tensorboard", "wandb", "csv_monitor", "comet", "aio", "compile", "data_efficiency", "elasticity",
                "autotuning", "pipeline", "sparse_attention", "amp", "compression_training", "checkpoint",
                "nebula", "curriculum_learning", "eigenvalue", "progressive_layer_drop", "weight_quantization",
                "hybrid_engine", "timers", "torch_autocast", "communication_data_type", "prescale_gradients",
                "gradient_predivide_factor", "steps_per_print", "wall_clock_breakdown", "memory_breakdown",
                "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "dump_state", "seq_parallel_communication_data_type",
                "sequence_parallel_size", "tensor_parallel", "data_types", "disable_allgather", "dataloader_drop_last",
                "use_node_local_storage", "load_universal", "graph_harvesting", "zenflow", "sparse_gradients")


@functools.lru_cache(maxsize=1)
def _deepspeed_keys() -> frozenset[str]:
    """The config key names DeepSpeed's own constants spell (`deepspeed.runtime.constants`): every top-level
    key it reads, so a real one is never taken for a misspelling."""
    from deepspeed.runtime import constants

    return frozenset(v for k, v in vars(constants).items() if k.isupper() and isinstance(v, str) and v.isidentifier())


def check_deepspeed_block(block: dict, zero_stage: int) -> None:
    """Refuse, before any work, raw `deepspeed:` keys that a typed key owns (naming it), a misspelt
    DeepSpeed section, and `zero_optimization` keys or values DeepSpeed's own validation refuses
    under ZeRO stage `zero_stage`."""
    for key, value in (block or {}).items():
        if key in _OWNED:
            raise ConfigError(f"deepspeed.{key}: set {_OWNED[key]} instead (the trainer sets this DeepSpeed key "
                              f"from it, and config.yaml records that key)")
        if key == "bf16" and isinstance(value, dict):
            if "enabled" in value:
                raise ConfigError("deepspeed.bf16.enabled: set train.precision instead (bf16 or fp32)")
            if difflib.get_close_matches("enabled", list(value), n=1, cutoff=0.7):  # `enable`, `enabeld`
                raise ConfigError(f"deepspeed.bf16: {sorted(value)} looks like a misspelt `enabled`; bf16 is set by "
                                  f"train.precision (bf16 or fp32)")
        if key not in _DS_SECTIONS and key not in _deepspeed_keys():
            owned = difflib.get_close_matches(key, list(_OWNED), n=1, cutoff=0.6)
            if owned:  # a misspelt key the trainer sets: DeepSpeed would ignore it silently
                raise ConfigError(f"deepspeed.{key}: not a DeepSpeed config key; did you mean deepspeed.{owned[0]}? "
                                  f"That one is set from {_OWNED[owned[0]]}: set that instead")
            close = difflib.get_close_matches(key, _DS_SECTIONS, n=1, cutoff=0.8)
            if close:
                raise ConfigError(f"deepspeed.{key}: not a DeepSpeed config key; did you mean deepspeed.{close[0]}?")
    zero = (block or {}).get("zero_optimization")
    if zero is None:
        return
    if not isinstance(zero, dict):
        raise ConfigError(f"deepspeed.zero_optimization must be a mapping, got {zero!r}")
    for key in _OWNED_ZERO:
        if key in zero:
            raise ConfigError(f"deepspeed.zero_optimization.{key}: set zero.{key} instead")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    try:
        DeepSpeedZeroConfig(**{**zero, "stage": zero_stage})
    except ValidationError as e:
        bad = "; ".join(".".join(["deepspeed.zero_optimization", *map(str, err["loc"])]) + f": {err['msg']}"
                        for err in e.errors())
        raise ConfigError(bad) from None


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def join_process_group(hang_timeout_s: float = 0.0) -> DistEnv:
    """Join DeepSpeed's process group for training (NCCL on GPU, gloo on CPU), pinning this rank's GPU.

    hang_timeout_s > 0 (`train.hang_timeout_s`): collectives fail after it plus a minute's grace, so
    the per-rank watchdog (`train.watchdog`, same timeout) fires first and names the stalled phase;
    0 keeps DeepSpeed's default (env DEEPSPEED_TIMEOUT, in minutes; 10 unless set).
    DeepSpeed JIT-builds a shared-memory CPU collective op (~60 s with g++) on first use; gloo alone
    is enough for CPU runs, so DS_SKIP_SHM_BUILD=1 marks that op unavailable first.
    """
    device = device_for()
    if device.type == "cpu" and os.environ.get("DS_SKIP_SHM_BUILD") == "1":
        skip_shm_comm_build()
    timeout_s = hang_timeout_s + 60.0 if hang_timeout_s > 0 else None
    return init_distributed(device, deepspeed=True, timeout_s=timeout_s)
