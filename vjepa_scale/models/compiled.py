"""Regional `torch.compile` (`model.compile: true`): each transformer block compiled on its own, with
packed variable-length attention as one opaque custom op (`vjepa::packed_attention`).

Why an op: the attention backends (flash-attn, `varlen_attn`, nested jagged tensors, padded SDPA)
branch on host-side lengths and build nested or padded layouts, which either break the graph or
guard on the lengths (a recompile whenever they change). Behind the op, the compiled graph sees one
call with a (total, heads, head_dim) output; total tokens and `max_seqlen` are dynamic, so steps with
other mask lengths reuse the compiled code. The op's backward recomputes the attention forward with
autograd and differentiates it (exact; it costs one more attention forward per layer, which the
eager path does not pay). Outside compiled code `packed_attention_op` calls the backend directly.

Blocks are compiled in place (`nn.Module.compile`): parameter names, state dicts, DeepSpeed's
module hooks and activation checkpointing see the same modules as without compile.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from vjepa_scale.attention import Packed, packed_attention


@torch.library.custom_op("vjepa::packed_attention", mutates_args=())
def _packed_attention(q_THD: torch.Tensor, k_THD: torch.Tensor, v_THD: torch.Tensor, cu_seqlens: torch.Tensor,
                      offsets: torch.Tensor, max_seqlen: int, backend: str, sdpa: str) -> torch.Tensor:
    with torch.no_grad():
        o = packed_attention(q_THD, k_THD, v_THD, Packed(cu_seqlens, max_seqlen, None, offsets), backend, sdpa)
    return o.clone() if o._base is not None else o  # a custom op's output may not alias anything


@_packed_attention.register_fake
def _(q_THD, k_THD, v_THD, cu_seqlens, offsets, max_seqlen, backend, sdpa):
    return torch.empty_like(q_THD)


@contextlib.contextmanager
def _autograd_inside_op():
    """Autograd inside a custom op's kernel: the dispatcher excludes the autograd keys below the op's
    own autograd layer; include them again (and grad mode) for the recompute."""
    K = torch._C.DispatchKey
    with torch._C._SetExcludeDispatchKeyGuard(K.AutogradFunctionality, False), \
            torch._C._SetExcludeDispatchKeyGuard(K.ADInplaceOrView, False), torch.enable_grad():
        yield


@torch.library.custom_op("vjepa::packed_attention_backward", mutates_args=())
def _packed_attention_backward(grad_THD: torch.Tensor, q_THD: torch.Tensor, k_THD: torch.Tensor,
                               v_THD: torch.Tensor, cu_seqlens: torch.Tensor, offsets: torch.Tensor,
                               max_seqlen: int, backend: str, sdpa: str) -> list[torch.Tensor]:
    with _autograd_inside_op():
        q, k, v = (x.detach().requires_grad_() for x in (q_THD, k_THD, v_THD))
        o = packed_attention(q, k, v, Packed(cu_seqlens, max_seqlen, None, offsets), backend, sdpa)
        return list(torch.autograd.grad(o, (q, k, v), grad_THD))


@_packed_attention_backward.register_fake
def _(grad_THD, q_THD, k_THD, v_THD, cu_seqlens, offsets, max_seqlen, backend, sdpa):
    return [torch.empty_like(q_THD), torch.empty_like(k_THD), torch.empty_like(v_THD)]


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, offsets, max_seqlen, backend, sdpa = inputs
    ctx.save_for_backward(q, k, v, cu_seqlens, offsets)
    ctx.args = (max_seqlen, backend, sdpa)


def _backward(ctx, grad_THD):
    q, k, v, cu_seqlens, offsets = ctx.saved_tensors
    dq, dk, dv = _packed_attention_backward(grad_THD.contiguous(), q, k, v, cu_seqlens, offsets, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


_packed_attention.register_autograd(_backward, setup_context=_setup_context)


def packed_attention_op(q_THD: torch.Tensor, k_THD: torch.Tensor, v_THD: torch.Tensor, packed: Packed,
                        backend: str, sdpa: str = "auto") -> torch.Tensor:
    """`attention.packed_attention`, as the opaque op when traced by torch.compile."""
    if torch.compiler.is_compiling():
        return _packed_attention(q_THD, k_THD, v_THD, packed.cu_seqlens, packed.offsets, packed.max_seqlen,
                                 backend, sdpa)
    return packed_attention(q_THD, k_THD, v_THD, packed, backend, sdpa)


def is_compiled(module: nn.Module) -> bool:
    """Whether any submodule of `module` was compiled in place."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())
