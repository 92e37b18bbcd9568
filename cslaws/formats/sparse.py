"""Sparsity formats: magnitude pruning, N:M semi-structured pruning and per-token top-k activations.

Forward: `x * keep`, where `keep` is recomputed from the current values on every call (dynamic masks:
a weight that grows back into the top-k is kept again at the next step).

- `Magnitude`: unstructured; the ``round((1 - sparsity) n)`` largest magnitudes survive per tensor or per
  row (last dim). Optional gradual schedule (Zhu & Gupta 2017, "To prune, or not to prune", eq. 1): the
  sparsity follows the cubic ramp ``s(f) = s_target (1 - (1 - u)^3)``, ``u = clip((f - start) / (end -
  start), 0, 1)``, where f is the fraction of training done (`Format.set_progress`).
- `NM`: in every group of M consecutive values along the last dim the N largest magnitudes survive
  (2:4 as in NVIDIA Ampere sparse tensor cores, Mishra et al. 2021, "Accelerating Sparse Deep Neural
  Networks").
- `TopK`: activation sparsity, the largest magnitudes of each token (row = last dim), i.e. `Magnitude`
  per row without a schedule.

Ties: magnitudes equal to the k-th largest are kept in index order (lowest index first), so the number of
survivors is always exact and a kernel can reproduce the choice.

Backward (`backward`):
- "forward": the forward mask; pruned values get no gradient.
- "ste": straight-through; every value gets its gradient.
- "rbbm": the RMSE-banded backward mask of Panferov et al. 2025, "Unified Scaling Laws for Compressed
  Representations", sec. 5.2. With T_k the smallest surviving magnitude and T_p = RMS(x) Phi^-1(0.5 + p)
  (the magnitude below which a fraction 2p of a Gaussian with that RMS lies), values with
  min(T_p, T_k) < |x| < max(T_p, T_k) get no gradient and all others do. T_k is taken over the scope the
  mask is chosen in (tensor, row, or N:M group); the RMS over the tensor for per-tensor pruning and over
  the row otherwise.

Storage (`bits_per_value`, alone: bf16 values): ``density * 16 + metadata``, where the metadata is a 1-bit
presence mask for unstructured patterns (`Magnitude`, `TopK`) -- index coding costs ``density * log2(row)``
bits and only wins above ~90% sparsity for rows of 1024 or more, which no shipped config reaches -- and
``log2(C(M, N)) / M`` for N:M (the index of the pattern among the C(M, N) possible). A scheduled
`Magnitude` is charged at its target sparsity.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from scipy.stats import norm
from torch import Tensor

from cslaws.formats import ops
from cslaws.formats.base import Format, register_format

Backward = Literal["forward", "ste", "rbbm"]
BACKWARDS = ("forward", "ste", "rbbm")

#: Storage of an uncompressed (bf16) value, the value cost of a sparsifier used alone.
DENSE_BITS = 16.0


def kept_count(n: int, sparsity: float) -> int:
    """Survivors among n values: n minus the nearest integer to sparsity * n (halves round up)."""
    return n - math.floor(sparsity * n + 0.5)


def topk_mask(a: Tensor, k: int, dim: int = -1) -> Tensor:
    """Keep the k largest entries of `a` (magnitudes, >= 0) along `dim`; ties go to the lowest indices.

    With t the k-th largest value: everything above t is kept, and of the values equal to t the first
    (k - #above) in index order. t comes from `kth_largest` (a `topk`, fast on GPUs, where `kthvalue` is
    40-200x slower). The running count of ties is only needed when some tie must be dropped; on a GPU it is
    always taken, since checking would wait for the device.
    """
    if k <= 0:
        return torch.zeros_like(a, dtype=torch.bool)
    t = kth_largest(a, k, dim)
    above = a > t
    tie = a == t
    need = k - above.sum(dim=dim, keepdim=True)
    if not a.is_cuda and torch.equal(tie.sum(dim=dim, keepdim=True), need):
        return above | tie
    return above | (tie & (tie.cumsum(dim=dim) <= need))


def kth_largest(a: Tensor, k: int, dim: int = -1) -> Tensor:
    """The k-th largest entry of `a` along `dim` (kept, size 1), 1 <= k <= n: the smallest of the k largest,
    or the largest of the n - k + 1 smallest, whichever `topk` is shorter."""
    n = a.shape[dim]
    if k <= n - k + 1:
        return a.topk(k, dim=dim, largest=True, sorted=False).values.amin(dim=dim, keepdim=True)
    return a.topk(n - k + 1, dim=dim, largest=False, sorted=False).values.amax(dim=dim, keepdim=True)


def nm_mask(a: Tensor, n: int) -> Tensor:
    """Keep the n largest of each group along the last dim of `a` (..., M); ties go to the lowest index.

    A value survives iff fewer than n values of its group beat it, where a beats b if it is larger, or
    equal and at a lower index. M comparisons of the whole tensor; M is small (4, 8).
    """
    m = a.shape[-1]
    idx = torch.arange(m, device=a.device)
    beaten = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
    for j in range(m):
        aj = a[..., j : j + 1]
        beaten += (aj > a) | ((aj == a) & (idx > j))
    return beaten < n


def band_mask(a: Tensor, t_k: Tensor, t_p: Tensor) -> Tensor:
    """RBBM gradient mask: False (no gradient) strictly between min(T_p, T_k) and max(T_p, T_k)."""
    lo = torch.minimum(t_k, t_p)
    hi = torch.maximum(t_k, t_p)
    return ~((a > lo) & (a < hi))


def _check_backward(backward: str, rbbm_p: Optional[float]) -> None:
    if backward not in BACKWARDS:
        raise ValueError(f"backward={backward!r} is not a sparse backward mask; allowed: {', '.join(BACKWARDS)}")
    if backward == "rbbm":
        if rbbm_p is None or not 0.0 < rbbm_p < 0.5:
            raise ValueError(f"backward='rbbm' needs rbbm_p in the open interval (0, 0.5), got rbbm_p={rbbm_p!r}")
    elif rbbm_p is not None:
        raise ValueError(f"rbbm_p={rbbm_p!r} is only used by backward='rbbm', got backward={backward!r}")


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} must lie in [0, 1) (fraction of values set to zero)")


class Sparsifier(Format):
    """A format that zeroes values by a mask; composable with a quantizer through `Compose`.

    Subclasses implement `keep_mask`, `kept_threshold` (T_k, for "rbbm") and `rms_dim` (the scope of T_p).
    """

    backward: str
    rbbm_p: Optional[float]
    family = "sparse"

    def _init_backward(self, backward: str, rbbm_p: Optional[float]) -> None:
        _check_backward(backward, rbbm_p)
        self.backward = backward
        self.rbbm_p = rbbm_p
        # Phi^-1(0.5 + p): T_p in units of the RMS.
        self._tp_factor = float(norm.ppf(0.5 + rbbm_p)) if rbbm_p is not None else math.nan

    def keep_mask(self, x: Tensor) -> Tensor:
        """The forward mask of the values `x`: True where a value survives."""
        raise NotImplementedError

    def kept_threshold(self, a: Tensor, keep: Tensor) -> Tensor:
        """T_k: the smallest surviving magnitude of each scope of `a`, broadcastable to `a`."""
        raise NotImplementedError

    @property
    def rms_dim(self) -> int | None:
        """The dim T_p's RMS is taken over: -1 for rows, None for the whole tensor."""
        return -1

    @property
    def density(self) -> float:
        """Fraction of values stored (at the target sparsity)."""
        raise NotImplementedError

    def kept_fraction(self, shape: tuple[int, ...]) -> float:
        """Fraction of the values of a tensor of `shape` stored (at the target sparsity): `density`, unless
        a whole number of survivors per row or tensor makes it another on that shape."""
        return self.density

    @property
    def metadata_bits(self) -> float:
        """Bits per value (dense position) spent on the sparsity pattern."""
        raise NotImplementedError

    def sparsify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`x` with the pruned values zeroed (differentiable by the backward mask) and the keep-mask.

        The mask is chosen and applied by the custom ops `cslaws::keep_mask` and `cslaws::masked`
        (`ops.py`: opaque to `torch.compile`); the backward masks are plain torch.
        """
        keep = ops.keep_mask(x, ops.format_key(self, "keep_mask"))
        if self.backward == "forward":
            grad_keep: Tensor | None = keep
        elif self.backward == "ste":
            grad_keep = None
        else:
            a = x.detach().abs()
            from cslaws.formats.quant import rms  # here: quant imports the kernels, which import this module

            g = x.detach().float()
            # T_p's RMS per row, or over the whole tensor (one row of all its values)
            t_p = rms(g if self.rms_dim == -1 else g.reshape(1, -1)) * self._tp_factor
            grad_keep = band_mask(a, self.kept_threshold(a, keep), t_p)
        return ops.masked(x, keep, grad_keep), keep

    def compress(self, x: Tensor) -> Tensor:
        return self.sparsify(x)[0]

    @property
    def bits_per_value(self) -> float:
        return self.density * DENSE_BITS + self.metadata_bits

    def storage_bits(self, shape: tuple[int, ...]) -> float:
        return self.kept_fraction(shape) * DENSE_BITS + self.metadata_bits


@register_format("magnitude")
class Magnitude(Sparsifier):
    """Unstructured magnitude pruning per tensor or per row, optionally on a cubic schedule."""

    def __init__(
        self,
        sparsity: float = 0.5,
        per_row: bool = False,
        backward: Backward = "forward",
        rbbm_p: Optional[float] = None,
        schedule: Literal["constant", "cubic"] = "constant",
        ramp_start: float = 0.0,
        ramp_end: float = 0.5,
    ) -> None:
        super().__init__()
        _check_sparsity(sparsity)
        if schedule not in ("constant", "cubic"):
            raise ValueError(f"schedule={schedule!r} is not a pruning schedule; allowed: constant, cubic")
        if not 0.0 <= ramp_start < ramp_end <= 1.0:
            raise ValueError(
                f"the pruning ramp needs 0 <= ramp_start < ramp_end <= 1 (fractions of training), "
                f"got ramp_start={ramp_start!r}, ramp_end={ramp_end!r}"
            )
        self.sparsity = sparsity
        self.per_row = per_row
        self.schedule = schedule
        self.ramp_start = ramp_start
        self.ramp_end = ramp_end
        self._init_backward(backward, rbbm_p)

    @property
    def current_sparsity(self) -> float:
        """Sparsity at the current training progress (the target when the schedule is constant)."""
        if self.schedule == "constant":
            return self.sparsity
        u = min(max((self.progress - self.ramp_start) / (self.ramp_end - self.ramp_start), 0.0), 1.0)
        return self.sparsity * (1.0 - (1.0 - u) ** 3)

    def keep_mask(self, x: Tensor) -> Tensor:
        a = x.abs()
        if self.per_row:
            return topk_mask(a, kept_count(a.shape[-1], self.current_sparsity), dim=-1)
        return topk_mask(a.reshape(-1), kept_count(a.numel(), self.current_sparsity), dim=0).view_as(a)

    def kept_threshold(self, a: Tensor, keep: Tensor) -> Tensor:
        survivors = a.masked_fill(~keep, math.inf)
        return survivors.amin(dim=-1, keepdim=True) if self.per_row else survivors.amin()

    @property
    def rms_dim(self) -> int | None:
        return -1 if self.per_row else None

    @property
    def mixes_rows(self) -> bool:
        return not self.per_row

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def kept_fraction(self, shape: tuple[int, ...]) -> float:
        # the survivors `keep_mask` keeps at the end of the schedule: 10 of a row of 24 at sparsity 0.6, not 9.6
        n = shape[-1] if self.per_row else math.prod(shape)
        return kept_count(n, self.sparsity) / n

    @property
    def metadata_bits(self) -> float:
        return 1.0


@register_format("topk")
class TopK(Magnitude):
    """Activation sparsity: the largest magnitudes of each token (last dim) survive."""

    def __init__(self, sparsity: float = 0.5, backward: Backward = "forward", rbbm_p: Optional[float] = None) -> None:
        super().__init__(sparsity=sparsity, per_row=True, backward=backward, rbbm_p=rbbm_p)


@register_format("nm")
class NM(Sparsifier):
    """N:M semi-structured sparsity: N survivors in each group of M consecutive values of a row."""

    def __init__(self, n: int = 2, m: int = 4, backward: Backward = "forward", rbbm_p: Optional[float] = None) -> None:
        super().__init__()
        if not (isinstance(n, int) and isinstance(m, int)) or not 1 <= n <= m:
            raise ValueError(f"N:M sparsity needs integers 1 <= N <= M, got N={n!r}, M={m!r}")
        self.n = n
        self.m = m
        self._init_backward(backward, rbbm_p)

    def _check_row(self, row: int) -> None:
        if row % self.m:
            raise ValueError(
                f"{self.n}:{self.m} sparsity needs rows whose length is a multiple of M={self.m}, got {row}"
            )

    def _groups(self, t: Tensor) -> Tensor:
        self._check_row(t.shape[-1])
        return t.unflatten(-1, (t.shape[-1] // self.m, self.m))

    def kept_fraction(self, shape: tuple[int, ...]) -> float:
        # N of every M on any row that splits into groups; pricing a layer is how its fit is checked (`check_fits`)
        self._check_row(shape[-1])
        return self.density

    def keep_mask(self, x: Tensor) -> Tensor:
        return nm_mask(self._groups(x.abs()), self.n).flatten(-2)

    def kept_threshold(self, a: Tensor, keep: Tensor) -> Tensor:
        survivors = self._groups(a.masked_fill(~keep, math.inf))
        return survivors.amin(dim=-1, keepdim=True).expand_as(survivors).flatten(-2)

    @property
    def density(self) -> float:
        return self.n / self.m

    @property
    def metadata_bits(self) -> float:
        return math.log2(math.comb(self.m, self.n)) / self.m
