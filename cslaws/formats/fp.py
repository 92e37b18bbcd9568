"""Low-precision floating-point formats: FP8 (E4M3, E5M2), FP6 (E3M2, E2M3), FP4 (E2M1) with a per-tensor,
per-row or per-group scale; the OCP microscaling formats MXFP8/MXFP6/MXFP4; and NVFP4.

Element formats follow the OCP Microscaling Formats (MX) Specification v1.0 (2023), sec. 5.3 (FP8 as in
the OCP 8-bit Floating Point Specification, OFP8): E4M3 (bias 7, max 448, no infinities), E5M2 (bias 15,
max 57344), E3M2 (bias 3, max 28), E2M3 (bias 1, max 7.5), E2M1 (bias 1, max 6), all with subnormals.

Element rounding `fp_round` (a kernel must follow it), on float32 `v`:
    e = clamp(floor(log2 |v|), emin, emax)     # exactly, from the float32 exponent field; v = 0 gives emin
    quantum = 2^(e - mbits)                     # spacing of the grid in v's binade (subnormals: emin's)
    q = clamp(round_half_even(v / quantum) * quantum, -max, max)
i.e. round to nearest, ties to even mantissa, then saturate to the largest finite value (the OCP
saturating conversion; a carry into the next binade is exact because that binade's grid is coarser).

Scales:
- `FP`: `scale = absmax(group) / max` in float32 (the group's extreme value maps to the format's max),
  counted as 16 bits per row/group (see `quant.py`); `x -> fp_round(x / scale) * scale`.
- `MX` (spec sec. 6.3): blocks of 32 along the last dim share an E8M0 power-of-two scale
  `2^X, X = clamp(floor(log2 absmax(block)) - emax, -127, 127)` (an all-zero block takes X = -127);
  elements `fp_round(x / 2^X)` saturate, as the spec prescribes for values above the element max.
  bits_per_value = element bits + 8/32.
- `NVFP4` (NVIDIA Blackwell): blocks of 16 E2M1 values share an E4M3 scale, times one float32 outer scale:
  `s_t = absmax / (6 * 448)` of the tensor (`outer_scale="tensor"`, as specified) or of each row
  (`outer_scale="row"`), `s_b = fp_round_e4m3(absmax(block) / (6 s_t))`,
  `x -> fp_round_e2m1(x / (s_b s_t)) * (s_b s_t)`; a block whose scale rounds to 0 becomes zeros.
  bits_per_value = 4 + 8/16 (the outer float32 is not counted; `storage_bits` counts it). Activations
  need the per-row outer scale (one per token): a tensor's absmax would let a token's quantization read
  later tokens and the batch's other sequences, which `LinearFactory` refuses (`Format.mixes_rows`).

Backward: "ste", "clipped" (`|x| <= max * scale`) or "trust" (`|q - x| <= trust * quantum * scale`, the
local grid spacing), see `grad.py`.

Idempotence: MX is exactly idempotent (power-of-two scales, and rounding keeps each block's absmax in
its binade); FP is idempotent up to float32 rounding of the recomputed scale; NVFP4 is not in general
(the E4M3 block scale is re-rounded from a changed absmax).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from cslaws.formats.base import register_format
from cslaws.formats.grad import Backward, check_backward
from cslaws.formats.kernels import Backend, check_backend
from cslaws.formats.kernels.fused import OUTER_SCALES, OuterScale, QuantPlan, exact_div
from cslaws.formats.quant import TENSOR_SCALE_BITS, TINY, Granularity, ScalarQuantizer, absmax, scale_bits


class Element(NamedTuple):
    ebits: int
    mbits: int
    emin: int
    emax: int
    max: float


#: OCP MX v1.0 sec. 5.3 element formats: exponent/mantissa bits, min/max normal exponent, max finite.
ELEMENTS: dict[str, Element] = {
    "e4m3": Element(4, 3, -6, 8, 448.0),
    "e5m2": Element(5, 2, -14, 15, 57344.0),
    "e3m2": Element(3, 2, -2, 4, 28.0),
    "e2m3": Element(2, 3, 0, 2, 7.5),
    "e2m1": Element(2, 1, 0, 2, 6.0),
}
ElementName = Literal["e4m3", "e5m2", "e3m2", "e2m3", "e2m1"]
MX_BLOCK = 32
NVFP4_BLOCK = 16


def get_element(name: str) -> Element:
    """The element format called `name`; an unknown name lists the allowed ones."""
    if name not in ELEMENTS:
        raise ValueError(f"unknown FP element format {name!r}; allowed: {', '.join(ELEMENTS)}")
    return ELEMENTS[name]


def floor_log2(v: Tensor) -> Tensor:
    """floor(log2 |v|) of float32 `v` (int32) from its exponent field, as the Triton kernel reads it: exact for
    normals; zeros and subnormals give -127 (callers clamp or exclude them); inf gives 128, so that an MX block
    holding an inf gets the largest scale and keeps the inf (frexp's exponent of inf is 0, which gave such a
    block a tiny scale and turned it into finite values, hiding an overflow)."""
    return ((v.float().view(torch.int32) >> 23) & 0xFF) - 127


def binade(v: Tensor) -> Tensor:
    """2^floor(log2 |v|) for float32 `v`, read off the exponent field (0 for zeros and subnormals)."""
    return (v.view(torch.int32) & 0x7F800000).view(torch.float32)


def fp_round(v: Tensor, el: Element) -> tuple[Tensor, Tensor]:
    """Round float32 `v` to the element grid (nearest, ties to even, saturating); also the local spacing."""
    quantum = binade(v).clamp_(2.0**el.emin, 2.0**el.emax).mul_(2.0**-el.mbits)
    q = (v / quantum).round_().mul_(quantum).clamp_(-el.max, el.max)
    return q, quantum


def element_bits(el: Element) -> int:
    return 1 + el.ebits + el.mbits


@register_format("fp")
class FP(ScalarQuantizer):
    """A low-precision float element format with an absmax float scale per tensor, row or group."""

    def __init__(
        self,
        element: ElementName = "e4m3",
        granularity: Granularity = "row",
        group_size: int = 128,
        backward: Backward = "ste",
        trust: float = 0.5,
        row_length: int = 1024,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        self.element = element
        self._el = get_element(element)
        self._set_common(granularity, group_size, backward, trust, row_length)

    @property
    def element_bits(self) -> float:
        return float(element_bits(self._el))

    def kernel_plan(self) -> QuantPlan:
        el = self._el
        return QuantPlan("fp", self.granularity, self.group_size, self.backward, self.trust, element=(el.mbits, el.emin, el.emax, el.max))

    def _quantize(self, g: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        amax = absmax(g, keep)
        scale = exact_div(amax.clone(), self._el.max).clamp_min_(TINY)
        q, quantum = fp_round(g / scale, self._el)
        # The grid's edge is the absmax itself (nothing is clipped): (absmax / max) * max can round one ulp
        # below it, which cut the largest value's gradient in 2-3% of rows under the clipped rule.
        return q.mul_(scale), quantum.mul_(scale), torch.maximum(scale * self._el.max, amax)


def mx_scale(amax: Tensor, el: Element) -> Tensor:
    """The E8M0 shared scale 2^X of OCP MX v1.0 sec. 6.3 for blocks with absolute maximum `amax`."""
    x = torch.where(amax > 0, floor_log2(amax) - el.emax, -127).clamp_(-127, 127)
    return torch.exp2(x.float())


@register_format("mx")
class MX(ScalarQuantizer):
    """OCP MX: blocks of 32 values sharing a power-of-two E8M0 scale (MXFP8 = e4m3/e5m2, MXFP6, MXFP4)."""

    def __init__(
        self, element: ElementName = "e2m1", backward: Backward = "ste", trust: float = 0.5, backend: Backend = "auto"
    ) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        self.element = element
        self.backward = backward
        self.trust = trust
        self.granularity = "group"
        self.group_size = MX_BLOCK
        self._el = get_element(element)
        check_backward(backward, trust)

    @property
    def element_bits(self) -> float:
        return float(element_bits(self._el))

    @property
    def bits_per_value(self) -> float:
        return self.element_bits + 8 / MX_BLOCK

    def storage_bits(self, shape: tuple[int, ...]) -> float:
        # one 8-bit E8M0 scale per block of 32 (the rows must split into blocks)
        return self.element_bits + scale_bits("group", MX_BLOCK, shape, bits=8)

    def kernel_plan(self) -> QuantPlan:
        el = self._el
        return QuantPlan("mx", "group", MX_BLOCK, self.backward, self.trust, element=(el.mbits, el.emin, el.emax, el.max))

    def _quantize(self, g: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        scale = mx_scale(absmax(g, keep), self._el)
        q, quantum = fp_round(g / scale, self._el)
        return q.mul_(scale), quantum.mul_(scale), scale * self._el.max


def nvfp4_scale(amax: Tensor, outer: OuterScale = "tensor") -> Tensor:
    """Per-block NVFP4 scale `s_b * s_t` from the blocks' absmax `(..., blocks, 1)`; the outer scale's
    absmax is their max over the tensor or over each row (the blocks of one row)."""
    e2m1, e4m3 = ELEMENTS["e2m1"], ELEMENTS["e4m3"]
    outer_amax = amax.amax() if outer == "tensor" else amax.amax(dim=-2, keepdim=True)
    outer_scale = exact_div(outer_amax, e2m1.max * e4m3.max).clamp_min_(TINY)
    return fp_round(amax / (e2m1.max * outer_scale), e4m3)[0].mul_(outer_scale)


@register_format("nvfp4")
class NVFP4(ScalarQuantizer):
    """NVFP4: blocks of 16 E2M1 values sharing an E4M3 scale, times a float32 scale per tensor or per row."""

    def __init__(
        self,
        backward: Backward = "ste",
        trust: float = 0.5,
        outer_scale: OuterScale = "tensor",
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        if outer_scale not in OUTER_SCALES:
            raise ValueError(f"unknown NVFP4 outer_scale {outer_scale!r}; allowed: {', '.join(OUTER_SCALES)}")
        self.backend = check_backend(backend)
        self.outer_scale = outer_scale
        self.backward = backward
        self.trust = trust
        self.granularity = "group"
        self.group_size = NVFP4_BLOCK
        check_backward(backward, trust)

    @property
    def element_bits(self) -> float:
        return 4.0

    @property
    def bits_per_value(self) -> float:
        return self.element_bits + 8 / NVFP4_BLOCK

    @property
    def mixes_rows(self) -> bool:
        return self.outer_scale == "tensor"

    def storage_bits(self, shape: tuple[int, ...]) -> float:
        # an 8-bit E4M3 scale per block of 16, and the float32 outer scale, which bits_per_value leaves out
        outer = scale_bits(self.outer_scale, 1, shape, bits=TENSOR_SCALE_BITS)
        return self.element_bits + scale_bits("group", NVFP4_BLOCK, shape, bits=8) + outer

    def kernel_plan(self) -> QuantPlan:
        el = ELEMENTS["e2m1"]
        return QuantPlan(
            "nvfp4", "group", NVFP4_BLOCK, self.backward, self.trust, element=(el.mbits, el.emin, el.emax, el.max), outer=self.outer_scale
        )

    def _quantize(self, g: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        e2m1 = ELEMENTS["e2m1"]
        scale = nvfp4_scale(absmax(g, keep), self.outer_scale)
        q, quantum = fp_round(g / torch.where(scale > 0, scale, 1.0), e2m1)
        return q.mul_(scale), quantum.mul_(scale), scale * e2m1.max
