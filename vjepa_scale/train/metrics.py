"""Run observability: metrics.jsonl, tensorboard scalars, a rank-0 tqdm progress bar (or lines), the step
metrics of a log window (`StepWindow`: loss, throughput, MFU, data wait over all ranks), the banner before
the first step (`run_banner`) and the end-of-run summary (`RunTotals`). Every key, its unit and kind:
docs/METRICS.md.

metrics.jsonl is strict JSON: an inf/NaN metric is written as null and named in `"nonfinite"`.
File loaders add their skip counts to every record (`data_skipped`, `data_skipped_<kind>`,
`data_bad_share`, and `data_padded`: samples of videos shorter than one clip, last frame repeated; see
`vjepa_scale.data.skips.SkipTracker.metrics`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vjepa_scale.flops import mfu

GiB = 1024 ** 3


def _truncate_records(path: Path, last_step: int) -> None:
    """Keep the records of steps <= `last_step`; a line that does not parse (the record a killed run
    was writing) is dropped with a warning. Rewritten through a temporary file, so a crash here
    leaves the old file whole."""
    keep, torn = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            torn += 1
            continue
        if step <= last_step:
            keep.append(line)
    if torn:
        logging.getLogger("vjepa_scale.train").warning(
            "%s: dropped %d line(s) that are not whole records (a run stopped while writing)", path, torn)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


class RunLogger:
    """Rank 0 writes `metrics.jsonl` (one JSON object per logged step) and tensorboard events under
    `tb/`, and draws a progress bar on stderr when stderr is a terminal; otherwise (a batch job's log
    file), or with `progress_bar=False`, it prints a timestamped line per logged step with the elapsed
    time and the ETA. While the bar is drawn, `logging` output goes through tqdm (above the bar, not
    into it). Other ranks construct it disabled and every call is a no-op."""

    def __init__(self, run_dir: str | Path, enabled: bool, total_steps: int, start_step: int = 0,
                 progress_bar: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._redirect = contextlib.ExitStack()
        self._total = total_steps
        self._start = time.monotonic()
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        if path.is_file():  # a resumed run: drop records of steps it is about to redo
            _truncate_records(path, start_step)
        self._jsonl = open(path, "a", buffering=1)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1)
        if progress_bar and is_terminal(sys.stderr):
            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                             dynamic_ncols=True, smoothing=0.1)
            self._redirect.enter_context(logging_redirect_tqdm())  # warnings of data, checkpoints ...

    def log(self, step: int, metrics: dict) -> None:
        """One record: non-finite values become null, their keys listed under "nonfinite" (strict
        JSON); floats are written to 9 significant digits (`0.04`, not `0.03999999999999998`), `time`
        (unix seconds) to the millisecond. Tensorboard gets the finite scalars unrounded and
        `train/nonfinite_keys`, the number of keys listed under "nonfinite" (0: all finite)."""
        if not self.enabled:
            return
        values = {k: _plain(v) for k, v in metrics.items()}
        nonfinite = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
        record = {"step": step, **{k: None if k in nonfinite else _rounded(v) for k, v in values.items()}}
        if nonfinite:
            record["nonfinite"] = nonfinite
        record["time"] = round(time.time(), 3)
        if self._jsonl is None:  # stopped by a failed write (`_stop_writing`)
            return
        try:
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in nonfinite:
                    self._tb.add_scalar(f"train/{k}", v, step)
            self._tb.add_scalar("train/nonfinite_keys", float(len(nonfinite)), step)
        except OSError as e:
            self._stop_writing(e)

    def _stop_writing(self, error: OSError) -> None:
        """A metrics or tensorboard write failed (a full disk): say so once and stop writing them; the
        run goes on (its next checkpoint save on a full disk ends it cleanly, naming the last good one)."""
        self.write(f"warning: writing metrics failed ({error}); metrics.jsonl and tensorboard logging stop for "
                   f"this run, training goes on")
        for f in (self._jsonl, self._tb):
            try:
                f.close()
            except Exception:  # noqa: BLE001 - the same full disk: nothing more to save there
                pass
        self._jsonl = self._tb = None

    def progress(self, step: int, postfix: Optional[dict] = None, eta_s: Optional[float] = None) -> None:
        """Move the bar to `step` (tqdm computes its ETA) and show `postfix`; without a bar, print one
        line: time of day, step, elapsed time, ETA (`eta_s`, the metrics' phase-aware one) and `postfix`."""
        if self._bar is None:
            if self.enabled and postfix:
                elapsed = tqdm.format_interval(time.monotonic() - self._start)
                eta = "?" if eta_s is None or not math.isfinite(eta_s) else tqdm.format_interval(eta_s)
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} step {step}/{self._total} elapsed {elapsed} eta {eta}: "
                      + "  ".join(f"{k} {v}" for k, v in postfix.items()), flush=True)
            return
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def write(self, msg: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        self._redirect.close()
        if self._bar is not None:
            self._bar.close()
        for f in (self._tb, self._jsonl):
            try:
                if f is not None:
                    f.close()
            except OSError as e:  # the last events or lines could not be written (a full disk)
                print(f"warning: closing the metrics logs failed ({e})", file=sys.stderr, flush=True)
        self._tb = self._jsonl = None
        self.enabled = False


def progress_postfix(m: dict) -> dict:
    """The few numbers worth a glance: loss, LR, clips/s, tokens/s, the slowest rank's data-wait share,
    MFU; the run's skipped (non-finite) steps and unusable data files so far when there are any."""
    out = {"loss": f"{m['loss']:.4f}", "lr": f"{m['lr']:.2e}", "clips/s": f"{m['clips_per_s']:.1f}",
           "tok/s": _si(m["tokens_per_s"]), "wait_max": f"{100 * m.get('data_wait_max', m['data_wait']):.0f}%"}
    if m.get("mfu") is not None:
        out["mfu"] = f"{100 * m['mfu']:.1f}%"
    if m.get("skipped_steps"):
        out["bad_steps"] = m["skipped_steps"]  # steps whose update the divergence guard skipped
    if m.get("data_skipped"):
        out["data_skipped"] = m["data_skipped"]  # unusable files replaced so far (all ranks)
    return out


def _si(x: float) -> str:
    """3 significant digits with an SI prefix: 266, 1.56k, 2.3M."""
    for prefix in ("", "k", "M", "G"):
        if abs(x) < 999.5:
            return f"{x:.3g}{prefix}"
        x /= 1000
    return f"{x:.3g}T"


def is_terminal(stream) -> bool:
    """Whether `stream` is a terminal (a progress bar), not a log file."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class RunTotals:
    """This invocation's logged windows, summed for the end-of-run summary (`lines`)."""

    def __init__(self):
        self.steps, self.time, self.clips, self.mfu_time, self.mfu_known = 0, 0.0, 0.0, 0.0, True
        self.first: Optional[tuple[int, float]] = None  # (step, loss) of the first and last record
        self.last: Optional[tuple[int, float]] = None
        self.record: dict = {}

    def add(self, step: int, m: dict) -> None:
        """A record's metrics (`StepWindow.summary` and the trainer's keys)."""
        t = m["step_time"] * m["window_steps"]
        self.steps += m["window_steps"]
        self.time += t
        self.clips += m["clips_per_s"] * t  # the window's global clips
        self.mfu_known = self.mfu_known and m.get("mfu") is not None
        self.mfu_time += (m.get("mfu") or 0.0) * t
        self.first = self.first or (step, m["loss"])
        self.last, self.record = (step, m["loss"]), m

    def lines(self, steps: tuple[int, int], wall_s: float, setup_s: float, checkpoint) -> list[str]:
        """The summary of a finished run: steps (first, last) trained by this invocation, its wall time
        (`setup_s` of it before the first step), throughput, loss, skips and the final checkpoint."""
        fmt = tqdm.format_interval
        out = [f"run summary: steps {steps[0]}-{steps[1]} ({steps[1] - steps[0] + 1} trained) in {fmt(wall_s)} wall "
               f"(setup {fmt(setup_s)})"]
        if self.steps:
            mfu_text = f"MFU {100 * self.mfu_time / self.time:.1f}%" if self.mfu_known else "MFU off"
            out += [f"  {self.clips / self.time:.1f} clips/s mean over the steps' time, {mfu_text}",
                    f"  loss {self.first[1]:.4f} at step {self.first[0]} -> {self.last[1]:.4f} at step {self.last[0]}",
                    f"  skipped: {self.record.get('skipped_steps', 0)} non-finite step(s), "
                    f"{self.record.get('data_skipped', 0)} unusable data file(s) (run totals)"]
        return out + [f"  final checkpoint: {checkpoint}"]


def run_banner(phases: list, phase, world: int, device: torch.device, dtype: torch.dtype,
               peak_tflops: Optional[float]) -> list[str]:
    """Rank 0's description of the run before its first step: the model and its parameter count, the
    clip and mask types, ranks, ZeRO stage, precision and batch of `phase` (the phase the run starts in),
    the attention and kernel backends, activation checkpointing, the memory estimate (when
    `train.memory_check` computes one), whether MFU is logged, and each phase (`Phase.describe`)."""
    from vjepa_scale.attention import describe_attention_backend
    from vjepa_scale.config import resolve_vit_size
    from vjepa_scale.kernels.backend import describe_auto_backend
    from vjepa_scale.train.memory import available_bytes, estimate_memory, local_ranks, param_counts

    cfg = phase.cfg
    m, d, dims = cfg.model, cfg.data, resolve_vit_size(cfg.model)
    counts = param_counts(cfg)
    enc, pred = counts.encoder, counts.online - counts.encoder
    masks = ", ".join(f"{t.num_blocks} block(s) (area {_span(t.spatial_scale)}, time {_span(t.temporal_scale)})"
                      for t in cfg.mask.types)
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    a = cfg.optim.grad_accum
    batch = (f"token budget {d.tokens_per_batch} per rank (a window of {d.batch_size} stream positions) x {a} grad "
             f"accum x {world} rank(s)" if d.tokens_per_batch is not None else
             f"{d.batch_size} clip(s) per rank x {a} grad accum x {world} rank(s) = {d.global_batch_size} per step")
    frac = m.checkpoint_fraction
    lines = [
        f"model: ViT {m.size} (width {dims.width}, depth {dims.depth}, {dims.num_heads} heads, patch {m.patch_size}, "
        f"tubelet {m.tubelet_size}), predictor width {m.pred_width}, depth {m.pred_depth}; trained parameters "
        f"{_count(enc)} encoder + {_count(pred)} predictor = {_count(enc + pred)} (the EMA target: {_count(enc)} more)",
        f"clip: {d.frames_per_clip} frames x {d.crop_size} px = {phase.tokens_per_clip} tokens; {len(cfg.mask.types)} "
        f"mask type(s): {masks}",
        f"ranks: {world} on {device.type}, ZeRO stage {cfg.zero.stage}, precision {precision} (train.precision: "
        f"{cfg.train.precision}); batch: {batch}",
        f"attention: {describe_attention_backend(m.attention_backend, device, dtype)}; kernels: "
        f"{describe_auto_backend(device)}",
        f"activation checkpointing: {round(frac * dims.depth)} of {dims.depth} encoder and "
        f"{round(frac * m.pred_depth)} of {m.pred_depth} predictor blocks recomputed",
    ]
    if cfg.train.memory_check:
        est = estimate_memory(cfg, world, device, counts)
        avail, how = available_bytes(device, local_ranks())
        lines.append(f"memory estimate: {est.total / GiB:.2f} GiB per rank ({est.describe()})"
                     + (f"; the device has {avail / GiB:.2f} GiB ({how})" if avail is not None else ""))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    if peak_tflops is None:
        lines.append(f"MFU: off (no known bf16 peak for {name}; set train.device_peak_tflops to log it)")
    else:
        source = "train.device_peak_tflops" if cfg.train.device_peak_tflops is not None else name
        lines.append(f"MFU: on, against a {peak_tflops:g} TFLOP/s bf16 peak ({source})")
    return lines + [p.describe() for p in phases]


def _count(n: int) -> str:
    """A parameter count: 297.4k, 632.0M, 1.01B."""
    return f"{n / 1e3:.1f}k" if n < 1e6 else f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


def _span(lo_hi) -> str:
    lo, hi = lo_hi
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v


def _rounded(v):
    """A float to 9 significant digits (metrics.jsonl: a float32 reads back exactly, without float64 noise
    such as 0.03999999999999998); anything else as it is."""
    return float(f"{v:.9g}") if isinstance(v, float) else v


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run's metrics.jsonl, in step order (for tests and analysis)."""
    path = Path(run_dir) / "metrics.jsonl"
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def peak_memory_gib(device: torch.device) -> Optional[float]:
    """The most memory torch's allocator had allocated on a CUDA `device` since `reset_peak_memory`, in GiB;
    None on other devices (a CPU run logs no `mem_peak_gib`: the process's peak RSS would count far
    more than the training tensors, and could not be reset per window)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / GiB


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class StepWindow:
    """Accumulates per-step loss and timings between two log points; `summary` reduces over ranks.

    Fixed per window (a window never spans a phase boundary): the device of the all-reduce, the world
    size and this rank, the global batch (clips per optimizer step), tokens per clip, and the device's
    peak TFLOP/s (None: no MFU). `variable`: clips and tokens per step vary (mixed shapes, a token
    budget); clips/s and tokens/s then come from the clips and full-clip tokens the ranks actually
    trained, and the window logs the mean global batch in clips (`clips_per_step`). With `num_datasets`
    > 1 (a mixture of index files) it logs `data_share_<i>`: the share of the clips trained in the
    window (all ranks) that dataset i gave, to compare with the weights.

    Data wait: each step's `wait` is this rank's own time to load its batch, measured before the ranks
    agree that every one of them has its batch (`data.agree_loaded`, a collective). A rank that loaded
    quickly then waits inside that agreement for the slowest one; that wait is part of its step time,
    not of its data wait. So `data_wait` (the ranks' mean share of the step spent loading) dilutes one
    starved rank by the world size, while `data_wait_max`, the largest share of its own step time that
    one rank spent loading (that rank: `data_wait_max_rank`), is about the share of the step every rank
    lost to data: watch that one.
    """

    def __init__(self, device: torch.device, world: int, global_batch: int, tokens_per_clip: int,
                 peak_tflops: Optional[float], variable: bool = False, num_datasets: int = 0,
                 rank: Optional[int] = None):
        if rank is None:  # this process's rank in the default group (0 without one)
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.device, self.world, self.rank = device, world, rank
        self.global_batch, self.tokens_per_clip, self.peak_tflops = global_batch, tokens_per_clip, peak_tflops
        self.variable = variable
        self.dataset_clips = [0] * num_datasets if num_datasets > 1 else []  # a mixture: clips trained per dataset
        self.clips = 0
        self.tokens = 0
        self.losses: list[torch.Tensor] = []
        self.type_losses: list[torch.Tensor] = []
        self.target_stds: list[torch.Tensor] = []
        self.wait = 0.0
        self.time = 0.0
        self.flops = 0.0
        reset_peak_memory(device)

    def add(self, loss: torch.Tensor, wait: float, step_time: float, flops: float, clips: int = 0,
            tokens: int = 0, dataset_clips: Optional[list[int]] = None, loss_types: Optional[torch.Tensor] = None,
            target_std: Optional[torch.Tensor] = None) -> None:
        """One step; `dataset_clips`: this rank's clips of the step per dataset (a mixture); `loss_types`
        and `target_std`: the step's (`Trainer.train_step` stats), logged when given for every step."""
        if self.dataset_clips and dataset_clips:
            self.dataset_clips = [a + b for a, b in zip(self.dataset_clips, dataset_clips)]
        self.clips += clips
        self.tokens += tokens
        self.losses.append(loss)
        if loss_types is not None:
            self.type_losses.append(loss_types)
        if target_std is not None:
            self.target_stds.append(target_std)
        self.wait += wait
        self.time += step_time
        self.flops += flops

    def summary(self, stats: dict, steps_left: float, grad_norm: Optional[float]) -> dict:
        """Metrics of the window: `stats` of its last step, `steps_left` (in steps of this window's
        cost) for the ETA. Means over the ranks and the window's steps (`window_steps` of them), but
        for `data_wait_max` and `mem_peak_gib` (the largest rank's)."""
        n, W = len(self.losses), self.world
        mem = peak_memory_gib(self.device)
        waits, times, mems = [0.0] * W, [0.0] * W, [0.0] * W  # this rank's in its own slot: the sum gathers them
        waits[self.rank], times[self.rank], mems[self.rank] = self.wait, self.time, mem or 0.0
        parts = {"sums": [float(torch.stack(self.losses).sum()), self.flops, self.wait, self.time, self.clips,
                          self.tokens],
                 "types": torch.stack(self.type_losses).sum(0).tolist() if len(self.type_losses) == n else [],
                 "std": [float(torch.stack(self.target_stds).sum())] if len(self.target_stds) == n else [],
                 "datasets": self.dataset_clips, "waits": waits, "times": times, "mems": mems}
        # One all-reduce per log point over ranks.
        v = torch.tensor([x for p in parts.values() for x in p], dtype=torch.float64, device=self.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(v)
        v = v.tolist()
        for k, p in parts.items():
            parts[k], v = v[:len(p)], v[len(p):]
        loss_sum, flops, wait, busy, clips, tokens = parts["sums"]
        types, std, per_dataset, waits = parts["types"], parts["std"], parts["datasets"], parts["waits"]
        step_time = busy / W / n  # mean over ranks
        clips_per_s = self.global_batch / step_time
        shares = [w / t if t > 0 else 0.0 for w, t in zip(waits, parts["times"])]  # each rank's own share
        slowest = max(range(W), key=shares.__getitem__)
        m = {"loss": loss_sum / (W * n), "lr": stats["lr"], "weight_decay": stats["weight_decay"],
             "ema_momentum": stats["momentum"], "step_time": step_time, "data_wait": wait / busy,
             "data_wait_max": shares[slowest], "data_wait_max_rank": slowest,
             "clips_per_s": clips_per_s, "tokens_per_s": clips_per_s * self.tokens_per_clip,
             "tflops_per_rank": flops / busy / 1e12, "mfu": mfu(flops / busy, self.peak_tflops),
             "eta_s": steps_left * step_time, "window_steps": n}
        m.update({f"loss_type{i}": x / (W * n) for i, x in enumerate(types)})
        if std:
            m["target_std"] = std[0] / (W * n)
        if mem is not None:
            m["mem_peak_gib"] = max(parts["mems"])
        if self.variable:
            m.update(clips_per_s=clips / n / step_time, tokens_per_s=tokens / n / step_time, clips_per_step=clips / n)
        if grad_norm is not None:
            m["grad_norm"] = float(grad_norm)
        if per_dataset and sum(per_dataset):  # the share of the window's trained clips each dataset gave
            m.update({f"data_share_{i}": c / sum(per_dataset) for i, c in enumerate(per_dataset)})
        return m
