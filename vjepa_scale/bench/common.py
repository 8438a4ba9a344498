"""Timing helpers shared by the bench suites: median wall time per call, measured copy bandwidth."""
from __future__ import annotations

import functools
import statistics
import time
from typing import Callable, Optional

import torch


def check_positive(suite: str, **counts: Optional[int]) -> None:
    """ValueError naming the option when a given count (clips per batch, timed steps) is not > 0."""
    for key, v in counts.items():
        if v is not None and v <= 0:
            raise ValueError(f"{suite} suite: {key} must be > 0, got {v}")


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, warmup: int = 3, iters: int = 10) -> float:
    """Median milliseconds per call of `fn` (CUDA events on GPU, perf_counter on CPU).

    On a GPU the calls are issued back to back with one synchronisation at the end, as in a
    training step: while the GPU runs call i the host prepares call i+1, so each pair of events
    brackets the device time of one call, plus any host time the device had to wait for (what
    remains when the host is slower than the kernels, e.g. tiny launches).
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    if torch.device(device).type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@functools.cache
def copy_gbps(device: str) -> float:
    """Measured device copy bandwidth in GB/s (read + write bytes of a large `copy_`)."""
    cuda = torch.device(device).type == "cuda"
    n = (1 << 28) if cuda else (1 << 24)  # 1 GiB / 64 MiB of fp32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=3, iters=10 if cuda else 5)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def rate_rows(case: str, times: dict[str, float], nbytes: Optional[float], device: str,
              baseline: Optional[str], **extra) -> list[dict]:
    """Rows for one case: time, GB/s of the useful bytes, share of copy bandwidth, speed-up."""
    rows = []
    bw = copy_gbps(device) if nbytes else None
    for impl, ms in times.items():
        r = {"case": case, "impl": impl, "time_ms": ms}
        if nbytes:
            r["gbps"] = nbytes / (ms * 1e-3) / 1e9
            r["copy_frac"] = r["gbps"] / bw
        if baseline and baseline in times:
            r["speedup"] = times[baseline] / ms
        r.update(extra)
        rows.append(r)
    return rows


def triton_runs_on(device: str) -> bool:
    """Whether the Triton kernels can run on `device` here (CUDA + triton, or the interpreter)."""
    from vjepa_scale.kernels.backend import interpreting, triton_available

    return triton_available() and (torch.device(device).type == "cuda" or interpreting())
