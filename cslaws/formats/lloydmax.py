"""Lloyd-Max: the MSE-optimal non-uniform k-bit grid for Gaussian data (Lloyd 1982; Max 1960), k = 1..4.

Forward: each scale group is divided by its RMS (`s = rms(group)`, see `quant.py`), rounded to the nearest
of the `2^k` Lloyd-Max levels of the standard Gaussian and multiplied back by `s`. The levels are computed
once per k by Lloyd iterations on the Gaussian density (each level moves to the centroid
`(phi(a) - phi(b)) / (Phi(b) - Phi(a))` of its cell `(a, b)`, cell edges at the midpoints between
levels) until no level moves by more than 1e-13, and cached. Rounding: `idx = bucketize(x / s, edges)`,
so a value exactly on an edge goes to the lower level.

Backward: "ste", "clipped" (`|x| <= s * (c_max + w_max / 2)`, with `w_max` the outer cell's width as below) or "trust" (`|q - x| <= trust * s * w(idx)`, with `w(idx)` the width of the value's cell and
an unbounded outer cell taking twice the distance from its level to its inner edge), see `grad.py`.

Not idempotent: the RMS of the quantized group differs from that of the input.
bits_per_value = k + 16 bits per group/row scale (see `quant.py`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from cslaws.formats.base import register_format
from cslaws.formats.grad import Backward
from cslaws.formats.quant import TINY, Granularity, ScalarQuantizer, rms


@lru_cache(maxsize=None)
def lloyd_max_levels(levels: int, tol: float = 1e-13, max_iter: int = 200_000) -> tuple[float, ...]:
    """The `levels` Lloyd-Max reconstruction levels of the standard Gaussian, ascending."""
    c = stats.norm.ppf((np.arange(levels) + 0.5) / levels)  # equal-probability start, already symmetric
    for _ in range(max_iter):
        edges = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]])
        mass = np.diff(stats.norm.cdf(edges))
        new = (stats.norm.pdf(edges[:-1]) - stats.norm.pdf(edges[1:])) / mass
        if np.max(np.abs(new - c)) < tol:
            new = (new - new[::-1]) / 2  # exactly symmetric, so 0 is exactly a cell edge for even counts
            return tuple(float(v) for v in new)
        c = new
    raise RuntimeError(f"Lloyd-Max iterations for {levels} levels did not converge in {max_iter} steps")


def cell_widths(levels: np.ndarray) -> np.ndarray:
    """Width of each level's cell; the two unbounded outer cells take twice their inner half-width."""
    edges = (levels[1:] + levels[:-1]) / 2
    inner = np.diff(edges)
    return np.concatenate([[2 * (edges[0] - levels[0])], inner, [2 * (levels[-1] - edges[-1])]])


@register_format("lloydmax")
class LloydMax(ScalarQuantizer):
    """Gaussian Lloyd-Max grid with 2^k levels, k = 1..4, at the RMS scale of each group."""

    def __init__(
        self,
        bits: int = 4,
        granularity: Granularity = "row",
        group_size: int = 128,
        backward: Backward = "ste",
        trust: float = 0.5,
        row_length: int = 1024,
    ) -> None:
        super().__init__()
        if not (isinstance(bits, int) and 1 <= bits <= 4):
            raise ValueError(f"Lloyd-Max bits must be an integer in [1, 4], got {bits!r}")
        self.bits = bits
        self._set_common(granularity, group_size, backward, trust, row_length)
        lv = np.array(lloyd_max_levels(2**bits))
        widths = cell_widths(lv)
        self._levels = torch.tensor(lv, dtype=torch.float32)
        self._edges = torch.tensor((lv[1:] + lv[:-1]) / 2, dtype=torch.float32)
        self._widths = torch.tensor(widths, dtype=torch.float32)
        self._clip = float(lv[-1] + widths[-1] / 2)

    @property
    def element_bits(self) -> float:
        return float(self.bits)

    def _quantize(self, g: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        s = rms(g, keep).clamp_min_(TINY)
        idx = torch.bucketize(g / s, self._edges.to(g.device))
        q = self._levels.to(g.device)[idx].mul_(s)
        return q, self._widths.to(g.device)[idx].mul_(s), s * self._clip

    def _unit_levels(self) -> Tensor | None:
        return torch.tensor(lloyd_max_levels(2**self.bits), dtype=torch.float64)
