"""Backward rules shared by the scalar quantizers: straight-through, clipped, and QuEST's trust estimator.

Every quantizer computes its forward value `q = Q(x)` without autograd and, when `x` needs a gradient,
a boolean mask of the positions that receive one; the backward pass is `grad_x = grad_q * mask`.

- "ste": straight-through estimator (Bengio et al. 2013): every position gets the gradient (no mask).
- "clipped": no gradient where `|x|` exceeds the clipping bound, as in PACT/LSQ-style clipped STE. Two
  definitions of the bound:
  - the present one (`clip_scale=None`): the format's own edge -- the outer cell edge of an INT grid
    (`L/2` steps from zero), the largest level of an FP grid;
  - QuEST's (`clip_scale=c`, see `clip_bound`): `c` times the outer *level* (Panferov et al. 2025,
    `ClipQuantizer` of IST-DASLab/QuEST: `|x| <= clip_scale * scale` with `scale` the largest level). Its
    1-bit runs used c = 1.25 without and 1.3 with the Hadamard rotation; at 1 bit the outer level is
    sqrt(2/pi) = 0.798 sigma, so c = 1.3 cuts |x| > 1.037 sigma (30% of Gaussian values), where the present
    bound (the 1-bit grid's cell edge, 1.596 sigma) cuts 11%.
- "trust": the trust estimator of Panferov et al. 2025, "QuEST" (sec. 3): gradient only where the
  quantization error is small, `|Q(x) - x| <= trust * step`, with `step` the local grid spacing.
  `trust = 0.5` (half a step) is the default: on a uniform grid every error inside it is at most half a
  step, so only values far outside the grid (clipped outliers) lose their gradient. On a Lloyd-Max grid, whose
  levels are their cells' centroids, not midpoints, a value at the far side of its cell can be more than half
  its cell's width away (2-bit: 0.96 sigma, 0.507 from its level 0.453 in the cell (0, 0.982)), and so lose
  its gradient inside the grid: 1.9% of Gaussian values at 2 bits, 1.7% at 4. With a Hadamard rotation the mask is
  taken in the rotated basis, because that is where the quantizer sees the values.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Backward = Literal["ste", "clipped", "trust"]
BACKWARDS: tuple[str, ...] = ("ste", "clipped", "trust")

def check_backward(backward: str, trust: float) -> None:
    """Raise on an unknown backward rule or a non-positive trust factor."""
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward rule {backward!r}; allowed: {', '.join(BACKWARDS)}")
    if not trust > 0:
        raise ValueError(f"trust must be > 0 (a multiple of the quantization step), got {trust!r}")


def trust_mask(x: Tensor, q: Tensor, threshold: Tensor | float) -> Tensor:
    """QuEST trust mask: True where `|q - x| <= threshold` (inclusive), computed in float32."""
    return (q - x).abs_() <= threshold


def check_clip_scale(clip_scale: float | None) -> None:
    """Raise unless `clip_scale` is None (the format's own clipping edge) or a positive multiple of the outer level."""
    if clip_scale is not None and not (isinstance(clip_scale, (int, float)) and clip_scale > 0):
        raise ValueError(f"clip_scale must be None or > 0 (a multiple of the outer level), got {clip_scale!r}")


def clip_bound(edge: Tensor, outer_level: Tensor, clip_scale: float | None) -> Tensor:
    """The clipped rule's bound: the format's `edge` when `clip_scale` is None, else QuEST's
    `clip_scale * outer_level` (see the module doc for both definitions)."""
    return edge if clip_scale is None else outer_level * clip_scale


def rule_mask(backward: str, x: Tensor, q: Tensor, threshold: Tensor | float, clip: Tensor | float) -> Tensor | None:
    """The mask of rule `backward` for input `x` and output `q`: trust `|q - x| <= threshold`, clipped
    `|x| <= clip`, None (every position) for ste."""
    if backward == "trust":
        return trust_mask(x, q, threshold)
    if backward == "clipped":
        return clip_mask(x, clip)
    return None


def clip_mask(x: Tensor, clip: Tensor | float) -> Tensor:
    """Clipped-STE mask: True where `|x| <= clip` (inclusive)."""
    return x.abs() <= clip
