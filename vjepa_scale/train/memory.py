"""Pre-flight memory estimate: does one rank's share of a training run fit its device?

`estimate_memory(cfg, world_size)` adds up, per rank, in bytes (P = online parameters, encoder +
predictor; E = encoder parameters, the size of the target encoder and of the EMA shadow; b = bytes
of the compute dtype; W = world size; ZeRO stage s):

    weights      P*b    / W if s == 3          (DeepSpeed's module copy in the compute dtype)
    gradients    P*b    / W if s >= 2
    optimizer    P*12   / W if s >= 1          (fp32 master + two fp32 Adam moments)
    target       E*b    / W if s == 3          (optimizer-less ZeRO engine, sharded like the params)
    ema          E*4    / W if s >= 1          (fp32 shadow of this rank's masters, `train.ema.ShardedEMA`)
    activations  see `activation_bytes`
    build        (P + 2E)*4 on CPU devices only (every rank builds the fp32 models, the target and its
                 fp32 EMA start in host memory before DeepSpeed shards them; counted as coexisting)
    runtime      RUNTIME_BYTES                 (CUDA context / torch + DeepSpeed in host memory)

Parameters are counted exactly by building the models on the `meta` device (no memory). The
activation term is rough (a few tens of percent): it assumes memory-efficient attention (no N x N
score matrix kept), pre-LN blocks, and the mask config's *expected* context fraction (blocks
placed independently; the real union of overlapping blocks is a little smaller, so the context a
little larger). It ignores ZeRO-3's transiently gathered layers, communication buckets and
allocator fragmentation. It is meant to refuse configs that are far out of reach (a ViT-H batch
of hundreds of clips on a CPU), not to tune a config to the last gigabyte.

`available_bytes(device, local_ranks)`: CUDA: total memory of the local device; CPU: the memory
available to new allocations (MemAvailable, capped by a cgroup limit) divided by the ranks on the
node. `check_memory(cfg, world_size)` raises ConfigError naming the estimate, the available memory
and the settings to change; `train.memory_check: false` skips it. `resolve_checkpointing` turns
`model.activation_checkpointing: auto` into the fewest recomputed blocks whose estimate fits, from
the least memory any rank has once the process group is up (`agreed_available_bytes`), so every rank
recomputes the same blocks.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from vjepa_scale.config import Config, ConfigError, MaskSpec, resolve_vit_size
from vjepa_scale.distributed import compute_dtype, device_for, dist_env, rank_and_world

GiB = 1024 ** 3
RUNTIME_BYTES = 1 * GiB  # per rank: CUDA context + NCCL buffers, or torch + DeepSpeed in host memory


@dataclass(frozen=True)
class ParamCounts:
    online: int  # encoder + predictor (what the optimizer trains)
    encoder: int  # the target encoder and the EMA shadow have this many


def meta_jepa(cfg: Config):
    """The JEPA (online encoder + predictor) of `cfg` on the meta device: exact shapes, no memory."""
    from vjepa_scale.models import JEPA

    with torch.device("meta"):
        return JEPA(cfg)


def param_counts(cfg: Config) -> ParamCounts:
    """Exact parameter counts of the online model and the encoder, built on the meta device."""
    jepa = meta_jepa(cfg)
    return ParamCounts(online=sum(p.numel() for p in jepa.parameters()),
                       encoder=sum(p.numel() for p in jepa.encoder.parameters()))


def context_fraction(spec: MaskSpec, tokens: int) -> float:
    """Expected fraction of a clip's tokens left as context by one mask type.

    Each of `num_blocks` blocks covers (mean spatial scale) x (mean temporal scale) of the clip;
    placed independently, their union covers 1 - (1 - a)^n of it. `max_keep` caps the context.
    """
    a = (sum(spec.spatial_scale) / 2) * (sum(spec.temporal_scale) / 2)
    ctx = (1.0 - a) ** spec.num_blocks
    if spec.max_keep is not None:
        ctx = min(ctx, spec.max_keep / tokens)
    return max(ctx, 1.0 / tokens)


def _block_elems(width: int, mlp_ratio: float) -> float:
    """Activation elements one pre-LN transformer block keeps per token for its backward:
    LN1 in/out (2w), q,k,v (3w), attention out (w), LN2 in/out (2w), MLP hidden pre/post GELU (2rw)."""
    return width * (8 + 2 * mlp_ratio)


def _stack_elems(tokens: float, width: int, depth: int, mlp_ratio: float, fraction: float) -> float:
    """Elements kept by `depth` blocks over `tokens` tokens when round(fraction x depth) of them are
    checkpointed: those keep only their input, plus one block's activations while it is recomputed."""
    per_block = tokens * _block_elems(width, mlp_ratio)
    n = round(fraction * depth)
    return (depth - n) * per_block + n * tokens * width + (per_block if n else 0.0)


def activation_bytes(cfg: Config, batch: int, dtype_bytes: int) -> int:
    """Rough activation memory of one micro-batch of `batch` clips (cfg.data.batch_size per rank).

    N tokens per clip, c_k the expected context fraction of mask type k (`context_fraction`):
      online encoder : sum_k c_k*N tokens per clip through `depth` blocks of `width`
      predictor      : N tokens per clip and mask type (context + mask tokens) through its blocks
      target encoder : no grad, so one block's activations over N tokens + its output
      input          : the clip, once as loaded (fp32) and once in the compute dtype
    Datasets of several clip shapes: every clip counted at the largest shape's N (an upper bound); a
    token budget (`data.tokens_per_batch`, where `batch` is the sampler's window, not clips): the
    budget's tokens, or one largest clip when that is more (a batch holds at least one clip).
    """
    m = cfg.model
    dims = resolve_vit_size(m)
    shapes, tokens = cfg.data.shapes(m.tubelet_size), cfg.dataset_tokens()
    k = max(range(len(shapes)), key=tokens.__getitem__)  # the first largest shape
    (frames, crop), n = shapes[k], tokens[k]
    ckpt = m.checkpoint_fraction
    ctx_tokens = sum(context_fraction(spec, n) for spec in cfg.mask.types) * n
    enc = _stack_elems(ctx_tokens, dims.width, dims.depth, dims.mlp_ratio, ckpt)
    pred = _stack_elems(len(cfg.mask.types) * n, m.pred_width, m.pred_depth, m.pred_mlp_ratio, ckpt)
    target = n * (_block_elems(dims.width, dims.mlp_ratio) + dims.width)
    video = 3 * frames * crop ** 2
    budget = cfg.data.tokens_per_batch
    clips = max(1.0, budget / n) if budget is not None else batch  # largest-shape clip equivalents
    return int(clips * ((enc + pred + target) * dtype_bytes + video * (4 + dtype_bytes)))


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-rank bytes by component (see the module docstring)."""

    weights: int
    gradients: int
    optimizer: int
    target: int
    ema: int
    activations: int
    build: int
    runtime: int

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in _COMPONENTS)

    def describe(self) -> str:
        return ", ".join(f"{k} {_gib(getattr(self, k))}" for k in _COMPONENTS if getattr(self, k))


_COMPONENTS = ("weights", "gradients", "optimizer", "target", "ema", "activations", "build", "runtime")


def estimate_memory(cfg: Config, world_size: int, device: Optional[torch.device] = None,
                    counts: Optional[ParamCounts] = None) -> MemoryEstimate:
    """Per-rank memory of training `cfg` (batch-resolved: data.batch_size per rank) on `world_size` ranks."""
    counts = counts or param_counts(cfg)
    device = device or device_for()
    b = torch.finfo(compute_dtype(cfg.train.precision, device)).bits // 8
    s, W = cfg.zero.stage, world_size
    P, E = counts.online, counts.encoder

    def shard(n: float, sharded: bool) -> int:
        return int(n / W) if sharded else int(n)

    return MemoryEstimate(weights=shard(P * b, s == 3), gradients=shard(P * b, s >= 2),
                          optimizer=shard(P * 12, s >= 1), target=shard(E * b, s == 3),
                          ema=shard(E * 4, s >= 1), activations=activation_bytes(cfg, cfg.data.batch_size, b),
                          build=(P + 2 * E) * 4 if device.type == "cpu" else 0, runtime=RUNTIME_BYTES)


def local_ranks() -> int:
    """Ranks sharing this node, as the launcher says (torchrun, deepspeed, SLURM, Open MPI); else 1."""
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                "OMPI_COMM_WORLD_LOCAL_SIZE"):
        digits = os.environ.get(var, "").split("(")[0].split(",")[0]  # SLURM writes e.g. "4(x2),2"
        if digits.isdigit() and int(digits) > 0:
            return int(digits)
    return 1


def _meminfo_available() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_available() -> Optional[int]:
    """Room left under a cgroup v2 (memory.max - memory.current) or v1 memory limit, if any."""
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_f).read_text().strip()
            usage = int(Path(usage_f).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            return max(int(limit) - usage, 0)
    return None


def available_bytes(device: torch.device, n_local: int) -> tuple[Optional[int], str]:
    """(bytes one rank may use, how it was found); None when unknown."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return total, f"total memory of {torch.cuda.get_device_name(device)} ({device})"
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not found:
        return None, "unknown"
    avail = min(found)
    return avail // n_local, f"available host memory {_gib(avail)} / {n_local} local rank(s)"


def agreed_available_bytes(device: torch.device, n_local: int) -> tuple[Optional[int], str]:
    """`available_bytes` of the rank with the least (None if any rank's is unknown), the same on every
    rank: collective when a process group of several ranks is up, else this rank's own. Choices made
    from it (`activation_checkpointing: auto`) must agree, or ZeRO-3's recompute gathers mismatch."""
    mine = available_bytes(device, n_local)
    rank, world = rank_and_world()
    if world == 1:
        return mine
    views: list = [None] * world
    dist.all_gather_object(views, mine)
    if any(avail is None for avail, _ in views):
        return None, "unknown on some rank"
    r = min(range(world), key=lambda i: views[i][0])
    return views[r][0], f"{views[r][1]}, the least of {world} ranks (rank {r})"


def check_memory(cfg: Config, world_size: int) -> Optional[MemoryEstimate]:
    """Refuse (ConfigError) a batch-resolved config whose per-rank estimate exceeds this device's
    memory; returns the estimate (None when `train.memory_check` is off)."""
    if not cfg.train.memory_check:
        return None
    env = dist_env()
    device = device_for(env)
    est = estimate_memory(cfg, world_size, device)
    avail, how = available_bytes(device, local_ranks())
    if avail is None or est.total <= avail:
        return est
    todo = [f"lower data.global_batch_size (now {cfg.data.global_batch_size}; data.batch_size "
            f"{cfg.data.batch_size} per rank) or raise optim.grad_accum"]
    if cfg.model.checkpoint_fraction < 1.0:
        todo.append("set model.activation_checkpointing: true (or auto)")
    if cfg.zero.stage < 3:
        todo.append(f"raise zero.stage (now {cfg.zero.stage}) to 3")
    todo.append(f"pick a smaller model.size (now {cfg.model.size})")
    todo.append("run on more ranks / devices")
    raise ConfigError(
        f"memory preflight: this config needs about {_gib(est.total)} per rank ({est.describe()}; "
        f"{cfg.data.batch_size} clips per rank, zero.stage={cfg.zero.stage} over {world_size} rank(s), "
        f"activation_checkpointing={cfg.model.activation_checkpointing}) but {device.type} has {_gib(avail)} "
        f"({how}). To fit: {'; '.join(todo)}. train.memory_check: false skips this check.")


AUTO_FIT = 0.85  # `activation_checkpointing: auto` fills at most this share of the device (the estimate is rough)


def resolve_checkpointing(cfg: Config, world_size: int,
                          device: Optional[torch.device] = None) -> tuple[Config, Optional[str]]:
    """`model.activation_checkpointing: auto` on a batch-resolved config -> (a copy with the fraction the
    preflight picks, a note saying what and why); any other value: (cfg, None) unchanged.

    Recomputing a block costs its forward again, so the fastest setting that fits is the fewest
    checkpointed blocks: the smallest k/depth (k = 0..depth encoder blocks; the predictor takes the
    same share) whose `estimate_memory` stays within AUTO_FIT of the device's memory
    (`available_bytes`). Every block when nothing smaller fits or the memory is unknown.
    """
    if cfg.model.activation_checkpointing != "auto":
        return cfg, None
    device = device or device_for()
    avail, how = agreed_available_bytes(device, local_ranks())
    depth = resolve_vit_size(cfg.model).depth
    counts = param_counts(cfg)
    out = copy.deepcopy(cfg)
    for k in range(depth + 1):
        out.model.activation_checkpointing = k / depth
        est = estimate_memory(out, world_size, device, counts)
        if avail is not None and est.total <= AUTO_FIT * avail:
            break
    else:
        out.model.activation_checkpointing = 1.0
    frac = out.model.activation_checkpointing
    if avail is None:
        why = "device memory unknown"
    elif est.total <= AUTO_FIT * avail:
        why = f"estimate {_gib(est.total)} within {AUTO_FIT:.0%} of {_gib(avail)}: {how}"
    else:
        why = f"even that needs about {_gib(est.total)}, over {AUTO_FIT:.0%} of {_gib(avail)}: {how}"
    return out, (f"model.activation_checkpointing: auto -> {frac:g} ({round(frac * depth)} of {depth} encoder "
                 f"blocks, {round(frac * cfg.model.pred_depth)} of {cfg.model.pred_depth} predictor blocks "
                 f"recomputed; {why})")


def _gib(n: float) -> str:
    """Bytes as GiB; under 0.01 GiB as MiB, so a small component does not read 0.00 GiB."""
    return f"{n / GiB:.2f} GiB" if n >= 0.01 * GiB else f"{n / 1024 ** 2:.1f} MiB"
