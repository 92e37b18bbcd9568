"""INT-k: symmetric uniform integer grids with a per-tensor/row/group scale, and ternary (1.58-bit).

Forward: each scale group is rounded to the nearest of `L` uniformly spaced levels, the centres of `L`
equal cells that tile the clipping range `[-clip, clip]`, so `step = 2 clip / L`:

- mid-rise (`grid="midrise"`, default): `L = 2^k` levels `+-step/2, +-3 step/2, ...` (no zero level);
  `q = (clamp(floor(x / step), -L/2, L/2 - 1) + 0.5) * step` -- a value exactly on a cell edge goes to
  the upper cell (`floor`);
- mid-tread (`grid="midtread"`): `L = 2^k - 1` levels `0, +-step, ...`;
  `q = clamp(round_half_even(x / step), -(L-1)/2, (L-1)/2) * step`;
- ternary (`Ternary`): the mid-tread grid with `L = 3` levels `-step, 0, +step`.

Order of operations (a kernel must follow it): float32 division `x / step`, then floor/round, then clamp
of the integer index, then one multiply by `step`.

Scale (`scale=`):

- "gaussian": `clip = alpha_L * rms(group)`, with `alpha_L` the clip that minimises the MSE of a standard
  Gaussian rounded to this grid, computed once per `L` (exact Gaussian partial moments, minimised with
  `scipy.optimize.minimize_scalar`, cached) -- the Gaussian-optimal scale of QuEST (Panferov et al. 2025,
  sec. 3) and of the uniform-quantizer tables of Max (1960);
- "absmax": `step = 2 absmax(group) / (L - 1)`, so the largest level equals the group's absmax and the
  extreme value is reproduced exactly.

Backward: "ste", "clipped" (`|x| <= clip`, or with `clip_scale=c` QuEST's `|x| <= c * outer level`,
the outer level being `step (L - 1) / 2`) or "trust" (`|q - x| <= trust * step`), see `grad.py`. A
`clip_scale` has no Triton kernel: under `backend="auto"` such a format runs the torch code on every
device (inside `Hadamard` the rotations still run on Triton), and `backend="triton"` is an error.

Idempotence: with absmax scales `compress(compress(x)) == compress(x)` up to float32 rounding of the
recomputed scale (levels are cell centres, far from any rounding boundary); with Gaussian scales it does
not hold, since the RMS of the quantized group differs from that of the input.

bits_per_value = k (ternary: log2 3) + 16 bits per group/row scale (see `quant.py` for the rule).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, Optional

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from cslaws.formats.base import register_format
from cslaws.formats.grad import Backward, check_clip_scale, clip_bound
from cslaws.formats.kernels import Backend, check_backend
from cslaws.formats.kernels.fused import QuantPlan
from cslaws.formats.quant import TINY, Granularity, ScalarQuantizer, absmax, gaussian_mse, rms

Grid = Literal["midrise", "midtread"]
Scale = Literal["gaussian", "absmax"]
GRIDS: tuple[str, ...] = ("midrise", "midtread")
SCALES: tuple[str, ...] = ("gaussian", "absmax")


def int_levels(bits: int, grid: str) -> int:
    """Number of levels of the k-bit grid: 2^k mid-rise, 2^k - 1 mid-tread."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; allowed: {', '.join(GRIDS)}")
    low = 1 if grid == "midrise" else 2
    if not (isinstance(bits, int) and low <= bits <= 8):
        raise ValueError(f"bits must be an integer in [{low}, 8] for a {grid} grid, got {bits!r}")
    return 2**bits if grid == "midrise" else 2**bits - 1


def unit_grid(levels: int) -> np.ndarray:
    """The `levels` cell centres tiling [-1, 1]: (2i - L + 1) / L for i = 0..L-1."""
    return (2 * np.arange(levels) - levels + 1) / levels


@lru_cache(maxsize=None)
def gaussian_clip(levels: int) -> float:
    """The clip `alpha` minimising the standard-Gaussian MSE of the grid `alpha * unit_grid(levels)`."""
    grid = unit_grid(levels)
    res = minimize_scalar(lambda a: gaussian_mse(a * grid), bounds=(1e-3, 12.0), method="bounded", options={"xatol": 1e-10})
    if not res.success:
        raise RuntimeError(f"Gaussian-optimal clip for {levels} levels did not converge: {res.message}")
    return float(res.x)


def int_step(g: Tensor, levels: int, scale: str, keep: Tensor | None = None) -> Tensor:
    """Grid spacing per scale group (last dim of `g`, keepdim), floored at the smallest normal float32:
    gaussian `step = rms * c` with `c = 2 alpha_L / L` rounded once to float32; absmax
    `step = absmax * c` with `c = 2 / (L - 1)` rounded to float32."""
    if scale == "gaussian":
        step = rms(g, keep).mul_(2 * gaussian_clip(levels) / levels)
    else:
        step = absmax(g, keep).mul_(2 / (levels - 1))
    return step.clamp_min_(TINY)


def int_quantize(x: Tensor, step: Tensor, levels: int) -> Tensor:
    """Round `x` to the nearest of `levels` cell-centred levels of spacing `step` (see module doc)."""
    t = x / step
    if levels % 2 == 0:
        half = levels // 2
        return t.floor_().clamp_(-half, half - 1).add_(0.5).mul_(step)
    half = (levels - 1) // 2
    return t.round_().clamp_(-half, half).mul_(step)


@register_format("int")
class Int(ScalarQuantizer):
    """Symmetric k-bit integer grid, k = 1..8 (mid-rise) or 2..8 (mid-tread), with a shared scale."""

    def __init__(
        self,
        bits: int = 4,
        grid: Grid = "midrise",
        scale: Scale = "gaussian",
        granularity: Granularity = "row",
        group_size: int = 128,
        backward: Backward = "ste",
        trust: float = 0.5,
        row_length: int = 1024,
        backend: Backend = "auto",
        clip_scale: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        self.bits = bits
        self.grid = grid
        self.scale = scale
        self.levels = int_levels(bits, grid)
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
        self._set_common(granularity, group_size, backward, trust, row_length)
        check_clip_scale(clip_scale)
        if clip_scale is not None and backend == "triton":
            raise ValueError(f"clip_scale={clip_scale!r} has no Triton kernel; use backend='torch' or 'auto'")
        self.clip_scale = clip_scale
        if clip_scale is not None:
            self.backend = "torch"  # QuEST's clip bound has no kernel: "auto" means the torch code here
        if scale == "gaussian":
            gaussian_clip(self.levels)  # computed (and cached) now, not inside the first training step

    @property
    def element_bits(self) -> float:
        return float(self.bits)

    def _quantize(self, g: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        step = int_step(g, self.levels, self.scale, keep)
        clip = clip_bound(step * (self.levels / 2), step * ((self.levels - 1) / 2), self.clip_scale)
        return int_quantize(g, step, self.levels), step, clip

    def kernel_plan(self) -> QuantPlan | None:
        if self.clip_scale is not None:
            return None  # the kernel's clipped bound is the outer cell edge only
        # the multipliers of `int_step`, so that the kernel's step is the same float32 product
        stat, mult = ("rms", 2 * gaussian_clip(self.levels) / self.levels) if self.scale == "gaussian" else ("absmax", 2 / (self.levels - 1))
        return QuantPlan("int", self.granularity, self.group_size, self.backward, self.trust, levels=self.levels, stat=stat, mult=mult)

    def _unit_levels(self) -> Tensor | None:
        if self.scale != "gaussian":
            return None
        return torch.from_numpy(gaussian_clip(self.levels) * unit_grid(self.levels))


@register_format("ternary")
class Ternary(Int):
    """Ternary weights {-s, 0, +s} (1.58 bits: log2 3), the mid-tread grid with three levels."""

    def __init__(
        self,
        scale: Scale = "gaussian",
        granularity: Granularity = "row",
        group_size: int = 128,
        backward: Backward = "ste",
        trust: float = 0.5,
        row_length: int = 1024,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(2, "midtread", scale, granularity, group_size, backward, trust, row_length, backend)

    @property
    def element_bits(self) -> float:
        return math.log2(3)
