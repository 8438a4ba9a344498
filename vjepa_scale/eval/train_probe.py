"""Train one attentive probe on frozen features; report top-1 with views averaged.

The features come from a `ProbeData`: kept in memory (`eval.features.FeatureSet`) or encoded on the fly
(`eval.stream.StreamedFeatures`); both give the same batches for the same seed.

Training samples are (video, view) pairs; a video's prediction averages the softmax over its views.
AdamW with linear warmup then cosine decay, stepped per iteration. Under torch.distributed each rank
trains on its own feature shard inside DDP and accuracy counts are summed over ranks. The reported
accuracy is the one after the last epoch (no selection on the validation split). An epoch's train
loss / top-1 count each (video, view) sample once (`train_samples`), not the repeats that fill its last
batches.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from vjepa_scale.data.skips import NoReadableVideosError
from vjepa_scale.distributed import rank_and_world
from vjepa_scale.eval.config import ProbeConfig, ProbeOptimConfig
from vjepa_scale.eval.features import ProbeData
from vjepa_scale.eval.probe import AttentiveProbe
from vjepa_scale.train import preempt
from vjepa_scale.train.metrics import is_terminal
from vjepa_scale.schedules import warmup_cosine


def probe_lr(it: int, total: int, warmup: int, start_lr: float, lr: float, final_lr: float) -> float:
    """Linear warmup start_lr -> lr over `warmup` iterations, then cosine lr -> final_lr at `total`."""
    return warmup_cosine(it, warmup, total, start_lr, lr, final_lr)


def _sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if rank_and_world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(probe: torch.nn.Module, data: ProbeData, device: torch.device, dtype: torch.dtype,
             chunk: int = 64) -> dict:
    """Top-1 over videos (softmax averaged over views) and mean loss, summed over ranks."""
    probe.eval()
    correct = loss = count = 0.0
    for x_MVND, y in data.videos(device, chunk):
        M, V = x_MVND.shape[:2]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = probe(x_MVND.flatten(0, 1)).float()
        prob_MC = logits.softmax(-1).view(M, V, logits.shape[-1]).mean(1)
        correct += (prob_MC.argmax(-1) == y).sum().item()
        loss += F.nll_loss(prob_MC.clamp_min(1e-12).log(), y, reduction="sum").item()
        count += M
    correct, loss, count = _sum([correct, loss, count], device)
    if not count:  # streamed features: every val video unusable on every rank
        raise NoReadableVideosError("val features: no val video could be read on any rank")
    return {"top1": 100.0 * correct / count, "loss": loss / count, "count": int(count)}


def train_probe(train: ProbeData, val: ProbeData, probe_cfg: ProbeConfig, optim_cfg: ProbeOptimConfig,
                num_classes: int, encoder_heads: int, seed: int, device: torch.device,
                dtype: torch.dtype = torch.float32, writer=None, tag: str = "", progress: bool = True,
                save: Optional[Callable[..., Path]] = None, resume: Optional[dict] = None) -> dict:
    """Train a fresh probe (initialized from `seed`) and return its final val top-1 and history.

    With `save` (every rank calls it; it returns where the state went): after every epoch `save(state)`, and
    after the step at which the ranks agree on a stop request (`train.preempt`) `save(state, reason)`, then
    `Preempted`. `resume`: such a state to continue from (each rank's sample order is replayed from the seed, so
    the run goes on as if it had not stopped)."""
    rank, world = rank_and_world()
    D = train.dim
    torch.manual_seed(seed)
    probe = AttentiveProbe(probe_cfg, D, num_classes, encoder_heads).to(device)
    model = probe
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(probe, device_ids=[device.index] if device.type == "cuda" else None)
    decay = [p for n, p in probe.named_parameters() if p.ndim > 1 and "query" not in n]
    no_decay = [p for n, p in probe.named_parameters() if not (p.ndim > 1 and "query" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": optim_cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=optim_cfg.lr, betas=tuple(optim_cfg.betas))

    local = len(train) * train.num_views  # (video, view) samples, id video * num_views + view
    total_samples, empty = _sum([float(local), float(local == 0)], device)  # the same on every rank
    if empty:  # raised by every rank (none waits in a collective)
        raise ValueError(f"probe {tag}: {int(empty)} of {world} ranks hold no training sample ({int(total_samples)} "
                         f"(video, view) samples in all; e.g. all of a rank's train videos were unusable)")
    per_rank = optim_cfg.batch_size // world  # a multiple of world (`run_eval` checks)
    steps_per_epoch = max(1, math.ceil(total_samples / (per_rank * world)))
    total = steps_per_epoch * optim_cfg.epochs
    warmup = int(round(optim_cfg.warmup_epochs * steps_per_epoch))
    start_lr = optim_cfg.lr if optim_cfg.start_lr is None else optim_cfg.start_lr

    g = torch.Generator().manual_seed(seed * 1000 + rank)
    history, it, start_epoch, start_step, partial = [], 0, 0, 0, [0.0, 0.0, 0.0]
    if resume is not None:
        probe.load_state_dict(resume["probe"])
        opt.load_state_dict(resume["optimizer"])
        history, it, start_epoch, start_step = list(resume["history"]), resume["it"], resume["epoch"], resume["step"]
        if rank == 0:  # the epoch's metrics so far, summed over ranks: counted once
            partial = list(resume["partial"])

    def state(epoch: int, step: int, sums: list[float]) -> dict:
        return {"seed": seed, "epoch": epoch, "step": step, "it": it, "history": history, "partial": sums,
                "probe": {k: v.detach().cpu() for k, v in probe.state_dict().items()},
                "optimizer": opt.state_dict()}

    lines = progress and rank == 0 and not is_terminal(sys.stderr)  # a log file (SLURM): a line per epoch
    bar = tqdm(total=total, initial=it, desc=f"probe {tag}".strip(), disable=not progress or rank != 0 or lines,
               leave=False)
    t0 = time.monotonic()
    for epoch in range(optim_cfg.epochs):
        order = torch.cat([torch.randperm(local, generator=g)  # drawn for every epoch: a resume replays them
                           for _ in range(math.ceil(steps_per_epoch * per_rank / local))])
        if epoch < start_epoch:
            continue
        model.train()
        first_step = start_step if epoch == start_epoch else 0
        run_loss, run_correct, run_seen = partial if epoch == start_epoch else (0.0, 0.0, 0.0)
        lr = probe_lr(max(it - 1, 0), total, warmup, start_lr, optim_cfg.lr, optim_cfg.final_lr)
        sels = [order[s * per_rank:(s + 1) * per_rank] for s in range(steps_per_epoch)]
        for s, (x, y, kept) in enumerate(train.batches(sels[first_step:], device, epoch), start=first_step):
            # `order` repeats samples after its first `local` positions (to fill the epoch's last batches):
            # the train metrics count each sample once per epoch
            first = (torch.arange(s * per_rank, s * per_rank + len(kept)) < local).to(device)[kept]
            lr = probe_lr(it, total, warmup, start_lr, optim_cfg.lr, optim_cfg.final_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            empty = x is None  # streamed: every video of this batch unusable; a zero-gradient step
            if empty:  # (the ranks' gradient all-reduce still needs this rank's)
                x = torch.zeros(1, 1, D, device=device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(x).float()
            loss = logits.sum() * 0.0 if empty else F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not empty:
                with torch.no_grad():
                    run_loss += F.cross_entropy(logits[first], y[first], reduction="sum").item()
                    run_correct += (logits.argmax(-1) == y)[first].sum().item()
                    run_seen += first.sum().item()
            it += 1
            bar.update(1)
            reason = preempt.stop_agreed(device) if save is not None else None
            if reason:
                where = save(state(epoch, s + 1, _sum([run_loss, run_correct, run_seen], device)), reason)
                bar.close()
                raise preempt.Preempted(it, where, reason)
        run_loss, run_correct, seen = _sum([run_loss, run_correct, run_seen], device)
        if not seen:
            raise NoReadableVideosError(f"probe {tag}".strip() + ": no train video could be read on any rank")
        val_metrics = evaluate(probe, val, device, dtype)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": run_loss / seen, "train_top1": 100.0 * run_correct / seen,
               "train_samples": int(seen), "val_loss": val_metrics["loss"], "val_top1": val_metrics["top1"]}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row['val_top1']:.1f}")
        if lines:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} probe {tag} epoch {epoch + 1}/{optim_cfg.epochs} (step {it}/"
                  f"{total}, {tqdm.format_interval(time.monotonic() - t0)}): train loss {row['train_loss']:.4f} "
                  f"top-1 {row['train_top1']:.1f}, val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.1f}",
                  flush=True)
        if writer is not None and rank == 0:
            for k in ("train_loss", "train_top1", "val_loss", "val_top1", "lr"):
                writer.add_scalar(f"{tag}/{k}" if tag else k, row[k], epoch + 1)
        if save is not None:
            save(state(epoch + 1, 0, [0.0, 0.0, 0.0]))
    bar.close()
    if start_epoch == optim_cfg.epochs:  # resumed after its last epoch: the final probe's val metrics again
        val_metrics = evaluate(probe, val, device, dtype)
    return {"seed": seed, "val_top1": history[-1]["val_top1"], "val_loss": history[-1]["val_loss"],
            "train_top1": history[-1]["train_top1"], "num_val_videos": val_metrics["count"],
            "steps": total, "history": history, "probe_params": sum(p.numel() for p in probe.parameters())}
