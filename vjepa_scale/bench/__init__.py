"""Microbenchmark suites behind `python tools/bench.py`.

A suite is a module `vjepa_scale.bench.<name>` exposing `run(device: str, quick: bool) -> list[dict]`
(`quick` = small sizes, used for `--device cpu`). Each returned row is one measurement:

    suite     str    suite name (filled in by `run_suite` when missing)
    case      str    what was measured, e.g. "fwd B=10 N=4608 D=1280 bf16"
    impl      str    implementation, e.g. "triton", "torch_baseline"
    time_ms   float  median time per call
  optional:
    gbps      float  bytes moved / time (GB/s, 1e9)
    copy_frac float  gbps / the device's measured copy bandwidth
    speedup   float  baseline time / this time (baseline = the reference's torch code)
    any other key    reported as-is (e.g. clips_per_s, tokens_per_s, mfu, note)

Suites are imported lazily, so one whose dependencies are missing does not break the others.
A suite may take extra keyword options (e.g. `step` takes `config`, `batch_size`, `steps`);
`run_suite` passes only the options its `run` accepts.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

SUITES: dict[str, str] = {
    "gather": "vjepa_scale.bench.gather",
    "ema": "vjepa_scale.bench.ema",
    "attention": "vjepa_scale.bench.attention",
    "step": "vjepa_scale.bench.step",
    "data": "vjepa_scale.bench.data",
    "mixed": "vjepa_scale.bench.mixed",
}


def get_suite(name: str) -> Callable[[str, bool], list[dict]]:
    """The `run` function of suite `name`; raises ValueError naming the known suites."""
    if name not in SUITES:
        raise ValueError(f"unknown bench suite '{name}' (choose from {', '.join(SUITES)})")
    return importlib.import_module(SUITES[name]).run


def run_suite(name: str, device: str, quick: bool, **options) -> list[dict]:
    """Run one suite (with the `options` its `run` accepts) and tag its rows with the suite name."""
    fn = get_suite(name)
    params = inspect.signature(fn).parameters
    rows = fn(device, quick, **{k: v for k, v in options.items() if k in params and v is not None})
    for r in rows:
        r.setdefault("suite", name)
    return rows
