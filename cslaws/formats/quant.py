"""Shared machinery of the scalar quantizers: scale granularity, scale statistics, the Gaussian MSE of a
grid, and the `ScalarQuantizer` base class that wires a quantize function to its backward rule.

Granularity says which values share one scale, always along the last dimension (the input features of a
linear layer, for weights and activations alike):

- "tensor": one scale for the whole tensor,
- "row": one scale per row (per output channel of a weight, per token of an activation),
- "group": one scale per `group_size` consecutive values of a row; the row length must be a multiple.

The statistics are computed in float32: `rms = ||g||_2 / sqrt(len(g))` and `absmax = max |g|` over each
scale group `g`; under `compress_sparse` only the survivors count (`rms = ||g * keep||_2 / sqrt(n_keep)`,
`absmax = max |g * keep|`; a group without survivors has rms 0). Scales are floored at the smallest normal
float32 so that an all-zero group divides by a positive number (its values then quantize to the level
nearest zero).

Scale storage: each row/group scale is counted as one 16-bit number (bf16/fp16), but its rounding to 16
bits is not simulated. A per-tensor scale is counted as zero bits per value (amortised over the tensor).
A per-row scale's cost per value depends on the row length, which a format does not know until it is
applied, so `bits_per_value` uses the init arg `row_length` (default 1024) as the reference row.

Backend: quantizers with a fused Triton kernel (`kernel_plan`) take `backend` ("auto": Triton for CUDA
tensors, torch otherwise; see `cslaws.formats.kernels`). The torch code here is the reference the
kernels reproduce.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from cslaws.formats import ops
from cslaws.formats.base import Format
from cslaws.formats.grad import check_backward, clip_mask, trust_mask
from cslaws.formats.kernels import use_triton
from cslaws.formats.kernels.fused import QuantPlan, exact_div, fake_quantize

Granularity = Literal["tensor", "row", "group"]
GRANULARITIES: tuple[str, ...] = ("tensor", "row", "group")
#: Bits charged for one row/group scale (one bf16/fp16 number).
SCALE_BITS = 16
#: Bits charged for a per-tensor scale (one float32 number), spread over the tensor's values.
TENSOR_SCALE_BITS = 32
#: Floor on every scale, so that all-zero groups do not divide by zero.
TINY = torch.finfo(torch.float32).tiny


def check_granularity(granularity: str, group_size: int, row_length: int) -> None:
    """Raise on an unknown granularity or a non-positive group size / reference row length."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; allowed: {', '.join(GRANULARITIES)}")
    if not (isinstance(group_size, int) and group_size > 0):
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if not (isinstance(row_length, int) and row_length > 0):
        raise ValueError(f"row_length must be a positive integer, got {row_length!r}")


def scale_bits(granularity: str, group_size: int, shape: tuple[int, ...], bits: float | None = None) -> float:
    """Bits per value spent on scales in a tensor of `shape` (rows along the last dim): one `bits`-bit
    scale per value of the whole tensor, per row of the real row length, or per group. `bits` defaults to
    the rule of this module: 16 per row/group scale (SCALE_BITS), 32 per tensor scale (TENSOR_SCALE_BITS).
    """
    numel = math.prod(shape)
    if not shape or numel <= 0:
        raise ValueError(f"storage bits need a non-empty tensor shape, got {tuple(shape)}")
    if bits is None:
        bits = TENSOR_SCALE_BITS if granularity == "tensor" else SCALE_BITS
    if granularity == "tensor":
        return bits / numel
    if granularity == "row":
        return bits / shape[-1]
    if shape[-1] % group_size:
        raise ValueError(f"group_size {group_size} does not divide the row length {shape[-1]} (last dim of {tuple(shape)})")
    return bits / group_size


def group_view(x: Tensor, granularity: str, group_size: int) -> Tensor:
    """`x` reshaped so that each scale group is one slice along the last dimension."""
    if granularity == "tensor":
        return x.reshape(1, -1)
    if granularity == "row":
        return x
    n = x.shape[-1]
    if n % group_size:
        raise ValueError(f"group_size {group_size} does not divide the row length {n} (last dim of {tuple(x.shape)})")
    return x.reshape(*x.shape[:-1], n // group_size, group_size)


def rms(g: Tensor, keep: Tensor | None = None) -> Tensor:
    """Root mean square over the last dim (keepdim); over the survivors only when `keep` is given."""
    if keep is None:
        return exact_div(torch.linalg.vector_norm(g, dim=-1, keepdim=True), math.sqrt(g.shape[-1]))
    norm = torch.linalg.vector_norm(g * keep, dim=-1, keepdim=True)
    return norm.div_(keep.sum(-1, keepdim=True, dtype=g.dtype).clamp_min_(1).sqrt_())


def absmax(g: Tensor, keep: Tensor | None = None) -> Tensor:
    """Largest magnitude over the last dim (keepdim); over the survivors only when `keep` is given."""
    a = g.abs() if keep is None else g.abs() * keep
    return a.amax(-1, keepdim=True)


def gaussian_mse(levels: np.ndarray) -> float:
    """Exact MSE of rounding a standard Gaussian to the nearest of `levels` (sorted ascending).

    Cells are bounded by the midpoints between levels; on a cell (a, b) with level c the error is
    int_a^b (x-c)^2 phi(x) dx = M2 - 2c M1 + c^2 M0 with the Gaussian partial moments
    M0 = Phi(b) - Phi(a), M1 = phi(a) - phi(b), M2 = M0 + a phi(a) - b phi(b).
    """
    c = np.asarray(levels, dtype=np.float64)
    edges = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]])
    a, b = edges[:-1], edges[1:]
    pa, pb = stats.norm.pdf(a), stats.norm.pdf(b)
    m0 = stats.norm.cdf(b) - stats.norm.cdf(a)
    m1 = pa - pb
    # x phi(x) -> 0 at +-inf; replace the infinite edges by 0 (where phi is 0 anyway) to avoid inf * 0
    m2 = m0 + np.where(np.isfinite(a), a, 0.0) * pa - np.where(np.isfinite(b), b, 0.0) * pb
    return float(np.sum(m2 - 2 * c * m1 + c**2 * m0))


class ScaledStorage:
    """The storage cost of a quantizer that keeps `element_bits` per value plus one SCALE_BITS scale per tensor,
    row (of `row_length` at the reference row) or group (of `group_size`): scalar and vector quantizers alike."""

    granularity: str
    group_size: int
    row_length: int
    #: Values one stored code stands for: 1 for a scalar quantizer, `dim` for a vector quantizer. Pruning
    #: saves codes only where each value has its own (see `Compose.bits_per_value`).
    values_per_code: int = 1

    @property
    def element_bits(self) -> float:
        """Bits of one quantized value, without scales."""
        raise NotImplementedError

    @property
    def mixes_rows(self) -> bool:
        return self.granularity == "tensor"

    @property
    def bits_per_value(self) -> float:
        per_scale = {"tensor": math.inf, "row": self.row_length, "group": self.group_size}[self.granularity]
        return self.element_bits + SCALE_BITS / per_scale

    def storage_bits(self, shape: tuple[int, ...]) -> float:
        return self.element_bits + scale_bits(self.granularity, self.group_size, shape)


class ScalarQuantizer(ScaledStorage, Format):
    """Base of the scalar quantizers: groups `x`, calls `_quantize`, applies the backward rule.

    Subclasses set `granularity`, `group_size`, `backward`, `trust`, `row_length` and implement
    `_quantize(g, keep) -> (q, step, clip)` on the grouped float32 view `g`: `q` the quantized values,
    `step` the local grid spacing (for the trust mask `|q - g| <= trust * step`) and `clip` the clipping
    edge (for the clipped mask `|g| <= clip`), both broadcastable to `g`.
    """

    granularity: str
    group_size: int
    backward: str
    trust: float
    row_length: int
    #: "auto": Triton for CUDA tensors, torch otherwise (see `cslaws.formats.kernels`); formats with a
    #: fused kernel (`kernel_plan`) take it as an init arg.
    backend: str = "torch"
    family = "scalar"

    def _set_common(self, granularity: str, group_size: int, backward: str, trust: float, row_length: int) -> None:
        """Keep and check the settings every scalar quantizer shares (scale grouping, backward rule)."""
        self.granularity, self.group_size, self.row_length = granularity, group_size, row_length
        self.backward, self.trust = backward, trust
        check_granularity(granularity, group_size, row_length)
        check_backward(backward, trust)

    def _quantize(self, g: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor | float]:
        raise NotImplementedError

    def _group(self, x: Tensor) -> Tensor:
        return group_view(x, self.granularity, self.group_size)

    def _run(self, x: Tensor, keep: Tensor | None, need_mask: bool) -> tuple[Tensor, Tensor | None]:
        g = self._group(x.float())
        kg = None if keep is None else self._group(keep)
        q, step, clip = self._quantize(g, kg)
        mask = None
        if need_mask and self.backward == "trust":
            mask = trust_mask(g, q, step * self.trust)
        elif need_mask and self.backward == "clipped":
            mask = clip_mask(g, clip)
        if kg is not None:
            q = q.mul_(kg)
            # pruned positions pass the gradient through: the sparsifier's own backward decides for them
            mask = None if mask is None else mask.logical_or_(kg.logical_not())
        out = q.reshape(x.shape).to(x.dtype)
        return out, None if mask is None else mask.reshape(x.shape)

    def gaussian_grid(self) -> Tensor | None:
        """The levels at unit scale (`_unit_levels`), except with per-group scales: a group's RMS, of a few
        dozen values, is not the data's sigma, so the quantizer that runs does not round to the levels at
        sigma (int4 in groups of 32 errs 9% less than their integral says) and its GMSE is sampled."""
        return None if self.granularity == "group" else self._unit_levels()

    def _unit_levels(self) -> Tensor | None:
        """The reconstruction levels for a scale of exactly sigma = 1, where the format has fixed ones."""
        return None

    def kernel_plan(self) -> QuantPlan | None:
        """What the fused Triton kernel computes for this format; None when it has no kernel."""
        return None

    def _plan(self) -> QuantPlan:
        plan = self.kernel_plan()
        if plan is None:
            raise ValueError(f"{type(self).__name__} has no Triton kernel; use backend='torch'")
        return plan

    def _rule_key(self) -> str:
        """The key of `_run` for the custom op `cslaws::rule` (`ops.py`): the torch path as one opaque call."""
        return ops.format_key(self, "_run", masks=self.backward != "ste")

    def compress(self, x: Tensor) -> Tensor:
        if use_triton(x, self.backend):
            return fake_quantize(x, self._plan())
        return ops.apply_rule(x, self._rule_key())

    def compress_sparse(self, x: Tensor, keep: Tensor) -> Tensor:
        if keep.shape != x.shape or keep.dtype != torch.bool:
            raise ValueError(
                f"keep must be a bool tensor of the shape of x {tuple(x.shape)}, got {keep.dtype} {tuple(keep.shape)}"
            )
        if use_triton(x, self.backend):
            return fake_quantize(x, self._plan(), keep=keep)
        return ops.apply_rule(x, self._rule_key(), keep)
