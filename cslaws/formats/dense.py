"""Dense: the uncompressed baseline (16-bit storage, the reference of every multiplier).

Forward: identity. Backward: identity.
"""

from __future__ import annotations

from torch import Tensor

from cslaws.formats.base import Format, register_format


@register_format("dense")
class Dense(Format):
    """No compression; costs 16 bits per value (bf16 storage)."""

    def compress(self, x: Tensor) -> Tensor:
        return x

    def capacity_parts(self) -> list[Format]:
        return []

    @property
    def bits_per_value(self) -> float:
        return 16.0
