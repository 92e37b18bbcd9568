"""Composed formats: sparsify, then quantize the survivors (sparse-quantized representations).

Forward: `Compose([S, Q])` computes the sparsifier's keep-mask on `x`, zeroes the pruned values and rounds
the survivors with the value format `Q`, whose scale statistics are taken over the survivors alone
(`Q.compress_sparse`). Backward: the product of the two rules -- on survivors Q's own rule (ste, clipped,
trust) times S's backward mask; on pruned values S's backward mask alone ("forward", "ste" or "rbbm",
see `sparse.py`), since `compress_sparse` passes their gradient through.

Order: `formats` is exactly one sparsifier followed by one value format. Sparsify-then-quantize is the
required order: Harma et al. 2025 ("Effective Interplay between Sparsity and Quantization: From Theory to
Practice", ICLR 2025) show the two operations do not commute and that quantizing first is never better
-- magnitudes rounded onto a grid tie, so the mask chooses among already-rounded values, and the scale is
fitted to values that are then removed. A list that puts a value format before the sparsifier is an error.

bits_per_value = density * e + (b - e) + m, with b the value format's `bits_per_value`, e its
`element_bits` (bits of one value without shared scales), and m the sparsifier's `metadata_bits`: the
survivors' element bits, the value format's scale overhead per dense position (scales belong to the rows
or groups of the dense layout, as `compress_sparse` computes them), and the pattern (a 1-bit mask for
unstructured sparsity, log2(C(M, N)) / M for N:M). For example INT4 with per-row scales (reference row
1024) at 50% magnitude sparsity: 0.5 * 4 + 16 / 1024 + 1 = 3.016; with 2:4: 2 + 16 / 1024 + log2(6) / 4 =
2.662. The sparsifier is charged at its target sparsity.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor

from cslaws.formats.base import Format, register_format
from cslaws.formats.kernels import Backend, check_backend, fused, use_triton
from cslaws.formats.sparse import Sparsifier


def _name(f: Format) -> str:
    return type(f).__name__


@register_format("compose")
class Compose(Format):
    """A sparsifier followed by a value format (quantizer) applied to the same tensor."""

    def __init__(self, formats: list[Format], backend: Backend = "auto") -> None:
        super().__init__()
        self.backend = check_backend(backend)
        kinds = [_name(f) for f in formats]
        if any(isinstance(f, Sparsifier) for f in formats[1:]):
            raise ValueError(
                f"Compose needs the sparsifier first (sparsify, then quantize), got the order {kinds}: "
                "quantizing before sparsifying is not supported"
            )
        if len(formats) != 2 or not isinstance(formats[0], Sparsifier):
            raise ValueError(f"Compose takes exactly [sparsifier, value format], got {kinds}")
        sparsifier, value = formats
        if isinstance(value, Compose):
            raise ValueError(f"Compose cannot nest another Compose as its value format, got {kinds}")
        if value.keeps_rotated_basis:
            raise ValueError(
                f"the value format {value!r} keeps a rotated basis, where the sparsity pattern of the original "
                "basis is lost; compose sparsity with an unrotated (or fully rotated back) quantizer"
            )
        if not hasattr(value, "element_bits"):
            raise ValueError(
                f"the value format {_name(value)} has no `element_bits` (bits of one value without shared "
                "scales), which Compose needs to charge the survivors; use a scalar or vector quantizer"
            )
        # a fused Triton kernel exists when the value format has one (`kernel_plan`)
        self._has_kernel = getattr(value, "kernel_plan", lambda: None)() is not None
        if backend == "triton" and not self._has_kernel:
            raise ValueError(f"backend='triton' needs a value format with a Triton kernel; {_name(value)} has none")
        self.formats = list(formats)
        self.sparsifier: Sparsifier = sparsifier
        self.value = value

    def compress(self, x: Tensor) -> Tensor:
        if self._has_kernel and use_triton(x, self.backend):
            return self._compress_triton(x)
        y, keep = self.sparsifier.sparsify(x)
        return self.value.compress_sparse(y, keep)

    def _compress_triton(self, x: Tensor) -> Tensor:
        """One fused launch for N:M and per-row top-k survivors; for other sparsifiers (and per-tensor
        value scales) the sparsifier picks the survivors in torch and the kernel quantizes them."""
        plan = self.value.kernel_plan()  # type: ignore[attr-defined]
        sparsity = fused.sparsity_plan(self.sparsifier, x.shape[-1])
        if sparsity is not None and not fused.needs_tensor_statistic(plan):
            return fused.fake_quantize(x, replace(plan, sparsity=sparsity))
        y, keep = self.sparsifier.sparsify(x)
        return fused.fake_quantize(y, plan, keep=keep)

    @property
    def bits_per_value(self) -> float:
        e = float(self.value.element_bits)  # type: ignore[attr-defined]
        return self.sparsifier.density * e + (self.value.bits_per_value - e) + self.sparsifier.metadata_bits

    def capacity_parts(self) -> list[Format]:
        """Sparsity and quantization each keep their own capacity; the unified law multiplies them."""
        return self.sparsifier.capacity_parts() + self.value.capacity_parts()

    def set_progress(self, fraction: float) -> None:
        super().set_progress(fraction)
        for f in self.formats:
            f.set_progress(fraction)
