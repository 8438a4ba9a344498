"""Training-step suite: full V-JEPA steps of a config on one device, synthetic clips, no DeepSpeed.

One step = target encoder forward on the full clips + LayerNorm gather at the targets, packed
context encoder + predictor forward/backward, grad-norm clip, fused AdamW, and the EMA update of
the target from the fp32 online weights (the fused kernel on CUDA). bf16 autocast on CUDA with
fp32 weights (the single-device analogue of DeepSpeed's bf16 mode); fp32 on CPU. Masks are drawn
by the config's `MultiBlockMasker` before timing (in training they come from the data workers).
Reports clips/s, tokens/s (input patch tokens), achieved model TFLOP/s and MFU from
`vjepa_scale.flops`, with the FLOP breakdown of the measured batch. `opts` are config overrides
(e.g. `model.activation_checkpointing=false`); with `profile_dir`, two more steps run under
`torch.profiler` and `step_profile_<device>.txt` there gets the time per op category and the top ops.
A recipe with `phases` is measured at one phase's clip shape (`phase`, default 0). The largest shape
the recipes train, V-JEPA 2's ViT-g cooldown at 384 px x 64 frames (18,432 tokens per clip), is the
case `config="vjepa2_vitg_cool384"` (`COOLDOWN_CASE`; GPU only).
"""
from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Optional

import torch

from vjepa_scale.bench.common import sync
from vjepa_scale.config import load_config, resolve_config_path
from vjepa_scale.flops import device_peak_tflops, train_flops
from vjepa_scale.kernels import ema_update_
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.models.jepa import JEPA, compute_targets, make_target_encoder

DEFAULTS = {"cpu": ("cpu_demo", 4), "cuda": ("vith384", 10)}
# V-JEPA 2's cooldown shape: ViT-g, 384 px x 64 frames, 6 clips per GPU as the reference's 512-GPU anneal.
COOLDOWN_CASE = {"config": "vjepa2_vitg_cool384", "batch_size": 6}


def run(device: str, quick: bool, config: Optional[str] = None, batch_size: Optional[int] = None,
        steps: Optional[int] = None, opts: Optional[list[str]] = None,
        profile_dir: Optional[str] = None, phase: Optional[int] = None) -> list[dict]:
    kind = torch.device(device).type
    name, default_batch = DEFAULTS.get(kind, DEFAULTS["cpu"])
    name = config or name
    cfg = load_config(resolve_config_path(name), ["data.backend=synthetic", *(opts or [])])
    if cfg.phases or phase:
        shapes = cfg.phase_configs()
        if not 0 <= (phase or 0) < len(shapes):
            raise ValueError(f"phase {phase}: {name} has {len(shapes)} phase(s)")
        cfg = shapes[phase or 0]
        name = f"{name} phase {phase or 0}"
    B = batch_size or (default_batch if config is None else cfg.data.batch_size)
    steps = steps or (3 if quick else 10)
    warmup = 1 if quick else 3
    cuda = kind == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a ViT-H init on the host takes long
        jepa = JEPA(cfg)
    jepa = jepa.to(device)
    target = make_target_encoder(jepa.encoder).to(device, torch.bfloat16 if cuda else torch.float32)
    shadows = [p.detach().float().reshape(-1).clone() for p in jepa.encoder.parameters()]
    masters = [p.detach().reshape(-1) for p in jepa.encoder.parameters()]
    targets = [p.detach().reshape(-1) for p in target.parameters()]
    opt = torch.optim.AdamW(jepa.parameters(), lr=1e-4, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                            weight_decay=0.04, fused=cuda)
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    batches = [masker(B, step=s).to(device) for s in range(2)]
    T, H, W = cfg.data.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size
    video = torch.randn(B, 3, T, H, W, device=device)

    def step(masks):
        with amp:
            with torch.no_grad():
                tgt = compute_targets(target, video, masks)
            loss = jepa(video, masks, tgt)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(jepa.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update_(shadows, masters, targets, 0.9996)
        return loss

    for i in range(warmup):
        step(batches[i % 2])
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % 2])
    loss.item()
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    flops = sum(train_flops(cfg, m)["total"] for m in (batches[i % 2] for i in range(steps))) / steps
    fl = train_flops(cfg, batches[0])
    peak = device_peak_tflops(device)
    n_tok = cfg.grid[0] * cfg.grid[1] * cfg.grid[2]
    row = {
        "case": f"train step {name} B={B} grid={'x'.join(map(str, cfg.grid))} "
                f"{'bf16 autocast' if cuda else 'fp32'}{' +act-ckpt' if cfg.model.activation_checkpointing else ''}",
        "impl": "torch (single device)",
        "time_ms": dt * 1e3,
        "clips_per_s": B / dt,
        "tokens_per_s": B * n_tok / dt,
        "model_tflops": flops / dt / 1e12,
        "mfu": (flops / dt / 1e12 / peak) if peak else None,
        "tflop_per_clip": fl["total"] / B / 1e12,
        "target_fwd_share": fl["target_fwd"] / fl["total"],
        "ctx_tokens_per_clip": sum(batches[0].ctx_lengths) / B,
    }
    if opts:
        row["overrides"] = " ".join(opts)
    if cuda:
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    if profile_dir is not None:
        row["profile"] = str(profile_step(lambda i: step(batches[i % 2]), device, Path(profile_dir), row["case"]))
    return [row]


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
