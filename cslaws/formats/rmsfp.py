"""RMS-scaled FP: a low-precision float element grid at a Gaussian-optimal multiple of each group's RMS.

Forward: with `s = mult * rms(group)` (per tensor, row or group of the last dim, see `quant.py`),
`x -> fp_round(x / s) * s` -- the element grid of `fp.py` (E2M1, E2M3, E3M2, E4M3, E5M2; nearest level,
ties to even, saturating at the element max) scaled by the group's RMS instead of its absmax. `mult`
defaults to the multiplier that minimises the Gaussian MSE of the levels `mult * element grid`
(`gaussian_fp_mult`: exact Gaussian partial moments, a log-grid scan refined by scipy); for E2M1 it is
0.4870792, where QuEST (Panferov et al. 2025, `HalfHadamardFP4TrustQuantizer` of IST-DASLab/QuEST)
hard-codes the levels E2M1 x 0.48707976 (1.2e-6 relative apart; Gaussian MSE 0.012685 at both).
Inside `Hadamard(variant="half")` with `trust_unit="rms"` this is QuEST's FP4 quantizer.

Backward: "ste"; "clipped" (`|x| <= clip_scale * max * s`, a multiple of the outer level, see
`grad.py`); "trust": `|q - x| <= trust * u` with the unit `u` set by `trust_unit`:
- "step" (default): the local grid spacing `quantum * s` of the value's binade. `trust = 0.5` cuts only
  the values beyond the outer level plus half the outer spacing -- QuEST's *intended* FP4 rule (half the
  largest gap, 0.487 sigma for its E2M1 levels, cuts nothing inside the grid);
- "rms": the group's RMS, one threshold for the whole grid -- the rule QuEST's FP4 runs *actually* used:
  its `trust` defaults to half the outer gap of the 4-bit Lloyd-Max levels of its base class (0.3186
  sigma after its 20 Lloyd iterations) instead of that of the FP4 levels, so values inside the outer
  cells lose their gradient too.

Storage: element bits (4 for E2M1) + 16 bits per row/group scale (the rule of `quant.py`). No Triton
kernel: the torch code runs (inside `Hadamard` the rotations still run on Triton).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Optional

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from cslaws.formats.base import register_format
from cslaws.formats.fp import Element, ElementName, fp_round, get_element
from cslaws.formats.fp import element_bits as fp_element_bits
from cslaws.formats.grad import Backward, check_clip_scale
from cslaws.formats.quant import TINY, Granularity, ScalarQuantizer, gaussian_mse, rms

TrustUnit = Literal["step", "rms"]
TRUST_UNITS: tuple[str, ...] = ("step", "rms")


def element_levels(el: Element) -> np.ndarray:
    """Every finite value of the element grid, ascending and symmetric (zero once): subnormals
    k 2^(emin - mbits), then (1 + j 2^-mbits) 2^e for e = emin..emax, up to the element max."""
    sub = np.arange(2**el.mbits) * 2.0 ** (el.emin - el.mbits)
    normal = [(1 + j / 2**el.mbits) * 2.0**e for e in range(el.emin, el.emax + 1) for j in range(2**el.mbits)]
    pos = np.unique(np.concatenate([sub, [v for v in normal if v <= el.max]]))
    return np.concatenate([-pos[:0:-1], pos])


@lru_cache(maxsize=None)
def gaussian_fp_mult(element: str) -> float:
    """The multiplier `m` minimising the standard-Gaussian MSE of the levels `m * element_levels`."""
    levels = element_levels(get_element(element))
    # the MSE is not unimodal in m for wide-exponent elements (it nearly repeats per binade): scan a log
    # grid first, then refine between the scan's neighbours of the best point
    scan = np.geomspace(1e-3, 1e3, 1201)
    best = int(np.argmin([gaussian_mse(m * levels) for m in scan]))
    lo, hi = scan[max(best - 1, 0)], scan[min(best + 1, len(scan) - 1)]
    res = minimize_scalar(lambda m: gaussian_mse(m * levels), bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
    if not res.success:
        raise RuntimeError(f"Gaussian-optimal multiplier for {element} did not converge: {res.message}")
    return float(res.x)


@register_format("rmsfp")
class RMSFP(ScalarQuantizer):
    """FP element grid times a Gaussian-optimal multiple of the group RMS (QuEST's FP4), per tensor/row/group."""

    def __init__(
        self,
        element: ElementName = "e2m1",
        mult: Optional[float] = None,
        granularity: Granularity = "row",
        group_size: int = 128,
        backward: Backward = "ste",
        trust: float = 0.5,
        trust_unit: TrustUnit = "step",
        clip_scale: float = 1.0,
        row_length: int = 1024,
    ) -> None:
        super().__init__()
        self.element = element
        self._el = get_element(element)
        if mult is not None and not (isinstance(mult, (int, float)) and mult > 0):
            raise ValueError(f"mult must be None (Gaussian-optimal) or > 0, got {mult!r}")
        if trust_unit not in TRUST_UNITS:
            raise ValueError(f"unknown trust_unit {trust_unit!r}; allowed: {', '.join(TRUST_UNITS)}")
        check_clip_scale(clip_scale)
        self.mult = mult
        self.trust_unit = trust_unit
        self.clip_scale = clip_scale
        self._set_common(granularity, group_size, backward, trust, row_length)
        self._mult = gaussian_fp_mult(element) if mult is None else float(mult)

    @property
    def element_bits(self) -> float:
        return float(fp_element_bits(self._el))

    def _quantize(self, g: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        r = rms(g, keep).clamp_min_(TINY)
        scale = r * self._mult
        q, quantum = fp_round(g / scale, self._el)
        unit = quantum.mul_(scale) if self.trust_unit == "step" else r
        return q.mul_(scale), unit, scale * (self._el.max * self.clip_scale)

    def _unit_levels(self) -> Tensor | None:
        return torch.from_numpy(self._mult * element_levels(self._el))
