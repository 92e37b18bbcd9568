"""Vector quantization: reproducible cached codebooks, their Gaussian MSE against exact references, nearest
codeword by brute force, the d-dimensional trust mask, survivor-only scales, bits and errors."""

import math

import numpy as np
import pytest
import torch
from scipy.cluster.vq import kmeans2
from scipy.spatial import cKDTree

from cslaws.formats import vq
from cslaws.formats.lloydmax import lloyd_max_levels
from cslaws.formats.quant import gaussian_mse
from cslaws.formats.vq import VQ, gaussian_codebook, lloyd_codebook
from cslaws.errors import BenchError


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    """Codebooks built by these tests go to a fresh cache folder, shared by the tests of this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSLAWS_CACHE", str(tmp_path_factory.mktemp("cslaws_cache")))
        yield


def heldout_mse(codebook: torch.Tensor, seed: int = 123, n: int = 1 << 18) -> float:
    """Gaussian MSE per value by brute-force nearest search in float64 on fresh samples."""
    x = torch.randn(n, codebook.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = codebook.double()
    d2 = torch.cat([torch.cdist(b, c).square().amin(-1) for b in x.split(1 << 14)])
    return d2.mean().item() / codebook.shape[1]


def test_codebook_is_reproducible_and_cached_under_its_key() -> None:
    a, mse_a = lloyd_codebook(2, 16, seed=0, samples=1 << 14, iters=30)
    b, mse_b = lloyd_codebook(2, 16, seed=0, samples=1 << 14, iters=30)
    c, _ = lloyd_codebook(2, 16, seed=1, samples=1 << 14, iters=30)
    assert torch.equal(a, b) and mse_a == mse_b
    assert not torch.equal(a, c)
    cached, mse = gaussian_codebook(2, 16, seed=0, samples=1 << 14, iters=30)
    assert torch.equal(cached, a) and mse == mse_a
    path = vq.cache_dir() / f"v{vq.CODEBOOK_VERSION}_d2_k16_seed0_n16384_it30.pt"
    assert path.exists()
    assert torch.equal(torch.load(path, weights_only=True)["codebook"], a)


def test_two_point_and_four_point_codebooks_reach_the_known_optima() -> None:
    """d = 1, 2 points: +-sqrt(2/pi), MSE 1 - 2/pi. d = 2, 4 points: the product of two such
    quantizers (one bit per coordinate: a square of radius sqrt(2) sqrt(2/pi)), MSE again 1 - 2/pi.
    d = 1, 4 points: the Lloyd-Max 2-bit quantizer, whose MSE `gaussian_mse(lloyd_max_levels(4))`
    integrates exactly."""
    c1, _ = gaussian_codebook(1, 2)
    assert sorted(c1.flatten().tolist()) == pytest.approx([-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)], rel=0.01)
    assert heldout_mse(c1) == pytest.approx(1 - 2 / math.pi, rel=0.01)
    c2, _ = gaussian_codebook(2, 4)
    # the 2-d Gaussian is rotation invariant and the MSE nearly flat around the optimum, so the fitted square
    # may come rotated and slightly distorted: check its mean radius and centre, and its MSE closely
    assert c2.norm(dim=-1).mean().item() == pytest.approx(2 / math.sqrt(math.pi), rel=0.02)
    assert c2.mean(0).abs().max().item() < 0.03
    assert heldout_mse(c2) == pytest.approx(1 - 2 / math.pi, rel=0.01)
    c4, _ = gaussian_codebook(1, 4)
    assert heldout_mse(c4) == pytest.approx(gaussian_mse(np.array(lloyd_max_levels(4))), rel=0.01)


def test_gaussian_mse_falls_as_points_are_added() -> None:
    """d = 2 at 1, 2, 3 bits per value: each MSE is above Shannon's bound 2^(-2R) for the Gaussian source,
    falls with every doubling of bits, and at 2 bits beats the best scalar (Lloyd-Max) 2-bit quantizer."""
    mses = []
    for points in (4, 16, 64):
        codebook, recorded = gaussian_codebook(2, points)
        mse = heldout_mse(codebook)
        assert recorded == pytest.approx(mse, rel=0.02)
        rate = math.log2(points) / 2
        assert mse > 2 ** (-2 * rate)
        mses.append(mse)
    assert mses[0] > mses[1] > mses[2]
    assert mses[1] < gaussian_mse(np.array(lloyd_max_levels(4)))


def pseudo_random_mse(codebook: torch.Tensor, seed: int = 2024, n: int = 1 << 20) -> float:
    """Gaussian MSE per value on fresh pseudo-random vectors (not the quasi-random ones the codebook is fitted to)."""
    x = np.random.default_rng(seed).standard_normal((n, codebook.shape[1]))
    dist, _ = cKDTree(codebook.double().numpy()).query(x)
    return float(np.mean(np.square(dist))) / codebook.shape[1]


def test_a_shipped_size_codebook_is_within_1pct_of_independent_converged_kmeans_runs() -> None:
    """2D/16 (`vq2_d2`): scipy's k-means (`kmeans2`: k-means++ starts from other seeds, pseudo-random samples,
    300 iterations each; the best of three, as one start can stall in a poorer local optimum) is an independent
    Lloyd reference; the cached codebook's MSE is at most 1% above it."""
    ours, recorded = gaussian_codebook(2, 16)
    x = np.random.default_rng(5).standard_normal((1 << 17, 2))
    refs = [kmeans2(x, 16, iter=300, minit="++", seed=np.random.default_rng(s))[0] for s in (6, 7, 8)]
    ref_mse = min(pseudo_random_mse(torch.from_numpy(r)) for r in refs)
    ours_mse = pseudo_random_mse(ours)
    assert ours_mse <= 1.01 * ref_mse
    assert recorded == pytest.approx(ours_mse, rel=0.005)


#: Converged Lloyd references for the documented 256-point codebooks, from an independent run (plain
#: pseudo-random samples: 2^19 vectors, k-means++ start from seed 7, Lloyd until an iteration gains less than
#: 1e-7 of the MSE, 374 and 542 iterations), measured on 2^20 fresh vectors. Version 1 codebooks (a fixed 100
#: iterations on 256 samples per point) were 2.6% and 1.8% above them.
LLOYD_REFERENCE = {(2, 256): 0.007798, (4, 256): 0.096905}


@pytest.mark.slow
@pytest.mark.parametrize(("dim", "points"), sorted(LLOYD_REFERENCE))
def test_documented_256_point_codebooks_are_within_1pct_of_a_converged_lloyd_run(dim: int, points: int) -> None:
    """Builds the codebook (2D/256: about 20 s, 4D/256: about 50 s on one core)."""
    codebook, _ = gaussian_codebook(dim, points)
    assert pseudo_random_mse(codebook) <= 1.01 * LLOYD_REFERENCE[dim, points]


def test_quasi_random_samples_come_in_powers_of_two() -> None:
    with pytest.raises(ValueError, match="powers of two, got n=100"):
        vq.gaussian_sample(100, 2, np.random.default_rng(0))


def brute_force(fmt: VQ, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row RMS, nearest codeword of every pair by exhaustive float64 search, and the trust mask."""
    s = x.double().square().mean(-1, keepdim=True).sqrt()
    u = (x.double() / s).reshape(-1, fmt.dim)
    c = fmt.codebook.double()
    d = ((u[:, None, :] - c[None]) ** 2).sum(-1)
    q = c[d.argmin(-1)]
    inside = (u - q).norm(dim=-1) <= fmt.trust * math.sqrt(fmt.dim * fmt.codebook_mse)
    return (q.reshape(x.shape) * s), inside[:, None].expand(-1, fmt.dim).reshape(x.shape)


def test_forward_is_the_nearest_codeword_at_row_scale_and_backward_the_trust_sphere() -> None:
    fmt = VQ(dim=2, points=16)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    x[0, :2] = torch.tensor([30.0, -30.0])  # an outlier pair, far outside every bounded cell
    expected, inside = brute_force(fmt, x)
    x.requires_grad_(True)
    y = fmt(x)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-6)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, inside.float())
    assert not inside[0, 0] and 0.005 < 1 - inside.float().mean().item() < 0.1
    assert torch.equal(grad_ste(x.detach()), torch.ones_like(x))


def test_cdist_search_used_on_cuda_agrees_with_the_kdtree() -> None:
    codebook, _ = gaussian_codebook(2, 16)
    u = torch.randn(50_000, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(vq.nearest_cdist(u, codebook), vq.nearest_kdtree(u, codebook))


def grad_ste(x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    VQ(dim=2, points=16, backward="ste")(x).sum().backward()
    return x.grad


def test_compress_sparse_scales_over_survivors_and_zeroes_the_rest() -> None:
    fmt = VQ(dim=2, points=16)
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    keep = torch.rand(8, 32, generator=torch.Generator().manual_seed(2)) < 0.5
    y = fmt.compress_sparse(x * keep, keep)
    assert torch.all(y[~keep] == 0)
    s = ((x * keep).square().sum(-1, keepdim=True) / keep.sum(-1, keepdim=True)).sqrt()
    u = ((x * keep) / s).reshape(-1, 2)
    c = fmt.codebook
    q = c[((u[:, None] - c[None]) ** 2).sum(-1).argmin(-1)].reshape(x.shape) * s
    torch.testing.assert_close(y[keep], q[keep], rtol=1e-5, atol=1e-6)


def test_bits_per_value() -> None:
    assert VQ(dim=2, points=16).bits_per_value == 2 + 16 / 1024
    assert VQ(dim=2, points=16, granularity="group", group_size=64).bits_per_value == 2 + 16 / 64
    assert VQ(dim=1, points=4, granularity="tensor").bits_per_value == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": 12}, r"power of two 2\^k between 2 and 1024, got 12"),
        ({"points": 2048}, r"got 2048"),
        ({"points": 1}, r"got 1"),
        ({"dim": 0}, r"dim must be a positive integer"),
        ({"backward": "clipped"}, r"unknown backward rule 'clipped' for VQ; allowed: ste, trust"),
        ({"trust": 0.0}, r"trust must be > 0"),
        ({"samples": 100}, r"samples must be None .* power of two >= 16 \* points = 256"),
        ({"samples": 384}, r"power of two .* got 384"),
        ({"granularity": "group", "group_size": 9, "dim": 2}, r"group_size 9 must be a multiple of dim=2"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VQ(**kwargs)


def test_row_not_divisible_by_dim_names_the_row_length() -> None:
    with pytest.raises(ValueError, match=r"dim=2 needs rows whose length is a multiple of 2, got 5"):
        VQ(dim=2, points=4)(torch.randn(3, 5))
    # with one scale for the tensor too: 3 rows of 5 hold 15 values, which split into vectors across rows
    with pytest.raises(ValueError, match=r"dim=3 needs rows whose length is a multiple of 3, got 5"):
        VQ(dim=3, points=4, granularity="tensor")(torch.randn(3, 5))


def test_a_model_whose_rows_dim_does_not_divide_is_refused_before_training() -> None:
    """Pricing the layers is the fit check: VQ's price did not look at dim, and the run failed at its first step."""
    from cslaws.laws.capacity import check_fits

    with pytest.raises(BenchError, match="needs rows whose length is a multiple of 3, got 32"):
        check_fits(VQ(dim=3, points=8), None, "nano")
    check_fits(VQ(dim=2, points=4), None, "nano")
