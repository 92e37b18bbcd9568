"""Sparsity formats: exact survivor counts, dynamic masks, the three backward masks, Gaussian MSE, errors."""

import math

import pytest
import torch
from scipy.stats import norm

from cslaws.formats.sparse import NM, Magnitude, TopK


def tied_values(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Nonzero values with many exact magnitude ties: +-1..5."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.randint(1, 6, shape, generator=g).float()
    sign = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
    return mag * sign


def reference_keep(x: torch.Tensor, k: int) -> torch.Tensor:
    """Brute force along the last dim: stable sort by descending magnitude, keep the first k."""
    order = torch.sort(-x.abs(), dim=-1, stable=True).indices
    keep = torch.zeros_like(x, dtype=torch.bool)
    return keep.scatter_(-1, order[..., :k], True)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("data", ["gaussian", "tied"])
def test_magnitude_prunes_exactly_the_fraction_and_the_smallest(sparsity: float, data: str) -> None:
    x = torch.randn(24, 40) if data == "gaussian" else tied_values((24, 40))
    n_zero = round(sparsity * x.numel())
    y = Magnitude(sparsity=sparsity)(x)
    assert int((y == 0).sum()) == n_zero
    flat = x.reshape(1, -1)
    assert torch.equal(y != 0, reference_keep(flat, flat.numel() - n_zero).view_as(x))
    assert torch.equal(y[y != 0], x[y != 0])

    y_row = Magnitude(sparsity=sparsity, per_row=True)(x)
    zeros_per_row = (y_row == 0).sum(-1)
    assert torch.all(zeros_per_row == round(sparsity * 40))
    assert torch.equal(y_row != 0, reference_keep(x, 40 - round(sparsity * 40)))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 4)])
@pytest.mark.parametrize("data", ["gaussian", "tied"])
def test_nm_keeps_exactly_n_largest_per_group(n: int, m: int, data: str) -> None:
    x = torch.randn(6, 5, 8 * m) if data == "gaussian" else tied_values((6, 5, 8 * m), seed=1)
    y = NM(n=n, m=m)(x)
    groups = x.unflatten(-1, (8, m))
    assert torch.all((y.unflatten(-1, (8, m)) != 0).sum(-1) == n)
    assert torch.equal((y != 0).unflatten(-1, (8, m)), reference_keep(groups, n))


def test_topk_activation_keeps_k_per_token() -> None:
    x = torch.randn(3, 7, 48)
    y = TopK(sparsity=0.75)(x)
    assert torch.all((y != 0).sum(-1) == 12)
    assert torch.equal(y != 0, reference_keep(x, 12))


@pytest.mark.parametrize("fmt", [Magnitude(0.5), Magnitude(0.5, per_row=True), NM(2, 4)], ids=repr)
def test_mask_follows_the_weights_when_they_change(fmt) -> None:
    w = torch.tensor([[0.1, 0.9, -0.3, 0.5, 0.2, -0.7, 0.6, 0.05]])
    before = fmt(w) != 0
    assert torch.equal(before, torch.tensor([[False, True, False, True, False, True, True, False]]))
    w2 = w.clone()
    w2[0, 0], w2[0, 1] = 0.95, 0.01  # a pruned weight grows past a kept one of the same group
    after = fmt(w2) != 0
    assert after[0, 0] and not after[0, 1]
    assert torch.equal(after[0, 2:], before[0, 2:])


def grad_of(fmt, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    fmt(x).backward(torch.ones_like(x))
    return x.grad


X8 = torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8])
RMS8 = math.sqrt(sum(v * v for v in X8.tolist()) / 8)  # sqrt(2.04 / 8) = 0.50498


def test_forward_and_ste_backward_masks() -> None:
    # 50% of 8: the four largest (|x| >= 0.5) survive
    assert torch.equal(grad_of(Magnitude(0.5, backward="forward"), X8), torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]))
    assert torch.equal(grad_of(Magnitude(0.5, backward="ste"), X8), torch.ones(8))
    assert torch.equal(Magnitude(0.5, backward="ste")(X8), X8 * torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]))


def test_rbbm_band_below_the_top_k_threshold() -> None:
    """T_k = 0.5 (smallest survivor). p = 0.19: T_p = 0.50498 * Phi^-1(0.69) = 0.2504, so the band
    (0.2504, 0.5) holds |x| = 0.3, 0.4: those get no gradient; the smaller pruned ones and all survivors do."""
    t_p = RMS8 * norm.ppf(0.69)
    assert 0.2 < t_p < 0.3
    g = grad_of(Magnitude(0.5, backward="rbbm", rbbm_p=0.19), X8)
    assert torch.equal(g, torch.tensor([1.0, 1, 0, 0, 1, 1, 1, 1]))


def test_rbbm_band_above_the_top_k_threshold() -> None:
    """p = 0.4: T_p = 0.50498 * Phi^-1(0.9) = 0.6472 > T_k = 0.5; the band (0.5, 0.6472) holds |x| = 0.6
    (0.5 itself is T_k, on the edge, and keeps its gradient)."""
    t_p = RMS8 * norm.ppf(0.9)
    assert 0.6 < t_p < 0.7
    g = grad_of(Magnitude(0.5, backward="rbbm", rbbm_p=0.4), X8)
    assert torch.equal(g, torch.tensor([1.0, 1, 1, 1, 1, 0, 1, 1]))


def test_rbbm_per_row_and_nm_use_their_own_thresholds() -> None:
    """Row 0 is X8, row 1 is X8 / 10: per row, each has its own T_k and T_p, so the same pattern holds.
    For 2:4 on X8 the groups are [.1 .2 .3 .4] (T_k = 0.3) and [.5 .6 .7 .8] (T_k = 0.7); with T_p = 0.2504
    (p = 0.19, row RMS) the bands are (0.2504, 0.3) -- empty -- and (0.2504, 0.7): 0.5, 0.6."""
    rows = torch.stack([X8, X8 / 10])
    g = grad_of(Magnitude(0.5, per_row=True, backward="rbbm", rbbm_p=0.19), rows)
    assert torch.equal(g, torch.tensor([[1.0, 1, 0, 0, 1, 1, 1, 1]] * 2))
    g_nm = grad_of(NM(2, 4, backward="rbbm", rbbm_p=0.19), X8.unsqueeze(0))
    assert torch.equal(g_nm, torch.tensor([[1.0, 1, 1, 1, 0, 0, 1, 1]]))
    g_fwd = grad_of(NM(2, 4, backward="forward"), X8.unsqueeze(0))
    assert torch.equal(g_fwd, torch.tensor([[0.0, 0, 1, 1, 0, 0, 1, 1]]))


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_gaussian_mse_of_magnitude_pruning_matches_closed_form(sparsity: float) -> None:
    """Pruning the fraction s of smallest magnitudes of a standard Gaussian zeroes |x| < t with
    P(|x| < t) = 2 Phi(t) - 1 = s, i.e. t = Phi^-1((1 + s) / 2). The error is x on the pruned set, so

        MSE = int_{-t}^{t} x^2 phi(x) dx = [Phi(x) - x phi(x)]_{-t}^{t} = (2 Phi(t) - 1) - 2 t phi(t)
            = s - 2 t phi(t),

    using d/dx (Phi(x) - x phi(x)) = phi(x) - phi(x) + x^2 phi(x) (since phi' = -x phi)."""
    t = norm.ppf((1 + sparsity) / 2)
    expected = sparsity - 2 * t * norm.pdf(t)
    x = torch.randn(1 << 22, generator=torch.Generator().manual_seed(0))
    mse_tensor = (Magnitude(sparsity)(x) - x).double().square().mean().item()
    rows = x.view(1024, -1)
    mse_row = (Magnitude(sparsity, per_row=True)(rows) - rows).double().square().mean().item()
    assert mse_tensor == pytest.approx(expected, rel=5e-3)
    assert mse_row == pytest.approx(expected, rel=5e-3)


def test_cubic_schedule_ramps_sparsity_with_progress() -> None:
    """Zhu & Gupta: s(f) = 0.8 (1 - (1 - u)^3), u = (f - 0.2) / 0.4 clipped to [0, 1]."""
    fmt = Magnitude(0.8, schedule="cubic", ramp_start=0.2, ramp_end=0.6)
    x = torch.randn(1000)
    for progress, expected in [(0.0, 0), (0.2, 0), (0.4, 700), (0.6, 800), (1.0, 800)]:
        fmt.set_progress(progress)
        assert int((fmt(x) == 0).sum()) == expected, progress
    assert fmt.bits_per_value == pytest.approx(0.2 * 16 + 1)  # charged at the target sparsity


def test_bits_per_value() -> None:
    assert Magnitude(0.5).bits_per_value == 0.5 * 16 + 1
    assert TopK(0.75).bits_per_value == 0.25 * 16 + 1
    assert NM(2, 4).bits_per_value == pytest.approx(8 + math.log2(6) / 4)
    assert NM(4, 8).bits_per_value == pytest.approx(8 + math.log2(70) / 8)
    assert NM(1, 4).bits_per_value == pytest.approx(4 + 2 / 4)


@pytest.mark.parametrize(("fmt", "shape"), [(TopK(0.6), (3, 24)), (Magnitude(0.3), (5, 7)), (Magnitude(0.3, per_row=True), (4, 12)),
                                             (NM(2, 4), (3, 8))])
def test_storage_bits_count_the_survivors_the_mask_keeps_on_that_shape(fmt, shape) -> None:
    """The store's bits are the cost on the real layers: 10 of a row of 24 survive at sparsity 0.6, not 9.6 (it
    charged the nominal density). Counted here from the mask itself, alone and under a quantizer's codes."""
    from cslaws.formats.compose import Compose
    from cslaws.formats.int import Int

    keep = fmt.keep_mask(torch.randn(shape))
    kept = keep.sum().item() / keep.numel()
    assert fmt.storage_bits(shape) == pytest.approx(kept * 16 + fmt.metadata_bits, rel=1e-12)
    composed = Compose([fmt, Int(bits=4, granularity="row")])
    assert composed.storage_bits(shape) == pytest.approx(kept * 4 + 16 / shape[-1] + fmt.metadata_bits, rel=1e-12)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Magnitude(sparsity=1.0), r"sparsity=1.0 must lie in \[0, 1\)"),
        (lambda: Magnitude(sparsity=-0.1), r"sparsity=-0.1 must lie in \[0, 1\)"),
        (lambda: TopK(sparsity=1.5), r"sparsity=1.5"),
        (lambda: NM(n=5, m=4), r"1 <= N <= M, got N=5, M=4"),
        (lambda: NM(n=0, m=4), r"got N=0, M=4"),
        (lambda: Magnitude(backward="rbbm"), r"rbbm_p in the open interval \(0, 0.5\), got rbbm_p=None"),
        (lambda: Magnitude(backward="rbbm", rbbm_p=0.5), r"got rbbm_p=0.5"),
        (lambda: NM(backward="rbbm", rbbm_p=0.0), r"got rbbm_p=0.0"),
        (lambda: Magnitude(rbbm_p=0.2), r"rbbm_p=0.2 is only used by backward='rbbm'"),
        (lambda: Magnitude(backward="dense"), r"backward='dense'.*allowed: forward, ste, rbbm"),
        (lambda: Magnitude(schedule="linear"), r"schedule='linear'.*allowed: constant, cubic"),
        (lambda: Magnitude(schedule="cubic", ramp_start=0.5, ramp_end=0.5), r"ramp_start=0.5, ramp_end=0.5"),
    ],
)
def test_bad_arguments_raise_at_construction(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_nm_row_not_divisible_by_m_names_the_row_length() -> None:
    with pytest.raises(ValueError, match=r"multiple of M=4, got 6"):
        NM(2, 4)(torch.randn(3, 6))
