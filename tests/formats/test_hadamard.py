"""Hadamard rotation: the fast transform equals the dense normalised Hadamard matrix, is orthogonal, picks
its block by the documented rule, and the full/half variants and the rotated-basis trust mask are right."""

import math

import pytest
import scipy.linalg
import torch

from cslaws.formats import CompressedLinear, LinearFactory
from cslaws.formats.dense import Dense
from cslaws.formats.hadamard import Hadamard, fwht, rotation_block
from cslaws.formats.int import Int, gaussian_clip


def dense_h(n: int) -> torch.Tensor:
    return torch.tensor(scipy.linalg.hadamard(n) / math.sqrt(n), dtype=torch.float64)


def blockwise(x: torch.Tensor, b: int) -> torch.Tensor:
    return (x.double().reshape(-1, b) @ dense_h(b)).reshape(x.shape)


@pytest.mark.parametrize("b", [2, 4, 16, 32, 128, 256, 512])
def test_fwht_equals_dense_reference_and_is_orthogonal(b):
    x = torch.randn(3, 2, 2 * b, generator=torch.Generator().manual_seed(b))
    y = fwht(x, b)
    assert torch.allclose(y.double(), blockwise(x, b), atol=1e-5)
    assert torch.allclose(fwht(y, b), x, atol=1e-5)  # H H = I
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    assert torch.allclose(dense_h(b) @ dense_h(b).T, torch.eye(b, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("n, b", [(640, 128), (1024, 128), (192, 64), (96, 32), (32, 32), (6, 2)])
def test_rotation_block_rule(n, b):
    assert rotation_block(n, 128) == b


def test_odd_row_length_and_bad_block_and_variant():
    with pytest.raises(ValueError, match="needs an even row length, got 33"):
        Hadamard(Int()).compress(torch.randn(2, 33))
    with pytest.raises(ValueError, match="power of two >= 2, got 96"):
        Hadamard(Int(), block=96)
    with pytest.raises(ValueError, match="unknown Hadamard variant 'quarter'; allowed: full, half"):
        Hadamard(Int(), variant="quarter")
    with pytest.raises(ValueError, match="cannot compress only the survivors"):
        Hadamard(Int()).compress_sparse(torch.randn(2, 8), torch.ones(2, 8, dtype=torch.bool))


def test_full_variant_is_rotate_quantize_rotate_back():
    inner = Int(bits=3)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    h = dense_h(64)
    ref = inner.compress((x.double() @ h).float()).double() @ h
    assert torch.allclose(Hadamard(inner, block=128).compress(x).double(), ref, atol=1e-5)


def test_trust_mask_in_rotated_basis():
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 5, 16)
    x.requires_grad_(True)
    g = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    (Hadamard(Int(bits=2, backward="trust", trust=0.3), block=16).compress(x) * g).sum().backward()
    h = dense_h(16)
    xr = x.detach().double() @ h
    step = 2 * gaussian_clip(4) * xr.pow(2).mean(-1, keepdim=True).sqrt() / 4
    q = (torch.clamp(torch.floor(xr / step), -2, 1) + 0.5) * step
    mask = (q - xr).abs() <= 0.3 * step
    assert not mask.all()  # the test exercises a real mask
    ref = ((g.double() @ h) * mask) @ h  # backward of y = C(x H) H with symmetric H
    assert torch.allclose(x.grad.double(), ref, atol=1e-5)


def test_half_variant_in_a_linear_layer():
    torch.manual_seed(0)
    inner = Int(bits=8)
    w = Hadamard(inner, variant="half")
    a = Hadamard(inner, variant="half")
    assert w.keeps_rotated_basis and w.rotation_key == ("hadamard", 128)
    lin = CompressedLinear(64, 8, w, a)
    x = torch.randn(5, 64)
    h = dense_h(64)
    xr, wr = x.double() @ h, lin.weight.detach().double() @ h
    assert torch.allclose(xr @ wr.T, x.double() @ lin.weight.detach().double().T, atol=1e-12)  # (xH)(WH)^T = x W^T
    ref = inner.compress(xr.float()).double() @ inner.compress(wr.float()).double().T
    assert torch.allclose(lin(x).double(), ref, atol=1e-5)
    full = Hadamard(Int(bits=8))
    assert not full.keeps_rotated_basis and full.rotation_key is None


def test_half_on_one_side_or_mismatched_blocks_is_an_error():
    half = Hadamard(Int(bits=4), variant="half")
    with pytest.raises(ValueError, match="both weight and activation formats must"):
        CompressedLinear(64, 8, half, Dense())
    with pytest.raises(ValueError, match="both weight and activation formats must"):
        LinearFactory(Dense(), half)
    with pytest.raises(ValueError, match="rotate in different bases"):
        LinearFactory(half, Hadamard(Int(bits=4), block=64, variant="half"))


def test_delegates_bits_grid_and_progress():
    inner = Int(bits=4, granularity="group", group_size=32)
    f = Hadamard(inner)
    assert f.bits_per_value == inner.bits_per_value == 4.5
    assert f.gaussian_grid() is inner.gaussian_grid() is None  # per-group scales: sampled, not integrated
    row = Int(bits=4, granularity="row")
    assert torch.equal(Hadamard(row).gaussian_grid(), row.gaussian_grid())
    f.set_progress(0.25)
    assert inner.progress == 0.25
    assert f.spec()["init_args"]["format"]["init_args"]["bits"] == 4


def test_bf16_roundtrip_dtype():
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    assert Hadamard(Int(bits=4)).compress(x).dtype == torch.bfloat16
