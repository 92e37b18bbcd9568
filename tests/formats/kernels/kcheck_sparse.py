"""Fused sparsify-then-quantize (N:M, per-row top-k) and quantize-the-given-survivors kernels against the
torch composition (`Compose` = sparsifier mask + `compress_sparse`), under Triton's interpreter.

With absmax-based value scales every value and every gradient is bit-for-bit equal, ties included (N:M
ties go to the lower index, top-k ties at the threshold to the lowest indices, as `sparse.py` defines).
"""

from __future__ import annotations

import pytest
import torch
from kernel_reference import run

from cslaws.formats.compose import Compose
from cslaws.formats.fp import FP, MX, NVFP4
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int
from cslaws.formats.kernels import interpreting
from cslaws.formats.sparse import NM, Magnitude, TopK

if not interpreting():
    raise RuntimeError("kcheck_*.py run under TRITON_INTERPRET=1: use tests/formats/kernels/test_interpreter.py")

SPARSIFIERS = {
    "2:4-forward": lambda: NM(2, 4),
    "4:8-ste": lambda: NM(4, 8, backward="ste"),
    "1:4-rbbm": lambda: NM(1, 4, backward="rbbm", rbbm_p=0.2),
    "row50-forward": lambda: Magnitude(0.5, per_row=True),
    "row60-rbbm": lambda: Magnitude(0.6, per_row=True, backward="rbbm", rbbm_p=0.3),
    "topk75-ste": lambda: TopK(0.75, backward="ste"),
    "tensor50-forward": lambda: Magnitude(0.5),  # survivors chosen in torch, quantized by the kernel
}
VALUES = {
    "int4-absmax-g32-trust": lambda b: Int(
        bits=4, scale="absmax", granularity="group", group_size=32, backward="trust", backend=b
    ),
    "fp8-row-clipped": lambda b: FP(element="e4m3", backward="clipped", backend=b),
    "mxfp4-trust": lambda b: MX(element="e2m1", backward="trust", backend=b),
    "nvfp4-trust": lambda b: NVFP4(backward="trust", backend=b),  # needs the survivors' tensor absmax first
    "nvfp4-outer-row-trust": lambda b: NVFP4(backward="trust", outer_scale="row", backend=b),
}


def with_ties(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Gaussian values, plus rows of equal magnitudes (N:M and top-k ties) and exact zeros."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x[0, :16] = torch.tensor([1.0, -1.0] * 8)
    x[1, 8:24] = 0.0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("sparsifier", list(SPARSIFIERS))
def test_fused_sparse_quantize_bit_exact(sparsifier, value, dtype):
    shape = (37, 96)
    x = with_ties(shape, dtype, seed=len(sparsifier + value))
    grad = torch.randn(shape).to(dtype)
    ref = Compose([SPARSIFIERS[sparsifier](), VALUES[value]("torch")], backend="torch")
    ker = Compose([SPARSIFIERS[sparsifier](), VALUES[value]("triton")], backend="triton")
    y_t, g_t = run(ref, x, grad)
    y_k, g_k = run(ker, x, grad)
    assert torch.equal(y_k, y_t), f"{(y_k != y_t).sum()} values differ"
    assert torch.equal(g_k, g_t), f"{(g_k != g_t).sum()} gradients differ"


@pytest.mark.parametrize("shape", [(1, 64), (1100, 32), (2, 3, 128)], ids=str)
def test_fused_shapes(shape):
    """One row; more rows than one program holds; a 3-D activation -- for 2:4 with RBBM and top-k."""
    for make in (lambda: NM(2, 4, backward="rbbm", rbbm_p=0.25), lambda: TopK(0.5)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(shape[0]))
        grad = torch.randn(shape)
        y_t, g_t = run(Compose([make(), VALUES["int4-absmax-g32-trust"]("torch")], backend="torch"), x, grad)
        y_k, g_k = run(Compose([make(), VALUES["int4-absmax-g32-trust"]("triton")], backend="triton"), x, grad)
        assert torch.equal(y_k, y_t) and torch.equal(g_k, g_t)


def test_gaussian_scale_over_survivors_within_boundary_flips():
    """RMS over the survivors: a few float32 ulps of summation order; decisions agree except at most a
    couple of values on a rounding boundary, which move by exactly one step."""
    x = with_ties((37, 96), torch.float32, seed=5)
    grad = torch.randn(37, 96)
    ref = Compose([NM(2, 4), Int(bits=4, backward="trust", backend="torch")], backend="torch")
    ker = Compose([NM(2, 4), Int(bits=4, backward="trust", backend="triton")], backend="triton")
    y_t, g_t = run(ref, x, grad)
    y_k, g_k = run(ker, x, grad)
    close = torch.isclose(y_k, y_t, rtol=1e-5, atol=1e-7)
    assert (~close).sum() <= 2
    assert torch.equal(y_k == 0, y_t == 0)  # the same survivors
    assert (g_k != g_t).sum() <= 2


def test_given_survivors_compress_sparse_bit_exact():
    x = with_ties((37, 96), torch.float32, seed=9)
    keep = torch.rand(37, 96, generator=torch.Generator().manual_seed(2)) < 0.4
    grad = torch.randn(37, 96)
    for make in VALUES.values():
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        ys = [make(b).compress_sparse(xi, keep) for xi, b in zip(xs, ("torch", "triton"))]
        for xi, yi in zip(xs, ys):
            yi.backward(grad)
        assert torch.equal(ys[0], ys[1]) and torch.equal(xs[0].grad, xs[1].grad)


def test_rotated_composition():
    """Hadamard around a fused composition: the standalone transform, then the fused kernel."""
    x = torch.randn(9, 128, generator=torch.Generator().manual_seed(4))
    ref = Hadamard(Compose([NM(2, 4), VALUES["mxfp4-trust"]("torch")], backend="torch"), backend="torch").compress(x)
    ker = Hadamard(Compose([NM(2, 4), VALUES["mxfp4-trust"]("triton")], backend="triton"), backend="triton").compress(x)
    torch.testing.assert_close(ker, ref, atol=1e-5, rtol=1e-5)


def test_forced_triton_needs_a_value_kernel():
    from cslaws.formats.vq import VQ

    with pytest.raises(ValueError, match="backend='triton' needs prune_then_quantize and a value format with a Triton kernel"):
        Compose([NM(2, 4), VQ()], backend="triton")
