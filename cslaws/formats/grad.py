"""Backward rules shared by the scalar quantizers: straight-through, clipped, and QuEST's trust estimator.

Every quantizer computes its forward value `q = Q(x)` without autograd and, when `x` needs a gradient,
a boolean mask of the positions that receive one; the backward pass is `grad_x = grad_q * mask`.

- "ste": straight-through estimator (Bengio et al. 2013): every position gets the gradient (no mask).
- "clipped": no gradient where `|x|` exceeds the clipping scale (the outer edge of the grid), as in
  PACT/LSQ-style clipped STE.
- "trust": the trust estimator of Panferov et al. 2025, "QuEST" (sec. 3): gradient only where the
  quantization error is small, `|Q(x) - x| <= trust * step`, with `step` the local grid spacing.
  `trust = 0.5` (half a step) is the default: inside the grid every error is at most half a step, so only
  values far outside the grid (clipped outliers) lose their gradient. With a Hadamard rotation the mask is
  taken in the rotated basis, because that is where the quantizer sees the values.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from torch import Tensor

Backward = Literal["ste", "clipped", "trust"]
BACKWARDS: tuple[str, ...] = ("ste", "clipped", "trust")

#: A quantize function: (x, need_mask) -> (Q(x), mask of positions that get a gradient, or None = all).
QuantizeFn = Callable[[Tensor, bool], "tuple[Tensor, Tensor | None]"]


def check_backward(backward: str, trust: float) -> None:
    """Raise on an unknown backward rule or a non-positive trust factor."""
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward rule {backward!r}; allowed: {', '.join(BACKWARDS)}")
    if not trust > 0:
        raise ValueError(f"trust must be > 0 (a multiple of the quantization step), got {trust!r}")


def trust_mask(x: Tensor, q: Tensor, threshold: Tensor | float) -> Tensor:
    """QuEST trust mask: True where `|q - x| <= threshold` (inclusive), computed in float32."""
    return (q - x).abs_() <= threshold


def clip_mask(x: Tensor, clip: Tensor | float) -> Tensor:
    """Clipped-STE mask: True where `|x| <= clip` (inclusive)."""
    return x.abs() <= clip


class _Rule(torch.autograd.Function):
    """Forward `Q(x)`; backward multiplies the incoming gradient by the saved mask (if any)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, quantize: QuantizeFn) -> Tensor:
        q, mask = quantize(x, ctx.needs_input_grad[0])
        ctx.has_mask = mask is not None
        if mask is not None:
            ctx.save_for_backward(mask)
        return q

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        if not ctx.has_mask:
            return grad, None
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def with_rule(x: Tensor, quantize: QuantizeFn) -> Tensor:
    """Apply `quantize` to `x`, with the backward `grad * mask` where the mask comes from `quantize`."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return quantize(x, False)[0]
    return _Rule.apply(x, quantize)
