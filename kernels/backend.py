"""Kernel backend choice shared by every dispatch function (`torch` reference or `triton`).

`auto` picks Triton when every tensor is on CUDA and triton imports, torch otherwise. `triton`
forces the Triton kernels: they need CUDA tensors, or CPU tensors with `TRITON_INTERPRET=1` set
before the kernels are first imported (the interpreter, used by the tests). Triton is imported only
when a Triton kernel is actually chosen, so this package works without it.
"""
from __future__ import annotations

import functools
import os

import torch

KERNEL_BACKENDS = ("auto", "triton", "torch")


@functools.cache
def triton_available() -> bool:
    """Whether `import triton` works (cached)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import
        return False
    return True


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def describe_auto_backend(device) -> str:
    """What `auto` runs for tensors on `device`, and why (the run's banner)."""
    if torch.device(device).type != "cuda":
        return f"torch (auto: Triton kernels run on CUDA, not {torch.device(device).type})"
    return "triton (auto)" if triton_available() else "torch (auto: triton is not installed)"


def use_triton(backend: str, tensors, op: str) -> bool:
    """Resolve `backend` for kernel `op` on `tensors`; True means run the Triton kernel."""
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"{op}: unknown kernel backend '{backend}' (choose from {', '.join(KERNEL_BACKENDS)})")
    if backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors if isinstance(t, torch.Tensor))
    if backend == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError(f"{op}: backend 'triton' requested but triton is not installed "
                           f"(pip install 'vjepa-scale[triton]')")
    if not on_cuda and not interpreting():
        raise RuntimeError(f"{op}: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                           f"the kernels are imported, to run them on CPU in the interpreter)")
    return True
