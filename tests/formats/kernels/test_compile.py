"""The kernels compile for a Hopper GPU (sm_90) without one: Triton's front end, LLVM and ptxas run on the
CPU. With the launch options of `fused`, the PTX must use IEEE division and square root and contain no fused
multiply-add, because the torch reference rounds every product and quotient on its own (see `triton_ops`)."""

from __future__ import annotations

import re

import pytest
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cslaws.formats.kernels import fused, interpreting
from cslaws.formats.kernels import triton_ops as ops

pytestmark = pytest.mark.skipif(interpreting(), reason="the kernels are interpreted in this process")

TARGET = GPUTarget("cuda", 90, 32)
BASE = dict(
    SEG=1024,
    BLOCK=1024,
    ROWS=4,
    PACK=8,
    GROUP=1024,
    GROUP_LEN=1024,
    SQRT_N=32.0,
    LOG_H=7,
    NORM=128**-0.5,
    ROT_IN=False,
    ROT_OUT=False,
    KIND=ops.INT_MIDRISE.value,
    STAT=ops.STAT_RMS.value,
    MULT=0.3,
    HALF=8.0,
    MBITS=1,
    EMIN=0,
    EMAX=2,
    MAXV=6.0,
    BACKWARD=ops.BW_TRUST.value,
    TRUST=0.5,
    CLIP_MULT=8.0,
    OUTER_ROW=False,
    SPARSE=ops.SP_NONE.value,
    NM_N=0,
    NM_M=1,
    SPARSE_BW=ops.SB_STE.value,
    TP_FACTOR=0.0,
    NEED_MASK=True,
)
CASES = {
    "int4-rms-hadamard-bf16": dict(ROT_IN=True, ROT_OUT=True),
    "int3-midtread-tensor-clipped": dict(
        KIND=ops.INT_MIDTREAD.value, STAT=ops.STAT_GIVEN.value, HALF=3.0, BACKWARD=ops.BW_CLIPPED.value
    ),
    "fp8-row": dict(KIND=ops.FP.value, STAT=ops.STAT_ABSMAX.value, MBITS=3, EMIN=-6, EMAX=8, MAXV=448.0),
    "mxfp4": dict(KIND=ops.MX.value, STAT=ops.STAT_ABSMAX.value, GROUP=32, GROUP_LEN=32),
    "nvfp4": dict(KIND=ops.NVFP4.value, STAT=ops.STAT_ABSMAX.value, GROUP=16, GROUP_LEN=16),
    "nvfp4-outer-row": dict(KIND=ops.NVFP4.value, STAT=ops.STAT_ABSMAX.value, GROUP=16, GROUP_LEN=16, OUTER_ROW=True),
    "2:4-rbbm": dict(SPARSE=ops.SP_NM.value, NM_N=2, NM_M=4, SPARSE_BW=ops.SB_RBBM.value, TP_FACTOR=0.5),
    "row-topk": dict(SPARSE=ops.SP_THRESHOLD.value, SPARSE_BW=ops.SB_FORWARD.value),
    "given-keep-fp32": dict(SPARSE=ops.SP_GIVEN.value, STAT=ops.STAT_ABSMAX.value),
}


def compile_ptx(fn, pointers: dict[str, str], constants: dict) -> str:
    signature = {a: pointers.get(a, "constexpr") for a in fn.arg_names}
    kernel = triton.compile(
        ASTSource(fn, signature, constexprs=constants),
        target=TARGET,
        options={"num_warps": 8, **fused.COMPILE_OPTIONS},
    )
    assert kernel.asm["cubin"]  # ptxas accepted it
    return kernel.asm["ptx"]


def assert_ieee(ptx: str) -> None:
    assert not re.search(r"\bfma\.", ptx), "a multiply-add was contracted into an FMA"
    assert not re.search(r"\bdiv\.(full|approx)", ptx), "an approximate division"
    assert not re.search(r"\bsqrt\.approx", ptx), "an approximate square root"


@pytest.mark.parametrize("name", list(CASES))
def test_forward_kernel_compiles_for_sm90(name):
    dtype = "fp32" if "fp32" in name else "bf16"
    pointers = {
        "x_ptr": f"*{dtype}",
        "q_ptr": f"*{dtype}",
        "bits_ptr": "*u8",
        "keep_ptr": "*u8",
        "given_ptr": "*fp32",
        "thr_ptr": "*fp32",
        "need_ptr": "*i32",
        "n_seg": "i32",
    }
    ptx = compile_ptx(ops.quantize_fwd_kernel, pointers, {**BASE, **CASES[name]})
    assert_ieee(ptx)
    assert "div.rn.f32" in ptx


def test_backward_and_fwht_kernels_compile_for_sm90():
    ptx = compile_ptx(
        ops.masked_bwd_kernel,
        {"g_ptr": "*bf16", "out_ptr": "*bf16", "bits_ptr": "*u8", "n_seg": "i32"},
        dict(SEG=1024, BLOCK=1024, ROWS=4, PACK=8, LOG_H=7, NORM=128**-0.5, ROT_IN=True, ROT_OUT=True),
    )
    assert_ieee(ptx)
    ptx = compile_ptx(
        ops.fwht_kernel,
        {"x_ptr": "*fp32", "y_ptr": "*fp32", "n_seg": "i32"},
        dict(SEG=96, BLOCK=128, ROWS=16, LOG_H=5, NORM=32**-0.5),
    )
    assert_ieee(ptx)
