"""The fused quantize / Hadamard kernels against the torch formats, under Triton's interpreter.

Run by `test_interpreter.py` (a pytest subprocess with TRITON_INTERPRET=1; `python_files=kcheck_*.py`).
Each case builds the same format twice, `backend="torch"` and `backend="triton"`, and compares forward
values and input gradients on random inputs of awkward shapes: one row, rows that do not fill the last
register tile, more rows than one program holds (two programs, the last partial), a 3-D activation.

- Scales from absmax (FP, MX, NVFP4, INT absmax) with no rotation: bit-for-bit equal, float32 and bf16
  alike (the kernel does the same float32 operations; max is order-independent).
- Scales from an RMS and Hadamard rotations: the sums run in another order (a few float32 ulps), so a value
  within rounding error of a decision point (rounding boundary, mask edge) may go either way. The float64
  reference (`kernel_reference.at_boundary`) marks those values; every mismatch must be one of them and
  they must be rare. bf16: both sides round their float32 result to bf16, so an ulp-level float32
  difference moves a value by at most one bf16 ulp and a flipped decision by one grid step; the check is
  "within one grid step" everywhere.
"""

from __future__ import annotations

import math

import pytest
import torch
from kernel_reference import at_boundary, hadamard64, run, to_quantizer_basis

from cslaws.formats.fp import FP, MX, NVFP4
from cslaws.formats.hadamard import Hadamard, rotation_block
from cslaws.formats.int import Int, Ternary, int_step
from cslaws.formats.kernels import fused, interpreting
from cslaws.formats.lloydmax import LloydMax
from cslaws.formats.quant import group_view

if not interpreting():
    raise RuntimeError("kcheck_*.py run under TRITON_INTERPRET=1: use tests/formats/kernels/test_interpreter.py")

SHAPES = [(1, 256), (37, 96), (1100, 64), (2, 5, 128)]
DTYPES = [torch.float32, torch.bfloat16]

EXACT = {
    "int4-absmax-row-trust": (Int, dict(bits=4, scale="absmax", backward="trust")),
    "int3-midtread-absmax-g32-clipped": (
        Int,
        dict(bits=3, grid="midtread", scale="absmax", granularity="group", group_size=32, backward="clipped"),
    ),
    "int8-absmax-tensor-trust": (Int, dict(bits=8, scale="absmax", granularity="tensor", backward="trust", trust=0.3)),
    "int1-absmax-row-clipped": (Int, dict(bits=1, scale="absmax", backward="clipped")),
    "ternary-absmax-row-trust": (Ternary, dict(scale="absmax", backward="trust")),
    "fp8e4m3-row-trust": (FP, dict(element="e4m3", backward="trust")),
    "fp8e5m2-tensor-clipped": (FP, dict(element="e5m2", granularity="tensor", backward="clipped")),
    "fp6e3m2-g32-trust": (FP, dict(element="e3m2", granularity="group", group_size=32, backward="trust", trust=0.7)),
    "fp6e2m3-row-ste": (FP, dict(element="e2m3", backward="ste")),
    "fp4e2m1-g16-trust": (FP, dict(element="e2m1", granularity="group", group_size=16, backward="trust")),
    "mxfp4-trust": (MX, dict(element="e2m1", backward="trust")),
    "mxfp6-clipped": (MX, dict(element="e3m2", backward="clipped")),
    "mxfp8-trust": (MX, dict(element="e4m3", backward="trust")),
    "nvfp4-trust": (NVFP4, dict(backward="trust")),
    "nvfp4-clipped": (NVFP4, dict(backward="clipped")),
    "nvfp4-outer-row-trust": (NVFP4, dict(backward="trust", outer_scale="row")),
}

NEAR_BOUNDARY = {
    "int4-gaussian-row-trust": lambda b: Int(bits=4, backward="trust", backend=b),
    "int2-gaussian-g32-clipped": lambda b: Int(
        bits=2, granularity="group", group_size=32, backward="clipped", backend=b
    ),
    "int3-midtread-gaussian-tensor-trust": lambda b: Int(
        bits=3, grid="midtread", granularity="tensor", backward="trust", backend=b
    ),
    "ternary-gaussian-row-trust": lambda b: Ternary(backward="trust", backend=b),
    "had-full-int4-trust": lambda b: Hadamard(Int(bits=4, backward="trust"), variant="full", backend=b),
    "had-half-int4-trust": lambda b: Hadamard(Int(bits=4, backward="trust"), variant="half", backend=b),
    "had32-full-int8-g32-clipped": lambda b: Hadamard(
        Int(bits=8, granularity="group", group_size=32, backward="clipped"), block=32, backend=b
    ),
    "had-half-int2-tensor-trust": lambda b: Hadamard(
        Int(bits=2, granularity="tensor", backward="trust"), variant="half", backend=b
    ),
    "had-half-mxfp4-trust": lambda b: Hadamard(MX(element="e2m1", backward="trust"), variant="half", backend=b),
    "had-full-nvfp4-trust": lambda b: Hadamard(NVFP4(backward="trust"), backend=b),
    "had-half-nvfp4-outer-row-trust": lambda b: Hadamard(
        NVFP4(backward="trust", outer_scale="row"), variant="half", backend=b
    ),
    "had-full-fp8-row-trust": lambda b: Hadamard(FP(element="e4m3", backward="trust"), backend=b),
}


def sample(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Gaussian values with a few large outliers (they exercise clipping and saturation)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    x = x * torch.where(torch.rand(shape, generator=gen) < 0.02, 8.0, 1.0)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(EXACT))
def test_absmax_scales_bit_exact(name, shape, dtype):
    cls, kw = EXACT[name]
    if kw.get("granularity") == "group" and shape[-1] % kw["group_size"]:
        pytest.skip("group does not divide the row")
    x = sample(shape, dtype, seed=len(name) + shape[0])
    grad = torch.randn(shape).to(dtype)
    y_t, g_t = run(cls(**kw, backend="torch"), x, grad)
    y_k, g_k = run(cls(**kw, backend="triton"), x, grad)
    assert y_k.dtype == y_t.dtype == dtype
    assert torch.equal(y_k, y_t), f"{(y_k != y_t).sum()} values differ"
    assert torch.equal(g_k, g_t), f"{(g_k != g_t).sum()} gradients differ"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(NEAR_BOUNDARY))
def test_rms_and_rotation_equal_except_at_boundaries_fp32(name, shape):
    make = NEAR_BOUNDARY[name]
    ref, ker = make("torch"), make("triton")
    inner = ref.format if isinstance(ref, Hadamard) else ref
    if inner.granularity == "group" and shape[-1] % inner.group_size:
        pytest.skip("group does not divide the row")
    x = sample(shape, torch.float32, seed=len(name) * 7 + shape[0])
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    y_t, g_t = run(ref, x, grad)
    y_k, g_k = run(ker, x, grad)
    boundary = at_boundary(ref, x)
    assert boundary.sum() <= max(3, 1e-3 * x.numel()), f"{boundary.sum()} of {x.numel()} values at a boundary"
    for out_t, out_k, is_grad in ((y_t, y_k, False), (g_t, g_k, True)):
        a = to_quantizer_basis(ref, out_t, is_grad)
        b = to_quantizer_basis(ref, out_k, is_grad)
        scale = a.abs().amax(-1, keepdim=True)
        differ = (a - b).abs() > 1e-5 * a.abs() + 1e-6 * scale
        assert not (differ & ~boundary).any(), (
            f"{'gradients' if is_grad else 'values'} differ away from decision boundaries at "
            f"{(differ & ~boundary).nonzero()[:5].tolist()}"
        )


@pytest.mark.parametrize("shape", [(37, 96), (2, 5, 128)], ids=str)
@pytest.mark.parametrize("name", [n for n in NEAR_BOUNDARY if "int" in n or "ternary" in n])
def test_rms_and_rotation_within_one_step_bf16(name, shape):
    """bf16: within one grid step of the torch path everywhere (see the module docstring for why)."""
    make = NEAR_BOUNDARY[name]
    ref, ker = make("torch"), make("triton")
    inner = ref.format if isinstance(ref, Hadamard) else ref
    if inner.granularity == "group" and shape[-1] % inner.group_size:
        pytest.skip("group does not divide the row")
    x = sample(shape, torch.bfloat16, seed=len(name) + 5)
    grad = torch.randn(shape).to(torch.bfloat16)
    y_t, g_t = run(ref, x, grad)
    y_k, g_k = run(ker, x, grad)
    assert y_k.dtype == torch.bfloat16
    r = hadamard64(x, rotation_block(shape[-1], ref.block)) if isinstance(ref, Hadamard) else x.double()
    g = group_view(r, inner.granularity, inner.group_size)
    step = int_step(g, inner.levels, inner.scale).expand_as(g).reshape(r.shape)
    if isinstance(ref, Hadamard):  # one flipped rotated value moves each output of its block by step / sqrt(b)
        step = step.reshape(-1, shape[-1]).amax(-1, keepdim=True).expand(-1, shape[-1]).reshape(shape)
    assert ((y_k.double() - y_t.double()).abs() <= step * 1.001).all()
    # gradients: masks agree except where a value sits on a decision boundary
    differ = (to_quantizer_basis(ref, g_k, True) - to_quantizer_basis(ref, g_t, True)).abs() > 0.02 * grad.abs().amax()
    assert differ.sum() <= max(3, 1e-3 * x.numel())


def test_exact_ties():
    """Values exactly on rounding boundaries and mask edges: both paths take the same side.

    FP4 E2M1 with a row absmax of 6 has scale 1: 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5 are midpoints of the
    grid 0, .5, 1, 1.5, 2, 3, 4, 6 and round half to even (to 0, 1, 1, 2, 2, 4, 4); the trust mask at
    trust 1/2 is inclusive, so every tie keeps its gradient. INT3 mid-tread absmax 3 has step 1: .5, 1.5,
    2.5 tie to 0, 2, 2; mid-rise INT2 absmax 3 has step 2, levels +-1, +-3, cell edges at 0, +-2.
    """
    ties = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -2.5, -5.0, 0.0, 6.0, -6.0, 1.0])
    expected = torch.tensor([6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -0.0, -1.0, -2.0, -4.0, 0.0, 6.0, -6.0, 1.0])
    cases = [
        (FP, dict(element="e2m1", backward="trust"), ties, expected),
        (
            Int,
            dict(bits=3, grid="midtread", scale="absmax", backward="trust"),
            torch.tensor([3.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.0]),
            torch.tensor([3.0, 0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 3.0]),
        ),
        (
            Int,
            dict(bits=2, scale="absmax", backward="trust"),
            torch.tensor([3.0, 0.0, 2.0, -2.0, 1.0, -1.0, 3.0, -3.0]),
            torch.tensor([3.0, 1.0, 3.0, -1.0, 1.0, -1.0, 3.0, -3.0]),
        ),
    ]
    for cls, kw, x, want in cases:
        for dtype in DTYPES:
            xr = x.to(dtype).reshape(1, -1)
            grad = torch.arange(1.0, xr.shape[-1] + 1).to(dtype).reshape(1, -1)
            y_t, g_t = run(cls(**kw, backend="torch"), xr, grad)
            y_k, g_k = run(cls(**kw, backend="triton"), xr, grad)
            assert torch.equal(y_k.float(), want.reshape(1, -1))
            assert torch.equal(y_k, y_t) and torch.equal(g_k, g_t)
            assert torch.equal(g_k, grad)  # every tie is inside the trust region


@pytest.mark.parametrize("b", [2, 8, 32, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fwht_matches_dense_hadamard(b, dtype):
    x = torch.randn(37, 2 * b if b < 128 else 256).to(dtype)
    y = fused.fwht(x, b)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), hadamard64(x, b), atol=2e-6, rtol=2e-6)
    x.requires_grad_(True)
    fused.rotate(x, b).backward(torch.ones(x.shape))
    torch.testing.assert_close(
        x.grad.double(), hadamard64(torch.ones(x.shape), b), atol=1e-2 if dtype == torch.bfloat16 else 2e-6, rtol=0
    )


def test_hadamard_around_a_format_without_kernel_rotates_on_triton():
    """LloydMax has no fused kernel: the Triton path rotates with the standalone transform around it."""
    x = torch.randn(9, 64)
    ref = Hadamard(LloydMax(bits=3), backend="torch").compress(x)
    ker = Hadamard(LloydMax(bits=3), backend="triton").compress(x)
    differ = (hadamard64(ref, 64) - hadamard64(ker, 64)).abs() > 1e-5
    assert differ.sum() <= 2


def test_no_gradient_needed_gives_the_same_values():
    x = sample((37, 96), torch.float32, seed=3)
    with torch.no_grad():
        y_k = MX(element="e2m1", backward="trust", backend="triton").compress(x)
    assert torch.equal(y_k, MX(element="e2m1", backward="trust", backend="torch").compress(x))


def test_an_mx_block_with_an_inf_keeps_it_on_both_backends():
    """An overflow stays visible: the block gets the largest scale 2^126, its finite values round to 0, the inf
    stays inf (the torch path made the block finite, [0.75, 0.75, ...], from frexp's exponent of inf)."""
    x = torch.arange(1.0, 65.0).reshape(2, 32)
    x[0, 3] = -math.inf
    expected = torch.where(torch.isinf(x), x, torch.zeros(()))
    expected[1] = MX(element="e2m1", backend="torch").compress(x[1:])
    for backend in ("torch", "triton"):
        assert torch.equal(MX(element="e2m1", backend=backend).compress(x), expected), backend


def test_group_not_dividing_row_is_a_clear_error():
    with pytest.raises(ValueError, match="group_size 32 does not divide the row length 48"):
        Int(bits=4, granularity="group", group_size=32, backend="triton").compress(torch.randn(2, 48))
