"""Hadamard rotation around an inner format, as in QuEST (Panferov et al. 2025, sec. 3).

Forward: `x -> x H` with `H` the normalised Walsh-Hadamard matrix (`H = H^T = H^-1`, entries
`+-1/sqrt(b)`) applied block-diagonally on blocks of `b` consecutive values of the last dimension; the
rotated values go through the inner format. The rotation spreads outliers over the block, so the rotated
values are close to Gaussian and the inner format's Gaussian-optimal scale fits them.

- `variant="full"`: rotate, compress, rotate back: `x -> C(x H) H`; a drop-in for any layer.
- `variant="half"`: rotate and compress, and stay in the rotated basis: `x -> C(x H)`. Right only when
  both operands of `y = x W^T` are rotated alike, since `(x H)(W H)^T = x W^T`; the format says so with
  `keeps_rotated_basis` and `rotation_key`, which `CompressedLinear` checks on both sides. It saves two
  transforms per operand and step.

Backward: the rotation is linear and orthogonal, so its backward is the same transform of the gradient;
the inner format's rule (e.g. the trust mask) therefore acts in the rotated basis.

Block size: the largest power of two that is at most `block` (default 128) and divides the row length
`n`, i.e. `min(block, n & -n)`: `block` itself when `n` is a multiple of it, the whole row when `n` is a
smaller power of two, and for rows such as 96 or 192 the largest power-of-two divisor (32, 64).

The transform (`fwht`) is a fast Walsh-Hadamard transform in O(n log b): `H_b = H_(b/16) kron H_16`,
with the radix-16 stage `H_16` done as one small matmul over runs of 16 values (the four radix-2 stages
with the shortest strides, which are the slow ones as elementwise passes in torch on a CPU), then
radix-2 butterflies for the remaining log2(b/16) stages. Computed in float32 whatever the autocast
settings (`rotate` runs it as the custom op `cslaws::fwht` with autocast off, see `ops.py`). The matmul
stage runs only where a float32 matmul is exact float32: on a CPU at the default matmul precision
("highest"). On a GPU (TF32 under `set_float32_matmul_precision("high")`), or with a reduced CPU matmul
precision, the radix-16 stage is butterflies too, so the rotation stays float32 like the Triton kernel's.

Backend: on Triton (`backend`, see `cslaws.formats.kernels`) rotation, inner quantizer, mask and rotation
back run as one fused kernel when the inner format has one, else the rotations run as Triton transforms
around the inner format.

GMSE: the rotation is orthogonal, so on i.i.d. Gaussian data the rotated values are again i.i.d.
Gaussian and the error is the inner format's; `gaussian_grid` is the inner one. With "half" the output is
in the rotated basis: its error is `compress(x) - fwht(x)`, not `compress(x) - x`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal

import scipy.linalg
import torch
from torch import Tensor

from cslaws.formats import ops
from cslaws.formats.base import Format, register_format
from cslaws.formats.kernels import Backend, check_backend, use_triton
from cslaws.formats.kernels import fused

Variant = Literal["full", "half"]
VARIANTS: tuple[str, ...] = ("full", "half")
RADIX = 16


def rotation_block(n: int, block: int) -> int:
    """The block size used on rows of length `n`: the largest power of two <= `block` dividing `n`."""
    b = min(block, n & -n)
    if b < 2:
        raise ValueError(f"a Hadamard rotation needs an even row length, got {n}")
    return b


@lru_cache(maxsize=None)
def _first_stage(f: int, block: int, device: torch.device) -> Tensor:
    """The unnormalised H_f scaled by 1/sqrt(block): the whole normalisation is folded into stage one."""
    return torch.tensor(scipy.linalg.hadamard(f) / math.sqrt(block), dtype=torch.float32, device=device)


def _exact_matmul(x: Tensor) -> bool:
    """Whether a float32 matmul on `x`'s device rounds like float32: CPU at "highest" precision only."""
    return x.device.type == "cpu" and torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee")


def fwht(x: Tensor, block: int) -> Tensor:
    """Normalised Walsh-Hadamard transform of float32 `x` on blocks of `block` (a power of two) along the
    last dim: each block `v` becomes `v H_block`.

    Stage one applies `H_f / sqrt(block)`, f = min(16, block), to each run of f values as one matmul (the
    low four index bits); the remaining index bits are radix-2 butterflies `(a, b) -> (a + b, a - b)` on
    halves of size h = f, 2f, ..., block/2, written into a second buffer (no autograd: `rotate` wraps it).
    """
    matmul = _exact_matmul(x)
    if matmul:
        f = min(RADIX, block)
        y = (x.reshape(-1, f) @ _first_stage(f, block, x.device)).view(-1, block)
    else:
        f, y = 1, x.reshape(-1, block).clone()  # a copy: the butterflies below reuse their input buffer
    spare = torch.empty_like(y) if f < block else y
    h = f
    while h < block:
        src = y.view(-1, block // (2 * h), 2, h)
        dst = spare.view(-1, block // (2 * h), 2, h)
        torch.add(src[:, :, 0], src[:, :, 1], out=dst[:, :, 0])
        torch.sub(src[:, :, 0], src[:, :, 1], out=dst[:, :, 1])
        y, spare = spare, y
        h *= 2
    if not matmul:
        y.mul_(block**-0.5)  # one multiply at the end, as the Triton kernel's `_fwht` does
    return y.view(x.shape)


def rotate(x: Tensor, block: int) -> Tensor:
    """`fwht` of `x` cast to float32, with autograd (backward: the same transform of the gradient), as the
    custom op `cslaws::fwht` (autocast off; opaque to `torch.compile`)."""
    return ops.rotate(x, block)


@register_format("hadamard")
class Hadamard(Format):
    """Hadamard-rotate along the last dim, compress with the inner format, optionally rotate back."""

    def __init__(self, format: Format, block: int = 128, variant: Variant = "full", backend: Backend = "auto") -> None:
        super().__init__()
        self.backend = check_backend(backend)
        if not isinstance(format, Format):
            raise TypeError(f"Hadamard needs an inner Format, got {format!r}")
        if not (isinstance(block, int) and block >= 2 and block & (block - 1) == 0):
            raise ValueError(f"Hadamard block must be a power of two >= 2, got {block!r}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown Hadamard variant {variant!r}; allowed: {', '.join(VARIANTS)}")
        if format.keeps_rotated_basis:
            raise ValueError(f"the inner format {format!r} already keeps a rotated basis; nest rotations only once")
        self.format = format.held_by(backend)
        self.block = block
        self.variant = variant
        self.keeps_rotated_basis = variant == "half"
        if backend == "torch":
            self.run_on_torch()

    @property
    def rotation_key(self) -> Any:
        return ("hadamard", self.block) if self.keeps_rotated_basis else None

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.format.family

    @property
    def mixes_rows(self) -> bool:
        return self.format.mixes_rows

    def capacity_parts(self) -> list[Format]:
        """A rotated single format is one part (its GMSE is measured through the rotation); a rotated
        composition keeps its parts, whose Gaussian errors the orthogonal rotation does not change."""
        parts = self.format.capacity_parts()
        return [self] if len(parts) == 1 else parts

    def compress(self, x: Tensor) -> Tensor:
        b = rotation_block(x.shape[-1], self.block)
        if use_triton(x, self.backend):
            return self._compress_triton(x, b)
        q = self.format.compress(rotate(x, b))
        if self.variant == "full":
            q = rotate(q, b)
        return q.to(x.dtype)

    def _compress_triton(self, x: Tensor, b: int) -> Tensor:
        """One fused launch when the inner format has a kernel; else Triton rotations around it."""
        plan = getattr(self.format, "kernel_plan", lambda: None)()
        if plan is not None and self.format.backend != "torch":  # an inner format given torch keeps it
            return fused.fake_quantize(x, plan, rotation=fused.Rotation(b, back=self.variant == "full"))
        q = self.format.compress(fused.rotate(x, b))
        if self.variant == "full":
            q = fused.rotate(q, b)
        return q.to(x.dtype)

    def reference(self, x: Tensor) -> Tensor:
        return rotate(x, rotation_block(x.shape[-1], self.block)) if self.keeps_rotated_basis else x

    def compress_sparse(self, x: Tensor, keep: Tensor) -> Tensor:
        raise ValueError(
            "Hadamard cannot compress only the survivors of a sparsifier: the rotation mixes pruned and kept "
            "values; sparsify inside the rotation instead (Hadamard(format=<composed format>))"
        )

    @property
    def bits_per_value(self) -> float:
        return self.format.bits_per_value

    def storage_bits(self, shape: tuple[int, ...]) -> float:
        # the rotation keeps the shape and stores nothing: the inner format's cost on the same rows
        return self.format.storage_bits(shape)

    def gaussian_grid(self) -> Tensor | None:
        return self.format.gaussian_grid()

    def inner(self) -> list[Format]:
        return [self.format]
