"""INT-k and ternary: grid levels, scales, Gaussian-optimal clip, backward masks, errors."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from cslaws.formats.int import Int, Ternary, gaussian_clip, int_levels, unit_grid


def quad_mse(levels: np.ndarray) -> float:
    """Gaussian MSE of nearest-level rounding by adaptive quadrature, cell by cell (independent of
    the closed-form partial moments the format uses)."""
    edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
    return sum(
        integrate.quad(lambda x, c=c: (x - c) ** 2 * stats.norm.pdf(x), a, b, epsabs=1e-13, epsrel=1e-12)[0]
        for a, b, c in zip(edges[:-1], edges[1:], levels)
    )


def test_midrise_levels_and_edge_ties_absmax():
    # absmax 3 on a 2-bit mid-rise grid: step = 2*3/3 = 2, levels -3, -1, 1, 3, cell edges at -2, 0, 2
    f = Int(bits=2, grid="midrise", scale="absmax")
    x = torch.tensor([[3.0, -3.0, 0.0, 2.0, -2.0, 1.9, 0.1, -0.1, -1e-7]])
    expect = torch.tensor([[3.0, -3.0, 1.0, 3.0, -1.0, 1.0, 1.0, -1.0, -1.0]])  # edges go to the upper cell
    assert torch.equal(f.compress(x), expect)


def test_midtread_round_half_even_and_clamp():
    # 3-bit mid-tread: 7 levels -3..3 steps; absmax 3 -> step 1; .5 ties go to the even integer
    f = Int(bits=3, grid="midtread", scale="absmax")
    x = torch.tensor([[3.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -3.0]])
    expect = torch.tensor([[3.0, 0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 0.0, -3.0]])
    assert torch.equal(f.compress(x), expect)


def test_ternary_levels_and_bits():
    f = Ternary(scale="absmax")
    x = torch.tensor([[2.0, 0.99, 1.0, 1.01, -2.0, -1.5]])
    # step = 2*2/2 = 2: levels -2, 0, 2; 1.0 is a tie -> round half even gives 0 (index 0.5 -> 0)
    assert torch.equal(f.compress(x), torch.tensor([[2.0, 0.0, 0.0, 2.0, -2.0, -2.0]]))
    assert f.bits_per_value == pytest.approx(math.log2(3) + 16 / 1024)
    assert Ternary(granularity="group", group_size=64).bits_per_value == pytest.approx(math.log2(3) + 0.25)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_gaussian_clip_matches_quadrature_optimum(bits):
    L = 2**bits
    grid = unit_grid(L)
    ref = optimize.minimize_scalar(lambda a: quad_mse(a * grid), bounds=(0.5, 6.0), method="bounded", options={"xatol": 1e-8})
    assert gaussian_clip(L) == pytest.approx(ref.x, abs=1e-5)


def test_sign_quantizer_closed_form():
    # 1-bit: levels +-c, MSE 1 - 2c E|x| + c^2 is minimal at c = E|x| = sqrt(2/pi), clip = 2c
    assert gaussian_clip(2) == pytest.approx(2 * math.sqrt(2 / math.pi), abs=1e-8)


def test_int4_gaussian_mse_quadrature_and_monte_carlo():
    f = Int(bits=4)
    levels = f.gaussian_grid().numpy()
    step = 2 * gaussian_clip(16) / 16
    assert np.allclose(np.diff(levels), step)  # uniform, cell-centred
    assert levels[-1] == pytest.approx(gaussian_clip(16) - step / 2)
    mse = quad_mse(levels)
    assert mse == pytest.approx(0.01154, abs=2e-5)  # Max (1960), uniform 16-level table
    # Monte Carlo through the format itself: one long row so the RMS estimate is 1 to ~1e-3
    x = torch.randn(1, 2**20, generator=torch.Generator().manual_seed(0))
    x = x / x.pow(2).mean().sqrt()
    mc = (f.compress(x) - x).pow(2).mean().item()
    assert mc == pytest.approx(mse, rel=0.02)


def test_gaussian_scale_formula_per_group():
    f = Int(bits=3, granularity="group", group_size=4)
    x = torch.tensor([[1.0, -2.0, 0.5, 0.25, 4.0, 4.0, -4.0, 4.0]])
    q = f.compress(x)
    for g in range(2):
        xs = x[0, 4 * g : 4 * g + 4].double()
        step = 2 * gaussian_clip(8) * xs.pow(2).mean().sqrt() / 8
        idx = torch.clamp(torch.floor(xs / step), -4, 3)
        assert torch.allclose(q[0, 4 * g : 4 * g + 4].double(), (idx + 0.5) * step, rtol=1e-6)


def test_outputs_lie_on_gaussian_grid_at_unit_rms():
    f = Int(bits=2, grid="midtread")
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(1))
    x = x / x.pow(2).mean().sqrt()
    q = f.compress(x).double()
    grid = f.gaussian_grid()
    assert torch.allclose(q.unsqueeze(-1).sub(grid).abs().amin(-1), torch.zeros_like(q), atol=1e-6)
    assert grid.numel() == 3


def test_per_tensor_and_per_row_scales():
    x = torch.tensor([[1.0, -1.0], [4.0, 2.0]])
    rows = Int(bits=1, scale="absmax", granularity="row").compress(x)
    assert torch.equal(rows, torch.tensor([[1.0, -1.0], [4.0, 4.0]]))
    whole = Int(bits=1, scale="absmax", granularity="tensor").compress(x)
    assert torch.equal(whole, torch.tensor([[4.0, -4.0], [4.0, 4.0]]))


def test_idempotent_with_absmax_not_with_gaussian():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    f = Int(bits=4, scale="absmax", granularity="group", group_size=16)
    q = f.compress(x)
    assert torch.allclose(f.compress(q), q, rtol=1e-6, atol=0)
    g = Int(bits=4)
    qg = g.compress(x)
    assert not torch.allclose(g.compress(qg), qg, rtol=1e-3)  # RMS-based scale moves


def test_all_zero_row_quantizes_to_finite():
    for f in (Int(bits=4), Int(bits=4, grid="midtread", scale="absmax")):
        q = f.compress(torch.zeros(2, 8))
        assert torch.isfinite(q).all() and q.abs().max() < 1e-30


def test_trust_and_clipped_gradients_match_hand_masks():
    x = torch.tensor([[0.1, -0.3, 2.5, -4.0, 1.0, 0.0, 5.0, -0.2]], requires_grad=True)
    g = torch.arange(1.0, 9.0).unsqueeze(0)
    xs = x.detach().double()
    step = 2 * gaussian_clip(4) * xs.pow(2).mean().sqrt() / 4
    q = (torch.clamp(torch.floor(xs / step), -2, 1) + 0.5) * step
    for trust in (0.5, 0.2, 1.5):
        f = Int(bits=2, backward="trust", trust=trust)
        (f.compress(x) * g).sum().backward()
        mask = (q - xs).abs() <= trust * step
        assert torch.equal(x.grad, g * mask), trust
        x.grad = None
    f = Int(bits=2, backward="clipped")
    (f.compress(x) * g).sum().backward()
    assert torch.equal(x.grad, g * (xs.abs() <= 2 * step))
    x.grad = None
    Int(bits=2, backward="ste").compress(x).mul(g).sum().backward()
    assert torch.equal(x.grad, g)


def test_bf16_input_keeps_dtype():
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    q = Int(bits=4).compress(x)
    assert q.dtype == torch.bfloat16
    assert torch.allclose(q.float(), Int(bits=4).compress(x.float()).bfloat16().float())


def test_bits_per_value():
    assert Int(bits=4, granularity="group", group_size=128).bits_per_value == 4 + 16 / 128
    assert Int(bits=4, granularity="row", row_length=512).bits_per_value == 4 + 16 / 512
    assert Int(bits=8, granularity="tensor").bits_per_value == 8
    assert Int(bits=3, grid="midtread").bits_per_value == 3 + 16 / 1024


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 0}, r"bits must be an integer in \[1, 8\]"),
        ({"bits": 9}, r"bits must be an integer in \[1, 8\]"),
        ({"bits": 1, "grid": "midtread"}, r"\[2, 8\] for a midtread grid, got 1"),
        ({"grid": "odd"}, "unknown grid 'odd'"),
        ({"scale": "max"}, "unknown scale 'max'; allowed: gaussian, absmax"),
        ({"granularity": "channel"}, "unknown granularity 'channel'"),
        ({"group_size": 0}, "group_size must be a positive integer, got 0"),
        ({"backward": "sgd"}, "unknown backward rule 'sgd'; allowed: ste, clipped, trust"),
        ({"trust": 0.0}, "trust must be > 0"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Int(**kwargs)


def test_group_not_dividing_row_names_the_row_length():
    with pytest.raises(ValueError, match="group_size 128 does not divide the row length 96"):
        Int(granularity="group", group_size=128).compress(torch.randn(2, 96))


def test_int_levels_count():
    assert [int_levels(k, "midrise") for k in (1, 4, 8)] == [2, 16, 256]
    assert [int_levels(k, "midtread") for k in (2, 4, 8)] == [3, 15, 255]
