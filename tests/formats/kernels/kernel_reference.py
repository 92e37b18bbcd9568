"""Float64 references for the kernel checks: the blockwise Hadamard transform and, for a format, where each
value sits relative to the format's decision points (rounding boundaries and mask edges), so that the
checks can tell a genuine kernel error from a float32 rounding difference at a boundary."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from cslaws.formats.fp import ELEMENTS, FP, MX, NVFP4, Element
from cslaws.formats.hadamard import Hadamard, rotation_block
from cslaws.formats.int import Int, int_step
from cslaws.formats.quant import absmax, group_view

#: A value counts as "at a boundary" within this relative distance (float32 ulps are ~1e-7).
NEAR = 1e-5


def hadamard64(x: Tensor, b: int) -> Tensor:
    """`x` (any float dtype) times the normalised Hadamard matrix on blocks of `b`, in float64."""
    h = torch.tensor(scipy.linalg.hadamard(b) / math.sqrt(b), dtype=torch.float64)
    return (x.double().reshape(-1, b) @ h).reshape(x.shape)


def element_points(el: Element, backward: str) -> np.ndarray:
    """Decision points of an element grid in units of the scale: the midpoints between neighbouring values
    and the mask's edge: the largest value (clipped) or the saturation edge at trust 1/2."""
    values = {0.0}
    for e in range(el.emin, el.emax + 1):
        for m in range(2**el.mbits):
            values.add((1 + m / 2**el.mbits) * 2.0**e)
            values.add(m / 2**el.mbits * 2.0**el.emin)  # subnormals
    v = np.array(sorted(x for x in values if x <= el.max))
    edge = {"clipped": [el.max], "trust": [el.max + 2.0 ** (el.emax - el.mbits) / 2], "ste": []}[backward]
    pos = np.concatenate([(v[1:] + v[:-1]) / 2, edge])
    return np.concatenate([-pos, pos])


def int_points(fmt: Int) -> np.ndarray:
    """Decision points of an int grid in units of the step (mask edges at trust 1/2 and clip included)."""
    if fmt.levels % 2 == 0:
        half = fmt.levels // 2
        return np.arange(-half, half + 1, dtype=np.float64)
    half = (fmt.levels - 1) // 2
    return np.arange(-half, half + 2, dtype=np.float64) - 0.5


def round_element64(v: Tensor, el: Element) -> Tensor:
    """Float64 rounding onto an element grid: nearest, ties to even, saturating (OCP MX v1.0 sec. 5.3)."""
    e = (torch.frexp(v).exponent - 1).clamp(el.emin, el.emax)
    quantum = torch.exp2((e - el.mbits).double())
    return (v / quantum).round().mul(quantum).clamp(-el.max, el.max)


def scale64(fmt, g: Tensor) -> Tensor:
    """The float64 scale of each group of `g` (grouped view) by the format's definition."""
    amax = absmax(g)
    if isinstance(fmt, Int):
        return int_step(g, fmt.levels, fmt.scale)
    if isinstance(fmt, NVFP4):
        e2m1, e4m3 = ELEMENTS["e2m1"], ELEMENTS["e4m3"]
        outer = amax.amax() if fmt.outer_scale == "tensor" else amax.amax(dim=-2, keepdim=True)
        s_t = outer / (e2m1.max * e4m3.max)
        return round_element64(amax / (e2m1.max * s_t), e4m3) * s_t
    if isinstance(fmt, MX):
        return torch.exp2((torch.frexp(amax).exponent - 1 - fmt._el.emax).clamp(-127, 127).double())
    if isinstance(fmt, FP):
        return amax / fmt._el.max
    raise TypeError(f"no reference scale for {fmt!r}")


def unit_positions(fmt, r: Tensor) -> tuple[Tensor, np.ndarray]:
    """`r` (float64, in the basis the quantizer sees) divided by its group's scale, and the decision points."""
    g = group_view(r, fmt.granularity, fmt.group_size)
    t = g / scale64(fmt, g)
    if isinstance(fmt, Int):
        points = int_points(fmt)
    else:
        points = element_points(ELEMENTS["e2m1"] if isinstance(fmt, NVFP4) else fmt._el, fmt.backward)
    return t.reshape(r.shape), points


def at_boundary(fmt, x: Tensor) -> Tensor:
    """True where the float64 value the quantizer of `fmt` sees lies within NEAR (relative) of one of its
    decision points: there a float32 rounding difference may legitimately flip the decision."""
    inner = fmt.format if isinstance(fmt, Hadamard) else fmt
    r = x.double()
    if isinstance(fmt, Hadamard):
        r = hadamard64(r, rotation_block(x.shape[-1], fmt.block))
    t, points = unit_positions(inner, r)
    t_np = t.numpy()
    idx = np.clip(np.searchsorted(points, t_np), 1, len(points) - 1)
    dist = np.minimum(np.abs(t_np - points[idx - 1]), np.abs(t_np - points[idx]))
    return torch.from_numpy(dist <= NEAR * np.maximum(np.abs(t_np), 1.0))


def to_quantizer_basis(fmt, y: Tensor, grad: bool) -> Tensor:
    """Outputs (`grad=False`) or input gradients in the basis where the quantizer decides, float64: a
    "full" Hadamard output and every Hadamard input gradient are rotated (H is its own inverse)."""
    if isinstance(fmt, Hadamard) and (grad or fmt.variant == "full"):
        return hadamard64(y, rotation_block(y.shape[-1], fmt.block))
    return y.double()


def run(fmt, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`fmt.compress(x)` and the gradient it passes back for `grad`."""
    x = x.clone().requires_grad_(True)
    y = fmt.compress(x)
    y.backward(grad)
    return y.detach(), x.grad
