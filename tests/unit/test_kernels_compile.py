"""Compile every Triton kernel for an H100 (sm_90) on this CPU machine, as the CUDA JIT would.

The interpreter runs kernels as Python, so it cannot see compile-time errors or code quality.
This goes through Triton's real frontend, MLIR passes and ptxas (shipped in the triton wheel),
with the divisibility-by-16 specialisation the JIT applies to aligned pointers and sizes, and
checks that the aligned full-size paths use 128-bit loads/stores (needed for copy bandwidth).
On a CUDA machine the kernels compile for real in test_kernels_triton.py, so this is skipped.
"""
import collections
import re

import pytest
import torch

from helpers import needs
from vjepa_scale.kernels.backend import interpreting

pytestmark = [needs("triton"), pytest.mark.skipif(interpreting() or torch.cuda.is_available(),
                                                 reason="no interpreter; on CUDA the real JIT is tested")]

DIV16 = [["tt.divisibility", 16]]


def _ptx_ops(fn, signature: dict, constexprs: dict, aligned_args: list[str]) -> collections.Counter:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(signature)
    attrs = {(names.index(a),): DIV16 for a in aligned_args}
    try:
        src = ASTSource(fn, signature, constexprs, attrs)
    except TypeError as e:  # a Triton whose ASTSource differs: not the toolchain this check targets
        pytest.skip(f"triton {triton.__version__} ASTSource API differs: {e}")
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    return collections.Counter(re.findall(r"(?:ld|st)\.global[\.\w:]*", kernel.asm["ptx"]))


def _vec(ops: collections.Counter, kind: str) -> int:
    return sum(c for op, c in ops.items() if op.startswith(kind) and ".v4." in op)


def test_gather_kernels_compile_vectorized():
    from vjepa_scale.kernels import gather_triton as G

    sig = {"x_ptr": "*bf16", "idx_ptr": "*i32", "pos_ptr": "*fp32", "out_ptr": "*bf16", "T": "i32", "N": "i32",
           "D": "i32", "sxb": "i32", "sxn": "i32", "sxd": "i32", "spn": "i32", "spd": "i32",
           "HAS_POS": "constexpr", "BLOCK_T": "constexpr", "BLOCK_D": "constexpr"}
    ops = _ptx_ops(G._gather_fwd_kernel, sig, {"HAS_POS": True, "BLOCK_T": 16, "BLOCK_D": 256, "sxd": 1, "spd": 1},
                   ["x_ptr", "idx_ptr", "pos_ptr", "out_ptr", "D", "sxb", "sxn", "spn"])
    assert _vec(ops, "ld") and _vec(ops, "st"), ops
    sig = {"g_ptr": "*bf16", "order_ptr": "*i64", "rowptr_ptr": "*i64", "gx_ptr": "*bf16", "R": "i32", "D": "i32",
           "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"}
    ops = _ptx_ops(G._gather_bwd_kernel, sig, {"BLOCK_R": 16, "BLOCK_D": 256},
                   ["g_ptr", "order_ptr", "rowptr_ptr", "gx_ptr", "D"])
    assert _vec(ops, "ld") and _vec(ops, "st"), ops
    common = {"N": "i32", "D": "i32", "shb": "i32", "shn": "i32", "shd": "i32", "eps": "fp32"}
    sig = {"h_ptr": "*bf16", "idx_ptr": "*i64", "out_ptr": "*bf16", "T": "i32", **common,
           "BLOCK_T": "constexpr", "BLOCK_D": "constexpr"}
    ops = _ptx_ops(G._ln_gather_fwd_kernel, sig, {"BLOCK_T": 2, "BLOCK_D": 2048, "shd": 1},
                   ["h_ptr", "idx_ptr", "out_ptr", "D", "shb", "shn"])
    assert _vec(ops, "ld") and _vec(ops, "st"), ops
    sig = {"g_ptr": "*bf16", "order_ptr": "*i64", "rowptr_ptr": "*i64", "h_ptr": "*bf16", "gh_ptr": "*bf16",
           "R": "i32", **common, "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"}
    ops = _ptx_ops(G._ln_gather_bwd_kernel, sig, {"BLOCK_R": 2, "BLOCK_D": 2048, "shd": 1},
                   ["g_ptr", "order_ptr", "rowptr_ptr", "h_ptr", "gh_ptr", "D", "shb", "shn"])
    assert ops["st.global.v4.b32"] or _vec(ops, "st"), ops


EMA_SIG = {"meta_ptr": "*i64", "work_ptr": "*i64", "w": "fp32", "MASTER": "constexpr", "TARGET": "constexpr",
           "WRITE_TARGET": "constexpr", "SMALL_W": "constexpr", "ALIGN_S": "constexpr", "ALIGN_M": "constexpr",
           "ALIGN_T": "constexpr", "CHUNK": "constexpr", "BLOCK": "constexpr"}


@pytest.mark.parametrize("align", [(True, True, True), (False, False, False), (True, False, False)])
def test_ema_kernel_vectorizes_the_aligned_pointers(align):
    import triton.language as tl

    from vjepa_scale.kernels import ema_triton as E

    const = {"MASTER": tl.float32, "TARGET": tl.bfloat16, "WRITE_TARGET": True, "SMALL_W": True,
             "ALIGN_S": align[0], "ALIGN_M": align[1], "ALIGN_T": align[2], "CHUNK": 8192, "BLOCK": 2048}
    ops = _ptx_ops(E._ema_kernel, EMA_SIG, const, ["meta_ptr", "work_ptr"])
    assert ops["st.global.b16"] or ops["st.global.v4.b32"], ops  # the bf16 target is written
    if all(align):  # shadow + master loads, shadow + target stores: all 128-bit on the full-chunk path
        assert _vec(ops, "ld") >= 2 and _vec(ops, "st") >= 2, ops
    elif not any(align):
        assert _vec(ops, "ld") == 0 and _vec(ops, "st") == 0, ops
    else:  # only the shadow is aligned: its accesses vectorize, the master's do not
        assert _vec(ops, "ld") >= 1 and _vec(ops, "st") >= 1 and ops["ld.global.b32"] > 0, ops


GATHER_SIGS = {
    "_gather_fwd_kernel": ({"x_ptr": "*bf16", "idx_ptr": "*i32", "pos_ptr": "*bf16", "out_ptr": "*bf16", "T": "i32",
                            "N": "i32", "D": "i32", "sxb": "i32", "sxn": "i32", "sxd": "i32", "spn": "i32", "spd": "i32",
                            "HAS_POS": "constexpr", "BLOCK_T": "constexpr", "BLOCK_D": "constexpr"},
                           False, {"HAS_POS": True, "sxd": 1, "spd": 1}),
    "_gather_bwd_kernel": ({"g_ptr": "*bf16", "order_ptr": "*i64", "rowptr_ptr": "*i64", "gx_ptr": "*bf16",
                            "R": "i32", "D": "i32", "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"}, False, {}),
    "_ln_gather_bwd_kernel": ({"g_ptr": "*bf16", "order_ptr": "*i64", "rowptr_ptr": "*i64", "h_ptr": "*bf16",
                               "gh_ptr": "*bf16", "R": "i32", "N": "i32", "D": "i32", "shb": "i32", "shn": "i32",
                               "shd": "i32", "eps": "fp32", "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"},
                              True, {"shd": 1}),
}


@pytest.mark.parametrize("kernel", list(GATHER_SIGS))
@pytest.mark.parametrize("D", [80, 96, 1280])
def test_gather_kernels_compile_at_model_widths(kernel, D):
    """The launchers' own tiles for widths divisible by 16 (the JIT specialises D and the strides).

    Triton 3.6 (torch 2.11's) failed on sm_90 for the backward kernels at D=80/96 (tiles 32x128)
    while the masked CSR load also carried the per-row mask; this compiles what the GPU would.
    """
    from vjepa_scale.kernels import gather_triton as G

    sig, full_row, const = GATHER_SIGS[kernel]
    block_r, block_d = G._tiles(4000, D, full_row)
    rows_name = "BLOCK_T" if "BLOCK_T" in sig else "BLOCK_R"
    aligned = [a for a in sig if a.endswith("_ptr") or a in ("D", "sxb", "sxn", "spn", "shb", "shn")]
    names = list(sig)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(getattr(G, kernel), sig, {**const, rows_name: block_r, "BLOCK_D": block_d},
                    {(names.index(a),): DIV16 for a in aligned})
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": G._warps(block_r, block_d)})
