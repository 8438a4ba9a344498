"""Training-step suite: full V-JEPA steps of a config on one device, synthetic clips, no DeepSpeed.

One step = target encoder forward on the full clips + LayerNorm gather at the targets, packed
context encoder + predictor forward/backward, grad-norm clip, fused AdamW, and the EMA update of
the target from the fp32 online weights (the fused kernel on CUDA). bf16 autocast on CUDA with
fp32 weights (the single-device analogue of DeepSpeed's bf16 mode); fp32 on CPU. Masks are drawn
by the config's `MultiBlockMasker` before timing (in training they come from the data workers).
Reports clips/s, tokens/s (input patch tokens), achieved model TFLOP/s and MFU from
`vjepa_scale.flops`, with the FLOP breakdown of the measured batch.
"""
from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch

from vjepa_scale.bench.common import sync
from vjepa_scale.config import load_config, resolve_config_path
from vjepa_scale.flops import device_peak_tflops, train_flops
from vjepa_scale.kernels import ema_update_
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.models.jepa import JEPA, compute_targets, make_target_encoder

DEFAULTS = {"cpu": ("cpu_demo", 4), "cuda": ("vith384", 10)}


def run(device: str, quick: bool, config: Optional[str] = None, batch_size: Optional[int] = None,
        steps: Optional[int] = None) -> list[dict]:
    kind = torch.device(device).type
    name, default_batch = DEFAULTS.get(kind, DEFAULTS["cpu"])
    name = config or name
    cfg = load_config(resolve_config_path(name), ["data.backend=synthetic"])
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
    if cuda:
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return [row]
