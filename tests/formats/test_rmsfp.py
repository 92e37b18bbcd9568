"""RMS-scaled FP (QuEST's FP4) against float64 quadrature and an independent transcription of QuEST's quantizer."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import integrate
from scipy.stats import norm

from cslaws.formats.hadamard import Hadamard
from cslaws.formats.rmsfp import RMSFP

#: QuEST's FP4_LEVELS (E2M1 x 0.48707976), positive half, as printed in its base_linear.py.
QUEST_FP4 = np.array([0.0, 0.24353988, 0.48707976, 0.73061964, 0.97415952, 1.46123928, 1.94831904, 2.92247856])


def quad_mse(levels: np.ndarray) -> float:
    """E[(X - q(X))^2] by adaptive quadrature on each Voronoi cell, float64."""
    c = np.unique(np.concatenate([-levels, levels]))
    edges = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]])
    return sum(integrate.quad(lambda x, q=q: (x - q) ** 2 * norm.pdf(x), a, b, epsabs=1e-13)[0] for q, a, b in zip(c, edges[:-1], edges[1:]))


def test_quest_fp4_gmse_by_quadrature() -> None:
    fmt = RMSFP(mult=0.48707976)
    grid = fmt.gaussian_grid().numpy()
    assert np.allclose(np.unique(np.abs(grid)), QUEST_FP4, atol=1e-8)
    assert quad_mse(QUEST_FP4) == pytest.approx(0.012685, abs=5e-7)


def test_default_mult_is_the_gaussian_optimum() -> None:
    m = RMSFP()._mult
    assert m == pytest.approx(0.48708, abs=2e-5)
    e2m1 = QUEST_FP4 / 0.48707976
    best = quad_mse(m * e2m1)
    assert all(quad_mse(k * e2m1) > best for k in (m * 0.999, m * 1.001))


def quest_reference(x: torch.Tensor, trust: float) -> tuple[torch.Tensor, torch.Tensor]:
    """QuEST's HalfHadamardFP4TrustQuantizer, transcribed: rotate, nearest level x RMS, mask |q - x| <= trust RMS."""
    h = torch.tensor(scipy.linalg.block_diag(*[scipy.linalg.hadamard(128) / math.sqrt(128)] * (x.shape[-1] // 128)), dtype=torch.float64)
    xh = x.double() @ h
    std = xh.pow(2).mean(-1, keepdim=True).sqrt()
    levels = torch.tensor(np.concatenate([-QUEST_FP4[::-1], QUEST_FP4]), dtype=torch.float64)
    q = levels[(xh / std).unsqueeze(-1).sub(levels).abs().argmin(-1)] * std
    return q, (q - xh).abs() <= trust * std


def test_half_hadamard_fp4_matches_quest_forward_and_mask() -> None:
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(0)).requires_grad_()
    fmt = Hadamard(RMSFP(mult=0.48707976, backward="trust", trust=0.3185766, trust_unit="rms"), variant="half")
    out = fmt.compress(x)
    q, mask = quest_reference(x.detach(), 0.3185766)
    assert torch.allclose(out.double(), q, atol=1e-5)
    out.backward(torch.ones_like(out))
    h = torch.tensor(scipy.linalg.hadamard(128) / math.sqrt(128), dtype=torch.float64)
    expected = (mask.double().view(16, 2, 128) @ h).view(16, 256)  # grad of the rotation: mask rotated back
    assert torch.allclose(x.grad.double(), expected, atol=1e-5)
    # the trained rule also cuts inside the outer cells: |x| in (1.948 + t, 2.922 - t) or beyond 2.922 + t sigma
    t, (a, b) = 0.3185766, QUEST_FP4[-2:]
    cut = 2 * (norm.cdf(b - t) - norm.cdf(a + t)) + 2 * norm.sf(b + t)
    assert (~mask).double().mean().item() == pytest.approx(cut, abs=0.006)


def test_intended_trust_cuts_only_beyond_the_grid() -> None:
    x = torch.randn(1, 1 << 18, generator=torch.Generator().manual_seed(4)).requires_grad_()
    fmt = RMSFP(mult=0.48707976, granularity="tensor", backward="trust", trust=0.5)
    fmt.compress(x).sum().backward()
    s = x.detach().pow(2).mean().sqrt() * 0.48707976
    # outer level 6 s plus half the outer gap (6 - 4) s / 2: nothing inside the grid loses its gradient
    assert torch.equal(x.grad != 0, x.detach().abs() <= 7 * s)
    assert (x.grad == 0).sum() > 50


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="trust_unit"):
        RMSFP(trust_unit="sigma")
    with pytest.raises(ValueError, match="mult"):
        RMSFP(mult=-1.0)
