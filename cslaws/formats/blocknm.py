"""Block-structured N:M sparsity: in every group of M consecutive values, made of M/b adjacent blocks of b
values, the N/b blocks with the largest L2 norm survive.

Forward: `x * keep`; with b = 2, N = 4, M = 8 this is QuEST's 4:8 pattern (Panferov et al. 2025,
`FourEightMaskedQuantizer` and the `*FourEight*Quantizer`s of IST-DASLab/QuEST: of the 4 adjacent pairs of
each group of 8 the 2 with the largest norm are kept), which pairs up values so that a 2:4 sparse kernel
over pairs can run it. b = 1 is element-wise N:M (`NM`). Ties between equal norms go to the lowest
block index (`nm_mask`), so the survivor count is exact.

Backward (`backward`, as `NM`): "forward" (pruned values get no gradient), "ste" (all do) or "rbbm"
(RMSE-banded, with T_k the smallest surviving magnitude of the group). Composed with a quantizer,
`Compose(order="quantize_then_prune", pruned_backward="value")` gives QuEST's rule for pruned values.

Storage (alone: bf16 values): `density * 16 + log2(C(M/b, N/b)) / M` -- the index of the block pattern
among the C(M/b, N/b) possible, log2(6) / 8 = 0.32 bits per value for 4:8 pairs.
"""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor

from cslaws.formats.base import register_format
from cslaws.formats.sparse import NM, Backward, nm_mask


@register_format("block_nm")
class BlockNM(NM):
    """N:M sparsity over blocks of `block` adjacent values ranked by L2 norm (QuEST 4:8: n=4, m=8, block=2)."""

    def __init__(
        self, n: int = 4, m: int = 8, block: int = 2, backward: Backward = "forward", rbbm_p: Optional[float] = None
    ) -> None:
        super().__init__(n, m, backward, rbbm_p)
        if not (isinstance(block, int) and block >= 1 and m % block == 0 and n % block == 0):
            raise ValueError(f"block must be a positive integer dividing N={n} and M={m}, got {block!r}")
        self.block = block

    def keep_mask(self, x: Tensor) -> Tensor:
        blocks = self._groups(x).unflatten(-1, (self.m // self.block, self.block))
        norms = blocks.float().norm(dim=-1)
        keep = nm_mask(norms, self.n // self.block)
        return keep.repeat_interleave(self.block, dim=-1).flatten(-2)

    @property
    def metadata_bits(self) -> float:
        return math.log2(math.comb(self.m // self.block, self.n // self.block)) / self.m
