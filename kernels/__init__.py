"""Fused kernels (imported as `vjepa_scale.kernels`), each beside its pure-torch reference.

- `gather`: masked token gather fused with the position-embedding add, and LayerNorm+gather
  for the targets; `scatter_map` builds their backward's row map ahead (in the data workers).
- `ema`: multi-tensor EMA update of the target weights from fp32 master shards.

Each kernel has one dispatch function (`backend="auto" | "triton" | "torch"`, resolved by
`backend.use_triton`) choosing Triton on CUDA and torch elsewhere. The Triton implementations and
their autograd wrappers live in `gather_triton.py` / `ema_triton.py` and are imported only when
chosen, so this package works without triton. Tests run them on CPU with `TRITON_INTERPRET=1`.
Their GPU launch settings are explicit frozen dataclasses (`GatherLaunch`, `EmaLaunch`, defaults
tuned on an H100), passed as the dispatch functions' optional `launch` argument.

This folder is the top-level `kernels/` of the repository; `vjepa_scale/kernels` is a relative
symlink to it, so it imports as `vjepa_scale.kernels` from a checkout and from an install alike
(never as a top-level `kernels`, the name of an unrelated PyPI package).
"""
from vjepa_scale.kernels.ema import EmaLaunch, ema_update_
from vjepa_scale.kernels.gather import GatherLaunch, ScatterMap, layernorm_gather, masked_gather, scatter_map

__all__ = ["masked_gather", "layernorm_gather", "scatter_map", "ScatterMap", "ema_update_", "GatherLaunch",
           "EmaLaunch"]
