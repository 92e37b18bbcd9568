"""Lloyd-Max: the levels satisfy the optimality conditions, match Max (1960), and round as documented."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from cslaws.formats.lloydmax import LloydMax, lloyd_max_levels

# Max (1960), Table I: positive output levels and MSE of the optimal Gaussian quantizer
MAX_1960 = {
    2: ([0.7980], 0.3634),
    4: ([0.4528, 1.510], 0.1175),
    8: ([0.2451, 0.7560, 1.344, 2.152], 0.03454),
    16: ([0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733], 0.009497),
}


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_levels_match_max_table_and_centroid_condition(n):
    lv = np.array(lloyd_max_levels(n))
    positive, mse = MAX_1960[n]
    assert np.allclose(lv[n // 2 :], positive, atol=6e-4)
    assert np.allclose(lv, -lv[::-1], atol=1e-12)
    edges = np.concatenate([[-np.inf], (lv[1:] + lv[:-1]) / 2, [np.inf]])
    # each level is the conditional mean of its cell, by quadrature
    for a, b, c in zip(edges[:-1], edges[1:], lv):
        m1 = integrate.quad(lambda x: x * stats.norm.pdf(x), a, b)[0]
        m0 = integrate.quad(stats.norm.pdf, a, b)[0]
        assert m1 / m0 == pytest.approx(c, abs=1e-8)
    err = sum(integrate.quad(lambda x, c=c: (x - c) ** 2 * stats.norm.pdf(x), a, b)[0] for a, b, c in zip(edges[:-1], edges[1:], lv))
    assert err == pytest.approx(mse, rel=5e-4)


def test_rounds_to_nearest_level_times_rms_ties_down():
    f = LloydMax(bits=2)
    lv = torch.tensor(lloyd_max_levels(4), dtype=torch.float64)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    x[:, 0] = 0.0  # exactly the edge between the two inner levels: goes to the lower one
    q = f.compress(x).double()
    s = x.double().pow(2).mean(-1, keepdim=True).sqrt()
    ref = lv[(x.double() / s).unsqueeze(-1).sub(lv).abs().argmin(-1)] * s
    assert torch.allclose(q, ref, rtol=1e-6, atol=0)
    assert torch.allclose(q[:, 0], lv[1] * s[:, 0], rtol=1e-6)


def test_gaussian_grid_and_bits():
    f = LloydMax(bits=3, granularity="group", group_size=64)
    assert f.gaussian_grid() is None  # a group's own RMS is not sigma: its GMSE is sampled
    assert torch.equal(LloydMax(bits=3).gaussian_grid(), torch.tensor(lloyd_max_levels(8), dtype=torch.float64))
    assert f.bits_per_value == 3 + 16 / 64


def test_trust_mask_uses_cell_width():
    f = LloydMax(bits=1, backward="trust", trust=0.5)
    # levels +-c, c = sqrt(2/pi); each cell is 2c wide, so trust 0.5 keeps |q - x| <= c (|x| <= 2c)
    x = torch.tensor([[0.5, -0.5, 3.0, 0.1]], requires_grad=True)
    f.compress(x).sum().backward()
    s = x.detach().pow(2).mean().sqrt()
    c = float(np.sqrt(2 / np.pi))
    assert torch.equal(x.grad, ((x.detach().abs() - c * s).abs() <= c * s).float())


@pytest.mark.parametrize("bits", [0, 5])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match=rf"Lloyd-Max bits must be an integer in \[1, 4\], got {bits}"):
        LloydMax(bits=bits)
