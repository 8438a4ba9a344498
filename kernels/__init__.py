"""Fused kernels (installed as `vjepa_scale.kernels`), each beside its pure-torch reference.

- `gather`: masked token gather fused with the position-embedding add, and LayerNorm+gather
  for the targets.
- `ema`: multi-tensor EMA update of the target weights from fp32 master shards.

Each kernel has one dispatch function (`backend="auto" | "triton" | "torch"`, resolved by
`backend.use_triton`) choosing Triton on CUDA and torch elsewhere. The Triton implementations and
their autograd wrappers live in `gather_triton.py` / `ema_triton.py` and are imported only when
chosen, so this package works without triton. Tests run them on CPU with `TRITON_INTERPRET=1`.
"""
from vjepa_scale.kernels.ema import ema_update_
from vjepa_scale.kernels.gather import layernorm_gather, masked_gather

__all__ = ["masked_gather", "layernorm_gather", "ema_update_"]
