"""Training-step suite: full V-JEPA steps of a config through the trainer's step core, three rows.

Every row runs `vjepa_scale.train.step.StepCore` (the step `tools/train.py` runs) on the same clips
and mask draws (the config's synthetic data, moved to the device before timing):

- `engine`: the recipe as `tools/train.py` runs it: the Trainer's own engines (DeepSpeed, the
  recipe's ZeRO stage and precision: bf16 weights + fp32 masters on a GPU, fp32 on CPU) on a 1-rank
  process group, `ShardedEMA` with the fused `ema_update_`. The number users get.
- `torch`: a plain module on one device, fp32 weights + bf16 autocast (fp32 on CPU), fused AdamW,
  the same EMA kernel: the single-device analogue.
- `reference`: the reference implementation's schedule on the same batch: masks cut to the batch
  minimum (`mask.truncate=batch_min`), `padded` attention, one encoder and one predictor call per
  mask type, fp32 weights + bf16 autocast, torch AdamW, a per-parameter EMA loop.

Each row runs 2 warm-up steps (3 at full size: the first two see each micro-batch's shapes for the
first time), then reports the median time of the timed steps (`time_ms`; `time_ms_min`/`_max` give
their range; on CPU `cpu_time_ms` is the median process CPU time per step, which other jobs on a
shared machine disturb less) and, from the median wall time, clips/s, input tokens/s, trained
context tokens/s (context tokens the encoder trained on; the reference drops some), achieved model
TFLOP/s and MFU from `vjepa_scale.flops` (recompute excluded), `vs_reference` (clips/s over the
reference row's; `ctx_tokens_vs_reference` the same for context tokens/s, and on CPU
`cpu_vs_reference` / `ctx_tokens_cpu_vs_reference` the same per CPU second) and `first_loss` (the
loss of the first step). `opts` are config overrides (e.g. `model.activation_checkpointing=false`, `model.compile=true`);
`rows` picks rows; with `profile_dir`, two more steps of the first row run under `torch.profiler`
and `step_profile_<device>.txt` there gets the time per op category and the top ops.
On CPU, time the rows through `tools/bench.py`: it sets `OMP_WAIT_POLICY=PASSIVE` before torch loads
OpenMP. In a process that loaded torch without it, the rows timed before the engine row spin at
every parallel region's end and those after it do not (docs/PERF.md), so the order changes the numbers.
A recipe with `phases` is measured at one phase's clip shape (`phase`, default 0). The largest shape
the recipes train, V-JEPA 2's ViT-g cooldown at 384 px x 64 frames (18,432 tokens per clip), is the
case `config="vjepa2_vitg_cool384"` (`COOLDOWN_CASE`; GPU only).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import os
import re
import socket
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch

from vjepa_scale.bench.common import check_positive, sync
from vjepa_scale.config import Config, load_config, resolve_config_path
from vjepa_scale.data.batch import Batch
from vjepa_scale.flops import device_peak_tflops, train_flops
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.models.jepa import JEPA, make_target_encoder

DEFAULTS = {"cpu": ("cpu_demo", 4), "cuda": ("vith384", 10)}
ROWS = ("engine", "torch", "reference")
# V-JEPA 2's cooldown shape: ViT-g, 384 px x 64 frames, 6 clips per GPU as the reference's 512-GPU anneal.
COOLDOWN_CASE = {"config": "vjepa2_vitg_cool384", "batch_size": 6}


def run(device: str, quick: bool, config: Optional[str] = None, batch_size: Optional[int] = None,
        steps: Optional[int] = None, opts: Optional[list[str]] = None,
        profile_dir: Optional[str] = None, rows: Optional[list[str]] = None,
        phase: Optional[int] = None, on_row: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """The suite's rows; a row that raises becomes a FAILED row (with the error) and the next row runs.
    `on_row` is called with each row as it is done (before the `vs_reference` ratios)."""
    kind = torch.device(device).type
    check_positive("step", batch_size=batch_size, steps=steps)
    name, B, cfg = bench_config(device, config, batch_size, opts, phase)
    steps = steps or (3 if quick else 10)
    warmup = 2 if quick else 3  # the first two steps see each micro-batch's shapes for the first time
    rows = list(rows or ROWS)
    for r in rows:
        if r not in ROWS:
            raise ValueError(f"step suite: unknown row '{r}' (choose from {', '.join(ROWS)})")
    batches = _batches(cfg, B)
    out, profiled = [], profile_dir is None
    for which in rows:
        build = {"engine": _engine_row, "torch": _torch_row, "reference": _reference_row}[which]
        left = torch.cuda.memory_allocated() if kind == "cuda" else 0  # what earlier rows left behind
        try:
            with build(cfg, device, batches) as (impl, step_fn, masks):
                row = _time(cfg, name, B, device, impl, step_fn, masks, warmup, steps)
                if not profiled:
                    row["profile"] = str(profile_step(step_fn, device, Path(profile_dir), f"{row['case']} {impl}"))
                    profiled = True
        except Exception as e:  # the other rows still run (a backend that fails on one row's path)
            traceback.print_exc()
            row = {"case": "FAILED", "impl": which, "error": f"{type(e).__name__}: {e}"[:300]}
        if "peak_mem_gib" in row and left:  # this row's own peak
            row["peak_mem_gib"] -= left / 2 ** 30
            row["mem_left_by_earlier_rows_gib"] = left / 2 ** 30
        row["row"] = which
        if opts:
            row["overrides"] = " ".join(opts)
        out.append(row)
        if on_row is not None:
            on_row(row)
        gc.collect()
        if kind == "cuda":
            torch.cuda.empty_cache()
    ref = next((r for r in out if r["row"] == "reference" and "clips_per_s" in r), None)
    if ref is not None:
        for r in out:
            if "clips_per_s" in r:
                r["vs_reference"] = r["clips_per_s"] / ref["clips_per_s"]
                r["ctx_tokens_vs_reference"] = r["ctx_tokens_per_s"] / ref["ctx_tokens_per_s"]
                if "cpu_time_ms" in r and "cpu_time_ms" in ref:  # clips (context tokens) per CPU second
                    r["cpu_vs_reference"] = ref["cpu_time_ms"] / r["cpu_time_ms"]
                    r["ctx_tokens_cpu_vs_reference"] = (r["cpu_vs_reference"] * r["ctx_tokens_per_clip"]
                                                        / ref["ctx_tokens_per_clip"])
    return out


def bench_config(device: str, config: Optional[str] = None, batch_size: Optional[int] = None,
                 opts: Optional[list[str]] = None, phase: Optional[int] = None) -> tuple[str, int, Config]:
    """(case name, clips per step, config) of the suite: the recipe (default per device type) with
    synthetic data, random weights (a recipe's `train.init_from` dropped), B clips per step on one
    rank, no accumulation, no disk or memory pre-checks; a
    recipe with `phases` at phase `phase`'s clip shape (default 0). `activation_checkpointing: auto`
    is resolved for this batch and device as training resolves it."""
    from vjepa_scale.train.phases import resolve_batch
    from vjepa_scale.train.memory import resolve_checkpointing

    name, default_batch = DEFAULTS.get(torch.device(device).type, DEFAULTS["cpu"])
    name = config or name
    cfg = load_config(resolve_config_path(name), [
        "data.backend=synthetic", "data.num_workers=0", "optim.grad_accum=1", "train.check_free_disk=false",
        "train.memory_check=false", "train.init_from=null", "train.init_from_optimizer=false",  # random weights
        *(opts or [])])
    if cfg.phases or phase:
        shapes = cfg.phase_configs()
        if not 0 <= (phase or 0) < len(shapes):
            raise ValueError(f"phase {phase}: {name} has {len(shapes)} phase(s)")
        cfg = shapes[phase or 0]
        name = f"{name} phase {phase or 0}"
    B = batch_size or (default_batch if config is None else cfg.data.batch_size or default_batch)
    cfg.data.batch_size, cfg.data.global_batch_size = B, None
    cfg, note = resolve_checkpointing(resolve_batch(cfg, 1), 1, torch.device(device))
    if note:
        print(f"[bench] step: {note}", flush=True)
    return name, B, cfg


def _batches(cfg: Config, B: int) -> list[Batch]:
    """Two micro-batches of the config's synthetic data (the clips and masks training would see at
    micro-steps 0 and 1 on rank 0)."""
    from vjepa_scale.data import build_dataloader

    return list(build_dataloader(cfg, 0, 1, start_step=0, num_steps=2))


def _time(cfg: Config, name: str, B: int, device: str, impl: str, step_fn: Callable[[int], torch.Tensor],
          masks: list, warmup: int, steps: int) -> dict:
    """Run `step_fn(i)` (batch i % 2) warmup + steps times; the row of the timed steps: `time_ms` is
    the median of the timed steps' times (CUDA events between steps issued back to back, as in
    training; `perf_counter` per step on CPU), `time_ms_min`/`time_ms_max` their range; on CPU also
    `cpu_time_ms`, the median process CPU time (all threads) per step."""
    cuda = torch.device(device).type == "cuda"
    first = step_fn(0)
    first_loss = float(first)
    for i in range(1, warmup):
        step_fn(i)
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        events[0].record()
        for i in range(steps):
            loss = step_fn(i)
            events[i + 1].record()
        float(loss)
        sync(device)
        times = [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])]
    else:
        times, cpu = [], []
        for i in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            float(step_fn(i))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    dt = statistics.median(times)
    used = [masks[i % 2] for i in range(steps)]
    flops = sum(train_flops(cfg, m)["total"] for m in used) / steps
    ctx = sum(sum(m.ctx_lengths) for m in used) / steps
    target_fwd = sum(train_flops(cfg, m)["target_fwd"] for m in used) / steps
    peak = device_peak_tflops(device)
    n_tok = cfg.grid[0] * cfg.grid[1] * cfg.grid[2]
    row = {
        "case": f"train step {name} B={B} grid={'x'.join(map(str, cfg.grid))}"
                f"{_ckpt_label(cfg.model.checkpoint_fraction)}"
                f"{' +compile' if cfg.model.compile else ''}",
        "impl": impl,
        "time_ms": dt * 1e3,
        "time_ms_min": min(times) * 1e3,
        "time_ms_max": max(times) * 1e3,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "clips_per_s": B / dt,
        "tokens_per_s": B * n_tok / dt,
        "ctx_tokens_per_s": ctx / dt,
        "model_tflops": flops / dt / 1e12,
        "mfu": (flops / dt / 1e12 / peak) if peak else None,
        "tflop_per_clip": flops / B / 1e12,  # these three: over the timed steps' batches, as the rates
        "target_fwd_share": target_fwd / flops,
        "ctx_tokens_per_clip": ctx / B,
        "first_loss": first_loss,
        "act_ckpt": cfg.model.checkpoint_fraction,  # share of blocks recomputed (auto resolved)
    }
    if cuda:
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    else:  # the CPU time of the process per step (all threads), less sensitive to other jobs than wall time
        row["cpu_time_ms"] = statistics.median(cpu) * 1e3
    return row


def _ckpt_label(fraction: float) -> str:
    return "" if fraction == 0 else " +act-ckpt" if fraction == 1 else f" +act-ckpt {fraction:g}"


def _on_device(batches: list[Batch], device: str, dtype: Optional[torch.dtype]) -> list[Batch]:
    return [b.to(device, dtype) for b in batches]


@contextlib.contextmanager
def _engine_row(cfg: Config, device: str, batches: list[Batch]):
    """The Trainer's engines on a 1-rank process group, stepped by `Trainer.train_step`."""
    from vjepa_scale.train.engine import Trainer

    env = one_rank_group(device)
    with tempfile.TemporaryDirectory(prefix="bench_step_") as run_dir:
        tr = Trainer(cfg, run_dir, env=env)
        on = _on_device(batches, tr.device, tr.dtype)
        z = cfg.zero.stage
        prec = "bf16 weights + fp32 master" if tr.dtype == torch.bfloat16 else "fp32"
        impl = f"engine: DeepSpeed ZeRO-{z}, 1 rank, {prec}"
        try:
            yield impl, (lambda i: tr.train_step([on[i % 2]])["loss"]), [b.masks for b in batches]
        finally:
            del tr, on


def torch_core(cfg: Config, device: str):
    """(the trainer's `StepCore` over a plain module on one device, its label): fp32 weights + bf16
    autocast on CUDA (fp32 on CPU), fused AdamW, the fused EMA (`ShardedEMA`, replicated layout)."""
    from vjepa_scale.train.ema import ShardedEMA
    from vjepa_scale.train.optim import make_optimizer
    from vjepa_scale.train.step import StepCore, TorchEngine

    cuda = torch.device(device).type == "cuda"
    jepa, target = _models(cfg, device, cuda)
    shadow = {n: p.detach().float().clone() for n, p in jepa.encoder.named_parameters()}
    ema = ShardedEMA(jepa.encoder, target, shadow, 0, 1)
    opt = make_optimizer(jepa, cfg.optim, fused=cuda)
    core = StepCore(TorchEngine(jepa, opt, cfg.optim.grad_clip), target, ema, device,
                    autocast=torch.bfloat16 if cuda else None)
    return core, "torch module, fp32 weights + bf16 autocast" if cuda else "torch module, fp32"


@contextlib.contextmanager
def _torch_row(cfg: Config, device: str, batches: list[Batch]):
    """A plain module on one device (`torch_core`)."""
    core, impl = torch_core(cfg, device)
    on = _on_device(batches, device, None)
    try:
        yield impl, (lambda i: core.train_step([on[i % 2]], 0.9996, i)), [b.masks for b in batches]
    finally:
        del core, on


class PerParamEMA:
    """The reference's EMA: a Python loop over parameters, target <- m * target + (1 - m) * online."""

    def __init__(self, online: torch.nn.Module, target: torch.nn.Module):
        self.pairs = list(zip(online.parameters(), target.parameters()))

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        for q, k in self.pairs:
            k.mul_(momentum).add_((1.0 - momentum) * q.detach())


def reference_config(cfg: Config) -> Config:
    """`cfg` as the reference runs it: masks cut to the batch minimum, padded attention."""
    ref = copy.deepcopy(cfg)
    ref.mask.truncate = "batch_min"
    ref.model.attention_backend = "padded"
    return ref.validate()


@contextlib.contextmanager
def _reference_row(cfg: Config, device: str, batches: list[Batch]):
    """The reference's schedule on the same clips and mask draws (then truncated to the batch min)."""
    from vjepa_scale.train.optim import make_optimizer
    from vjepa_scale.train.step import StepCore, TorchEngine

    cuda = torch.device(device).type == "cuda"
    ref = reference_config(cfg)
    masker = MultiBlockMasker(ref.mask, ref.grid)
    cut = [Batch(b.video, b.label, masker(len(b.label), b.step), b.step, b.index) for b in batches]
    jepa, target = _models(ref, device, False)  # the reference keeps an fp32 target under autocast
    opt = make_optimizer(jepa, ref.optim)
    core = StepCore(TorchEngine(jepa, opt, ref.optim.grad_clip), target, PerParamEMA(jepa.encoder, target), device,
                    autocast=torch.bfloat16 if cuda else None, global_norm=False, per_type=True)
    on = _on_device(cut, device, None)
    impl = ("reference-style: batch_min, padded, 2 passes, per-param EMA, "
            + ("fp32 weights + bf16 autocast" if cuda else "fp32"))
    try:
        yield impl, (lambda i: core.train_step([on[i % 2]], 0.9996, i)), [b.masks for b in cut]
    finally:
        del core, on, jepa, target, opt


def _models(cfg: Config, device: str, bf16_target: bool) -> tuple[JEPA, torch.nn.Module]:
    torch.manual_seed(cfg.train.seed)
    with torch.device(device):  # initialise on the device: a ViT-H init on the host takes long
        jepa = JEPA(cfg)
    target = make_target_encoder(jepa.encoder)
    if bf16_target:
        target = target.to(dtype=torch.bfloat16)
    return jepa, target


def one_rank_group(device: str):
    """This process as a 1-rank training group (gloo on CPU, NCCL on CUDA) through the trainer's
    `join_process_group`; reused when already joined. Returns the `DistEnv`."""
    import torch.distributed as dist

    from vjepa_scale.train.launch import join_process_group

    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise RuntimeError("the step suite's engine row runs on one rank; launch tools/bench.py without a launcher")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    return join_process_group()


# Op categories of a step profile, first match wins (kernel names on CUDA, aten op names on CPU).
CATEGORIES = [
    ("attention", r"flash|fmha|attention|attn|sdpa|softmax"),
    ("conv (patch embed)", r"conv"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|cublas|sm\d+_|aten::(mm|bmm|addmm|linear|matmul)"),
    ("triton kernels", r"triton|_kernel$"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("norm", r"layer_norm|layernorm|norm"),
    ("copy / cast", r"copy|cast|convert|to_copy|contiguous|memcpy|memset|fill|cat|index|gather|scatter"),
    ("elementwise", r"elementwise|vectorized|unrolled|gelu|add|mul|div|reduce|sum"),
]


def categorize(name: str) -> str:
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def profile_step(step_fn, device: str, out_dir: Path, title: str, steps: int = 2) -> Path:
    """Profile `steps` calls of `step_fn(i)`; write device time per category and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for i in range(steps):
            step_fn(i)
        sync(device)
    rows = []  # (name, total us per step, calls per step): kernels on CUDA, leaf CPU ops (self time) on CPU
    for e in prof.key_averages():
        if cuda:
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        else:
            t = e.self_cpu_time_total
        if t > 0:
            rows.append((e.key, t / steps, e.count / steps))
    total = sum(t for _, t, _ in rows) or 1.0
    by_cat: dict[str, float] = {}
    for n, t, _ in rows:
        cat = categorize(n)
        by_cat[cat] = by_cat.get(cat, 0.0) + t
    what = "GPU kernel time" if cuda else "CPU op self time"
    lines = [f"# step profile: {title}", "", f"{what} per step: {total / 1e3:.2f} ms (mean of {steps} steps)", "",
             "| category | ms per step | share |", "|---|---|---|"]
    lines += [f"| {c} | {t / 1e3:.2f} | {100 * t / total:.1f}% |" for c, t in sorted(by_cat.items(), key=lambda x: -x[1])]
    lines += ["", "| op | category | ms per step | share | calls per step |", "|---|---|---|---|---|"]
    for n, t, c in sorted(rows, key=lambda x: -x[1])[:30]:
        short = n if len(n) <= 90 else n[:87] + "..."
        lines.append(f"| `{short}` | {categorize(n)} | {t / 1e3:.3f} | {100 * t / total:.1f}% | {c:g} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"step_profile_{torch.device(device).type}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
