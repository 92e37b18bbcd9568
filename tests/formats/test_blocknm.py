"""Pair-structured 4:8 sparsity and QuEST's quantize-then-prune 4:8 scheme against independent references."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from cslaws.formats.blocknm import BlockNM
from cslaws.formats.compose import Compose
from cslaws.formats.int import Int
from cslaws.laws.capacity import gaussian_mse_sampled

#: QuEST's OPTIMAL_GAUSSIAN_SCALES[4]: the outer level of its 4-bit grid in units of the RMS.
QUEST_OGS4 = 2.513930578568423


def test_pairs_kept_by_norm_brute_force() -> None:
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(1))
    keep = BlockNM(4, 8, block=2).keep_mask(x).numpy()
    pairs = x.numpy().reshape(-1, 4, 2)
    for g, k in zip(pairs, keep.reshape(-1, 4, 2)):
        top = set(np.argsort(-np.linalg.norm(g, axis=1))[:2])
        assert [bool(k[i, 0]) and bool(k[i, 1]) for i in range(4)] == [i in top for i in range(4)]
        assert (k[:, 0] == k[:, 1]).all()


def test_pattern_metadata() -> None:
    assert BlockNM(4, 8, 2).metadata_bits == pytest.approx(math.log2(6) / 8)
    assert BlockNM(4, 8, 2).density == 0.5
    with pytest.raises(ValueError, match="block"):
        BlockNM(4, 8, block=3)


def quest_scheme() -> Compose:
    return Compose([BlockNM(4, 8, 2, backward="ste"), Int(4, backward="trust")], order="quantize_then_prune", pruned_backward="value")


def test_quest_four_eight_forward_and_mask() -> None:
    """QuEST's FourEightTrustQuantizer transcribed: INT4 over all values, zero the 2 weakest pairs, trust on the output."""
    x = torch.randn(8, 128, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    std = x.pow(2).mean(-1, keepdim=True).sqrt()
    scale = QUEST_OGS4 * std
    step = 2 * scale / 15
    xq = torch.round(torch.clamp(x, -scale, scale) / step + 0.5) * step - step / 2
    idx = x.reshape(-1, 4, 2).norm(dim=-1).topk(2, dim=-1, largest=False).indices
    xq = xq.reshape(-1, 4, 2).clone()
    xq[torch.arange(xq.shape[0]).repeat(2, 1).T, idx] = 0.0
    xq = xq.reshape(x.shape)
    mask = (xq - x).abs() <= std * (QUEST_OGS4 / 15)

    xf = x.float().requires_grad_()
    out = quest_scheme().compress(xf)
    assert torch.allclose(out.double(), xq, atol=1e-4)
    out.backward(torch.ones_like(out))
    assert torch.equal(xf.grad != 0, mask)
    pruned = xq == 0
    assert 0.1 < (mask & pruned).sum() / pruned.sum() < 0.3  # QuEST lets the gradient through on some pruned values


def test_sparsifier_rule_on_pruned_positions() -> None:
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    fmt = Compose([BlockNM(4, 8, 2, backward="forward"), Int(4, backward="ste")], order="quantize_then_prune")
    out = fmt.compress(x)
    keep = BlockNM(4, 8, 2).keep_mask(x.detach())
    assert torch.equal(out, Int(4).compress(x.detach()) * keep)
    out.sum().backward()
    assert torch.equal(x.grad != 0, keep)


def survivor_error() -> float:
    """E[1{pair kept} (x1 - q(x1))^2] for i.i.d. N(0,1) pairs, 2 of 4 pairs kept by norm, INT4 at QuEST's levels."""
    levels = QUEST_OGS4 * (2 * np.arange(16) - 15) / 15

    def q(v: float) -> float:
        return levels[np.argmin(np.abs(levels - v))]

    def kept(s: float) -> float:  # P(at least 2 of the 3 other pairs have a smaller squared norm), norm^2 ~ Exp(mean 2)
        p = 1 - math.exp(-s / 2)
        return 3 * p**2 * (1 - p) + p**3

    def inner(x1: float) -> float:
        return integrate.quad(lambda x2: norm.pdf(x2) * kept(x1 * x1 + x2 * x2), -np.inf, np.inf)[0]

    edges = np.concatenate([[-8.0], (levels[1:] + levels[:-1]) / 2, [8.0]])
    return sum(integrate.quad(lambda x1: norm.pdf(x1) * (x1 - q(x1)) ** 2 * inner(x1), a, b, epsabs=1e-10)[0] for a, b in zip(edges[:-1], edges[1:]))


def test_quest_four_eight_gmse() -> None:
    # pruned: the 2 smallest of 4 Exp(mean 2) squared pair norms, E = 2/4 + (2/4 + 2/3), over 8 values
    pruned = (0.5 + 0.5 + 2 / 3) / 8
    expected = pruned + survivor_error()
    measured, se = gaussian_mse_sampled(quest_scheme(), rows=256)
    assert expected == pytest.approx(0.2151, abs=3e-4)
    assert measured == pytest.approx(expected, abs=4 * se + 2e-4)
