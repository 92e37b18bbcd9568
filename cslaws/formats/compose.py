"""Composed formats: sparsify, then quantize the survivors (sparse-quantized representations).

Forward: `Compose([S, Q])` computes the sparsifier's keep-mask on `x`, zeroes the pruned values and rounds
the survivors with the value format `Q`, whose scale statistics are taken over the survivors alone
(`Q.compress_sparse`). Backward: the product of the two rules -- on survivors Q's own rule (ste, clipped,
trust) times S's backward mask; on pruned values S's backward mask alone ("forward", "ste" or "rbbm",
see `sparse.py`), since `compress_sparse` passes their gradient through.

Order: `formats` is exactly one sparsifier followed by one value format (a list that puts the value format
first is an error); `order` says in which order they act:

- "prune_then_quantize" (default): as above. This is the order the Unified Scaling Laws paper prescribes:
  Harma et al. 2025 ("Effective Interplay between Sparsity and Quantization: From Theory to Practice",
  ICLR 2025) show the two operations do not commute and that quantizing first is never better -- the
  scale is fitted to values that are then removed.
- "quantize_then_prune": QuEST's 4:8 runs (Panferov et al. 2025, `HalfHadamardFourEightTrustQuantizer` of
  IST-DASLab/QuEST): the keep-mask is chosen on `x`, the value format quantizes every value with its
  statistics (RMS) over all values, then the pruned positions are zeroed. Needs a scalar quantizer.
  Backward: the sparsifier's backward mask times the value format's rule, where `pruned_backward` says
  what that rule is on pruned positions:
  - "sparsifier" (default): nothing (pass-through), so the sparsifier's mask alone decides, as above;
  - "value": the value format's rule evaluated on the zeroed output, as QuEST does: under "trust" a pruned
    value gets its gradient iff `|0 - x| <= trust * step`, i.e. iff it is within half a step of zero
    (0.168 sigma for INT4), which lets the gradient through on 19% of the pruned positions of QuEST's 4:8
    pairs on Gaussian data; under "clipped" iff `|x| <= clip`; under "ste" always. QuEST's scheme is
    `Compose([BlockNM(4, 8, block=2, backward="ste"), Int(4, backward="trust")], order="quantize_then_prune",
    pruned_backward="value")` inside a Hadamard rotation.
  No Triton kernel for this order: it runs in torch.

bits_per_value = density * e + (b - e) + m, with b the value format's `bits_per_value`, e its
`element_bits` (bits of one value without shared scales), and m the sparsifier's `metadata_bits`: the
survivors' element bits (for a vector quantizer, whose codes each stand for `dim` positions pruned or not,
every position's: e + (b - e) + m), the value format's scale overhead per dense position (scales belong to the rows
or groups of the dense layout, as `compress_sparse` computes them), and the pattern (a 1-bit mask for
unstructured sparsity, log2(C(M, N)) / M for N:M). For example INT4 with per-row scales (reference row
1024) at 50% magnitude sparsity: 0.5 * 4 + 16 / 1024 + 1 = 3.016; with 2:4: 2 + 16 / 1024 + log2(6) / 4 =
2.662. The sparsifier is charged at its target sparsity.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from torch import Tensor

from cslaws.formats import ops
from cslaws.formats.base import Format, register_format
from cslaws.formats.grad import rule_mask
from cslaws.formats.kernels import Backend, check_backend, fused, use_triton
from cslaws.formats.quant import ScalarQuantizer
from cslaws.formats.sparse import Sparsifier

Order = Literal["prune_then_quantize", "quantize_then_prune"]
ORDERS: tuple[str, ...] = ("prune_then_quantize", "quantize_then_prune")
PrunedBackward = Literal["sparsifier", "value"]
PRUNED_BACKWARDS: tuple[str, ...] = ("sparsifier", "value")


def _name(f: Format) -> str:
    return type(f).__name__


@register_format("compose")
class Compose(Format):
    """A sparsifier followed by a value format (quantizer) applied to the same tensor."""

    def __init__(
        self,
        formats: list[Format],
        backend: Backend = "auto",
        order: Order = "prune_then_quantize",
        pruned_backward: PrunedBackward = "sparsifier",
    ) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        kinds = [_name(f) for f in formats]
        if any(isinstance(f, Sparsifier) for f in formats[1:]):
            raise ValueError(
                f"Compose takes the sparsifier first in `formats`, got {kinds}; to quantize before pruning "
                "set order='quantize_then_prune'"
            )
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; allowed: {', '.join(ORDERS)}")
        if pruned_backward not in PRUNED_BACKWARDS:
            raise ValueError(f"unknown pruned_backward {pruned_backward!r}; allowed: {', '.join(PRUNED_BACKWARDS)}")
        if pruned_backward == "value" and order != "quantize_then_prune":
            raise ValueError("pruned_backward='value' is defined for order='quantize_then_prune' only")
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
        if order == "quantize_then_prune" and not isinstance(value, ScalarQuantizer):
            raise ValueError(f"order='quantize_then_prune' needs a scalar quantizer as value format, got {_name(value)}")
        # a fused Triton kernel exists when the value format has one (`kernel_plan`) and is not given torch
        has_plan = getattr(value, "kernel_plan", lambda: None)() is not None and getattr(value, "backend", None) != "torch"
        self._has_kernel = has_plan and order == "prune_then_quantize"
        if backend == "triton" and not self._has_kernel:
            raise ValueError("backend='triton' needs prune_then_quantize and a value format with a Triton kernel (not "
                             f"given backend='torch'); got {order}, {value!r}")
        sparsifier, value = sparsifier.held_by(backend), value.held_by(backend)
        self.formats = [sparsifier, value]
        self.sparsifier: Sparsifier = sparsifier
        self.value = value
        self.order = order
        self.pruned_backward = pruned_backward
        if backend == "torch":
            self.run_on_torch()

    def compress(self, x: Tensor) -> Tensor:
        if self.order == "quantize_then_prune":
            return self._quantize_then_prune(x)
        if self._has_kernel and use_triton(x, self.backend):
            return self._compress_triton(x)
        y, keep = self.sparsifier.sparsify(x)
        return self.value.compress_sparse(y, keep)

    def _quantize_then_prune(self, x: Tensor) -> Tensor:
        """Quantize every value (statistics over all of them), zero the pruned ones; see the module doc."""
        y, keep = self.sparsifier.sparsify(x)
        gate = y + (x - y).detach()  # forward x itself, backward the sparsifier's mask
        value: ScalarQuantizer = self.value  # type: ignore[assignment]
        key = ops.format_key(self, "_run_quantize_then_prune", masks=value.backward != "ste")
        return ops.apply_rule(gate, key, keep)

    def _run_quantize_then_prune(self, t: Tensor, keep: Tensor, need_mask: bool) -> tuple[Tensor, Tensor | None]:
        """The quantizer's forward on all of `t` with the pruned positions zeroed, and the gradient mask
        (the value format's rule; on pruned positions as `pruned_backward` says)."""
        value: ScalarQuantizer = self.value  # type: ignore[assignment]
        g, kg = value._group(t.float()), value._group(keep)
        q, step, clip = value._quantize(g, None)
        q = q.mul_(kg)
        mask = rule_mask(value.backward, g, q, step * value.trust, clip) if need_mask else None
        if mask is not None and self.pruned_backward == "sparsifier":
            mask = mask.logical_or_(kg.logical_not())
        return q.reshape(t.shape).to(t.dtype), None if mask is None else mask.reshape(t.shape)

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
        return self._code_bits(self.sparsifier.density) + (self.value.bits_per_value - e) + self.sparsifier.metadata_bits

    def storage_bits(self, shape: tuple[int, ...]) -> float:
        """The rule of `bits_per_value` with the survivors and the value format's scales on the real shape."""
        e = float(self.value.element_bits)  # type: ignore[attr-defined]
        kept = self.sparsifier.kept_fraction(shape)  # also checks that the sparsifier fits the rows (N:M groups)
        return self._code_bits(kept) + (self.value.storage_bits(shape) - e) + self.sparsifier.metadata_bits

    def _code_bits(self, kept: float) -> float:
        """The value codes' bits per dense position, with a fraction `kept` of the values surviving: the
        survivors' when each value has a code of its own. A vector code (VQ) stands for `dim` neighbouring
        positions, survivors and pruned alike (its `compress_sparse` quantizes whole vectors, the pruned zeros
        in place), so every vector keeps its code."""
        e = float(self.value.element_bits)  # type: ignore[attr-defined]
        return kept * e if self.value.values_per_code == 1 else e  # type: ignore[attr-defined]

    @property
    def mixes_rows(self) -> bool:
        return any(f.mixes_rows for f in self.formats)

    def capacity_parts(self) -> list[Format]:
        """Sparsity and quantization each keep their own capacity; the unified law multiplies them."""
        return self.sparsifier.capacity_parts() + self.value.capacity_parts()

    def inner(self) -> list[Format]:
        return list(self.formats)
