"""Vector quantization: groups of d values rounded to the nearest point of a Gaussian-optimal codebook.

Forward: each scale group (a row by default, see `quant.py` for granularities) is divided by its RMS
`s`; its values are split into vectors of `dim` consecutive values, each replaced by the nearest (exact
Euclidean distance, see `nearest`) of `points` codewords, and multiplied back by `s`.
The codebook minimises the MSE of the standard Gaussian in `dim` dimensions, as the HIGGS grids
(Malinovskii et al. 2024, "Pushing the Limits of Large Language Model Quantization via the Linearity
Theorem", sec. 4); it is built here by Lloyd's algorithm (k-means; Lloyd 1982) run to convergence (see
`lloyd_codebook`: k-means++ restarts, Arthur & Vassilvitskii 2007, on a quarter of the sample, then the
best one on all `samples` quasi-random Gaussian vectors, each stage until an iteration gains less than a
set fraction of the MSE), deterministic for a given `seed` (and scipy version), then cached on disk under `$CSLAWS_CACHE`
(default `~/.cache/cslaws`) in `vq/`, keyed by (dim, points, seed, samples, iters); `samples` defaults to
2^18 (256 per point at 1024 points). The shipped and documented codebooks (2D/16, 2D/256, 4D/256 points)
come within 0.3% of an independent converged Lloyd run on 2^19 pseudo-random vectors (a fixed iteration
count on 256 samples per point, as before version 2, left 2D/256 2.6% and 4D/256 1.8% above it). A run's
checkpoint keeps the codebook it trained with (`tensors`), so resuming or scoring it never rebuilds another.

Backward: "ste" passes every gradient; "trust" is the trust estimator of QuEST (Panferov et al. 2025)
in `dim` dimensions: a vector gets its gradient only when its residual `||u - c||` (in units of the
group's RMS) is at most `trust * r`, where `r = sqrt(dim * D)` is the codebook's RMS residual norm on
Gaussian data (D its MSE per value). Bounded cells keep their residuals below about 1.7 r (the corner
of a square cell), so the default `trust = 2` cuts only vectors far out in the unbounded outer cells:
2-3% of Gaussian vectors for d = 2 and 16 to 256 points, 1.5% for d = 4 and 256 points.

`compress_sparse` takes the RMS over the survivors and zeroes the pruned positions after quantizing, with
pass-through gradient there (see `Format.compress_sparse`).

bits_per_value = log2(points) / dim + 16 bits per group/row scale (the `row_length` rule of `quant.py`).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.stats import norm, qmc
from torch import Tensor

from cslaws.formats import ops
from cslaws.formats.base import Format, register_format
from cslaws.formats.quant import TINY, Granularity, ScaledStorage, check_granularity, group_view, rms

VQBackward = Literal["ste", "trust"]
VQ_BACKWARDS = ("ste", "trust")
#: Largest codebook. Building takes seconds to minutes on one core (2D/256: 20 s, 4D/256: 50 s), then it is cached.
MAX_POINTS = 1024
#: k-means++ starts tried on the coarse sample (Lloyd converges to a local optimum; the best start is kept).
RESTARTS = 3
#: Lloyd stops when an iteration lowers the training MSE by less than this fraction: on the coarse sample
#: (where the restarts compete), then on the full one (which sets the held-out MSE).
COARSE_TOL, FINE_TOL = 1e-6, 1e-7
#: Entries of one (vectors x codewords) distance block of `nearest_cdist`, bounding its memory.
_BLOCK = 1 << 22


def cache_dir() -> Path:
    """Where codebooks are kept: `$CSLAWS_CACHE/vq`, default `~/.cache/cslaws/vq`."""
    return Path(os.environ.get("CSLAWS_CACHE", Path.home() / ".cache" / "cslaws")) / "vq"


def nearest(u: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codeword (exact Euclidean distance) for each row of `u` (n, d).

    CPU tensors use a k-d tree, CUDA tensors `torch.cdist` (see the two functions below). Exact ties
    (measure zero on continuous data) may resolve to either codeword.
    """
    return nearest_kdtree(u, codebook) if u.device.type == "cpu" else nearest_cdist(u, codebook)


def nearest_kdtree(u: Tensor, codebook: Tensor) -> Tensor:
    """Nearest codeword by `scipy.spatial.cKDTree` (distances in float64), on CPU."""
    _, idx = cKDTree(codebook.double().numpy()).query(u.detach().double().numpy(), workers=1)
    return torch.from_numpy(idx).to(u.device)


def nearest_cdist(u: Tensor, codebook: Tensor) -> Tensor:
    """Nearest codeword by `torch.cdist` on differences (not the matmul expansion, which cancels), in blocks
    of at most `_BLOCK` distances to bound the memory; runs on any device."""
    rows = max(1, _BLOCK // codebook.shape[0])
    blocks = u.detach().split(rows)
    return torch.cat([torch.cdist(b, codebook, compute_mode="donot_use_mm_for_euclid_dist").argmin(-1) for b in blocks])


def kmeans_pp(x: np.ndarray, points: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each new centre drawn with probability proportional to its squared distance."""
    centres = np.empty((points, x.shape[1]))
    centres[0] = x[rng.integers(len(x))]
    d2 = np.square(x - centres[0]).sum(-1)
    for i in range(1, points):
        centres[i] = x[rng.choice(len(x), p=d2 / d2.sum())]
        d2 = np.minimum(d2, np.square(x - centres[i]).sum(-1))
    return centres


def default_samples(points: int) -> int:
    """Gaussian training vectors for a codebook: 2^18, and 256 per point beyond 1024 points."""
    return max(1 << 18, 256 * points)


def gaussian_sample(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """`n` (a power of two) standard Gaussian vectors: a scrambled Sobol sequence through the normal quantile.

    Quasi-random points cover the space evenly, so a codebook fitted to them overfits less than one fitted
    to as many pseudo-random vectors (its held-out MSE is closer to the training MSE).
    """
    if n < 1 or n & (n - 1):
        raise ValueError(f"quasi-random Gaussian samples come in powers of two, got n={n}")
    return norm.ppf(qmc.Sobol(dim, scramble=True, seed=rng).random_base2(n.bit_length() - 1))


def lloyd(x: np.ndarray, centres: np.ndarray, tol: float, iters: int) -> tuple[np.ndarray, float]:
    """Lloyd iterations on samples `x` until one lowers the MSE by less than the fraction `tol`, or `iters`
    iterations; (centres, training MSE per value). An empty cell takes the sample with the largest error."""
    points, dim = centres.shape
    c, mse = centres, math.inf
    for _ in range(iters):
        dist, idx = cKDTree(c).query(x, workers=1)
        new_mse = float(np.mean(np.square(dist))) / dim
        if new_mse > mse * (1 - tol):
            return c, new_mse
        mse = new_mse
        counts = np.bincount(idx, minlength=points)
        c = np.stack([np.bincount(idx, weights=x[:, j], minlength=points) for j in range(dim)], axis=1)
        c /= np.maximum(counts, 1)[:, None]
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            c[empty] = x[np.argsort(dist)[-empty.size :]]
    return c, mse


def lloyd_codebook(dim: int, points: int, seed: int, samples: int, iters: int) -> tuple[Tensor, float]:
    """Gaussian-optimal codebook (points, dim) by Lloyd's algorithm, and its held-out MSE per value.

    A fixed iteration count stops Lloyd far from convergence (hundreds of iterations are needed at 256
    points), and one k-means++ start can land in a poor local optimum. So: `RESTARTS` k-means++ starts,
    each run to `COARSE_TOL` on `samples / 4` vectors (cheap), the best continued to `FINE_TOL` on all
    `samples`; `iters` caps each run. The MSE is measured on `samples` fresh vectors (the training MSE is
    biased low). Every sample is quasi-random (`gaussian_sample`), drawn from streams of `seed`:
    deterministic for a given (dim, points, seed, samples, iters).
    """
    rng = np.random.default_rng(seed)
    coarse, full, heldout = (gaussian_sample(n, dim, rng) for n in (samples // 4, samples, samples))
    starts = (lloyd(coarse, kmeans_pp(coarse[: 32 * points], points, rng), COARSE_TOL, iters) for _ in range(RESTARTS))
    best, _ = min(starts, key=lambda run: run[1])
    c, _ = lloyd(full, best, FINE_TOL, iters)
    c = c.astype(np.float32)
    dist, _ = cKDTree(c).query(heldout, workers=1)
    return torch.from_numpy(c), float(np.mean(np.square(dist))) / dim


@lru_cache(maxsize=None)
def _cached(path: Path, dim: int, points: int, seed: int, samples: int, iters: int) -> tuple[Tensor, float]:
    if path.exists():
        saved = torch.load(path, weights_only=True)
        return saved["codebook"], float(saved["mse"])
    codebook, mse = lloyd_codebook(dim, points, seed, samples, iters)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"codebook": codebook, "mse": mse}, tmp)
    os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
    return codebook, mse


#: Part of every cache key: bump it when `lloyd_codebook` changes, so stale codebooks are not reused.
CODEBOOK_VERSION = 2


def gaussian_codebook(
    dim: int, points: int, seed: int = 0, samples: int | None = None, iters: int = 1000
) -> tuple[Tensor, float]:
    """The cached codebook (points, dim) float32 and its Gaussian MSE per value (built on first use)."""
    samples = default_samples(points) if samples is None else samples
    path = cache_dir() / f"v{CODEBOOK_VERSION}_d{dim}_k{points}_seed{seed}_n{samples}_it{iters}.pt"
    return _cached(path, dim, points, seed, samples, iters)


@register_format("vq")
class VQ(ScaledStorage, Format):
    """Vector quantization of `dim` consecutive values to a Gaussian-optimal codebook of `points` points."""

    family = "vq"

    def __init__(
        self,
        dim: int = 2,
        points: int = 16,
        granularity: Granularity = "row",
        group_size: int = 128,
        row_length: int = 1024,
        backward: VQBackward = "trust",
        trust: float = 2.0,
        seed: int = 0,
        samples: Optional[int] = None,
        iters: int = 1000,
    ) -> None:
        super().__init__()
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"dim must be a positive integer (values per vector), got {dim!r}")
        if not (isinstance(points, int) and 2 <= points <= MAX_POINTS and points & (points - 1) == 0):
            raise ValueError(
                f"points (codebook size) must be a power of two 2^k between 2 and {MAX_POINTS}, got {points!r}"
            )
        check_granularity(granularity, group_size, row_length)
        if granularity == "group" and group_size % dim:
            raise ValueError(f"group_size {group_size} must be a multiple of dim={dim}")
        if backward not in VQ_BACKWARDS:
            raise ValueError(f"unknown backward rule {backward!r} for VQ; allowed: {', '.join(VQ_BACKWARDS)}")
        if not trust > 0:
            raise ValueError(f"trust must be > 0 (a multiple of the codebook's RMS residual), got {trust!r}")
        if samples is not None and not (isinstance(samples, int) and samples >= 16 * points and samples & (samples - 1) == 0):
            raise ValueError(
                f"samples must be None (default: {default_samples(points)}) or a power of two >= 16 * points = "
                f"{16 * points} to fit the codebook (quasi-random samples come in powers of two), got {samples!r}"
            )
        if not (isinstance(iters, int) and iters >= 1):
            raise ValueError(f"iters must be a positive integer (the most Lloyd iterations per run), got {iters!r}")
        self.dim = dim
        self.values_per_code = dim
        self.points = points
        self.granularity = granularity
        self.group_size = group_size
        self.row_length = row_length
        self.backward = backward
        self.trust = trust
        self.seed = seed
        self.samples = samples
        self.iters = iters
        self.codebook, self.codebook_mse = gaussian_codebook(dim, points, seed, samples, iters)

    def tensors(self) -> dict[str, Tensor]:
        # the codebook comes from Lloyd's algorithm on scipy's quasi-random samples: another scipy (or a lost
        # cache rebuilt elsewhere) may give other codewords, so a checkpoint keeps the ones the run used
        return {"codebook": self.codebook, "codebook_mse": torch.tensor(self.codebook_mse, dtype=torch.float64)}

    def load_tensors(self, saved: dict[str, Tensor]) -> None:
        self.codebook, self.codebook_mse = saved["codebook"].float().cpu(), float(saved["codebook_mse"])

    @property
    def element_bits(self) -> float:
        """Index bits per value, without scales."""
        return math.log2(self.points) / self.dim

    @property
    def radius(self) -> float:
        """Trust radius in units of the group RMS."""
        return self.trust * math.sqrt(self.dim * self.codebook_mse)

    def _check_row(self, row: int) -> None:
        # a vector never spans two rows (with a tensor scale too): a weight's vector stays in one output
        # feature, an activation's in one token; groups are multiples of dim (checked at init)
        if row % self.dim:
            raise ValueError(f"VQ with dim={self.dim} needs rows whose length is a multiple of {self.dim}, got {row}")

    def storage_bits(self, shape: tuple[int, ...]) -> float:
        self._check_row(shape[-1])  # pricing a layer is how its fit is checked (`check_fits`)
        return super().storage_bits(shape)

    def _run(self, x: Tensor, keep: Tensor | None, need_mask: bool) -> tuple[Tensor, Tensor | None]:
        self._check_row(x.shape[-1])
        g = group_view(x.float(), self.granularity, self.group_size)
        kg = None if keep is None else group_view(keep, self.granularity, self.group_size)
        s = rms(g, kg).clamp_min_(TINY)
        u = (g / s).reshape(-1, self.dim)
        codebook = self.codebook.to(u.device)
        q = codebook[nearest(u, codebook)]
        mask = None
        if need_mask and self.backward == "trust":
            inside = (u - q).norm(dim=-1, keepdim=True) <= self.radius
            mask = inside.expand_as(u).reshape(g.shape)
        q = q.reshape(g.shape).mul_(s)
        if kg is not None:
            q = q.mul_(kg)
            mask = None if mask is None else mask | ~kg
        return q.reshape(x.shape).to(x.dtype), None if mask is None else mask.reshape(x.shape)

    def compress(self, x: Tensor) -> Tensor:
        return ops.apply_rule(x, ops.format_key(self, "_run", masks=self.backward == "trust"))

    def compress_sparse(self, x: Tensor, keep: Tensor) -> Tensor:
        if keep.shape != x.shape or keep.dtype != torch.bool:
            raise ValueError(
                f"keep must be a bool tensor of the shape of x {tuple(x.shape)}, got {keep.dtype} {tuple(keep.shape)}"
            )
        return ops.apply_rule(x, ops.format_key(self, "_run", masks=self.backward == "trust"), keep)
