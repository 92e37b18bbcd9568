"""The formats' torch paths as `torch.library` custom ops, so that `torch.compile(model, fullgraph=True)`
traces a compressed model without graph breaks and the compiler sees each format as an opaque call.

Opaque on purpose: the torch code of a format is the reference that the Triton kernels reproduce
operation by operation (IEEE division, no contracted multiply-adds, see `kernels/triton_ops.py`); a
compiler free to rewrite it (fuse, reassociate, turn a division into a reciprocal multiply) would change
the numerics of a run with the compile switch. Inside every op autocast is off, so rotations and scales
are computed in float32 whatever the caller's autocast settings.

The ops take the format as a string key (`format_key`): custom ops accept tensors and plain values only,
and the key names one live format object (and the method of it that runs), registered on first use.
A compiled graph holds the key as a constant; the format object itself is read when the op runs, so its
mutable state (the training progress of a pruning schedule) needs no recompilation.

- `cslaws::rule(x, keep, key, need_mask) -> (q, mask)`: a quantizer's forward `q` and the mask of the
  positions that get a gradient; backward `grad * mask` (all of `grad` when the format's rule is
  straight-through: `mask` is then empty).
- `cslaws::keep_mask(x, key) -> keep`: a sparsifier's forward keep-mask (no gradient).
- `cslaws::masked(x, keep, grad_keep) -> where(keep, x, 0)`: backward `where(grad_keep, grad, 0)`.
- `cslaws::fwht(x, block) -> float32`: the normalised Walsh-Hadamard transform of `hadamard.py`;
  backward the same transform of the gradient (H is symmetric and orthogonal).

The Triton paths (`kernels/fused.py`, CUDA tensors) are not wrapped here: see that module.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import torch
from torch import Tensor

#: key -> (weak reference to the format, the method that runs, whether its backward rule has a mask)
_REGISTRY: dict[str, tuple[weakref.ref, str, bool]] = {}


@torch.compiler.assume_constant_result  # run at trace time, so the fake ops below find the entry
def format_key(fmt: Any, method: str, masks: bool = False) -> str:
    """The key under which the ops find `getattr(fmt, method)`; registers it on first use.

    `masks`: whether the method's backward rule returns a gradient mask (False: straight-through), which
    the op must know before it runs to describe its outputs to the compiler.
    """
    key = f"{type(fmt).__qualname__}.{method}@{id(fmt):x}"
    entry = _REGISTRY.get(key)
    if entry is None or entry[0]() is not fmt:  # new, or a dead object whose id was reused
        _REGISTRY[key] = (weakref.ref(fmt), method, masks)
    return key


def _lookup(key: str) -> tuple[Callable[..., Any], bool]:
    ref, method, masks = _REGISTRY[key]
    fmt = ref()
    if fmt is None:
        raise RuntimeError(f"the format behind the op key {key!r} no longer exists")
    return getattr(fmt, method), masks


# --- quantizer forward with its backward mask -----------------------------------------------------------


@torch.library.custom_op("cslaws::rule", mutates_args=())
def _rule(x: Tensor, keep: Optional[Tensor], key: str, need_mask: bool) -> tuple[Tensor, Tensor]:
    run, _ = _lookup(key)
    with torch.autocast(x.device.type, enabled=False):
        q, mask = run(x, keep, need_mask)
    empty = torch.empty(0, dtype=torch.bool, device=x.device)
    return q, empty if mask is None else mask


@_rule.register_fake
def _(x: Tensor, keep: Optional[Tensor], key: str, need_mask: bool) -> tuple[Tensor, Tensor]:
    _, masks = _lookup(key)
    mask_shape = x.shape if masks and need_mask else (0,)
    return torch.empty_like(x), x.new_empty(mask_shape, dtype=torch.bool)


def _rule_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    ctx.save_for_backward(output[1])


def _rule_backward(ctx: Any, grad: Tensor, _grad_mask: Tensor) -> tuple[Optional[Tensor], None, None, None]:
    (mask,) = ctx.saved_tensors
    return (grad if mask.numel() == 0 else grad * mask), None, None, None


_rule.register_autograd(_rule_backward, setup_context=_rule_setup)


def apply_rule(x: Tensor, key: str, keep: Tensor | None = None) -> Tensor:
    """Run the quantizer behind `key` (`method(x, keep, need_mask) -> (q, mask or None)`) on `x`, with the
    backward `grad * mask`."""
    need = torch.is_grad_enabled() and x.requires_grad
    return torch.ops.cslaws.rule(x, keep, key, need)[0]


# --- sparsifier keep-mask and masking ------------------------------------------------------------------


@torch.library.custom_op("cslaws::keep_mask", mutates_args=())
def _keep_mask(x: Tensor, key: str) -> Tensor:
    keep_mask, _ = _lookup(key)
    with torch.autocast(x.device.type, enabled=False):
        return keep_mask(x)


@_keep_mask.register_fake
def _(x: Tensor, key: str) -> Tensor:
    return x.new_empty(x.shape, dtype=torch.bool)


def keep_mask(x: Tensor, key: str) -> Tensor:
    """The keep-mask of the sparsifier behind `key` (its `keep_mask(x)`) for the values of `x`."""
    return torch.ops.cslaws.keep_mask(x.detach(), key)


@torch.library.custom_op("cslaws::masked", mutates_args=())
def _masked(x: Tensor, keep: Tensor, grad_keep: Optional[Tensor]) -> Tensor:
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


@_masked.register_fake
def _(x: Tensor, keep: Tensor, grad_keep: Optional[Tensor]) -> Tensor:
    return torch.empty_like(x)


def _masked_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.save_for_backward(inputs[2])


def _masked_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
    (grad_keep,) = ctx.saved_tensors
    if grad_keep is None:
        return grad, None, None
    return torch.where(grad_keep, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None, None


_masked.register_autograd(_masked_backward, setup_context=_masked_setup)


def masked(x: Tensor, keep: Tensor, grad_keep: Tensor | None) -> Tensor:
    """`x` with the values outside `keep` zeroed; the gradient passes where `grad_keep` (everywhere if None)."""
    return torch.ops.cslaws.masked(x, keep, grad_keep)


# --- Hadamard transform ---------------------------------------------------------------------------------


def _fwht_impl(x: Tensor, block: int) -> Tensor:
    from cslaws.formats.hadamard import fwht  # the transform lives with its format; imported late (cycle)

    with torch.autocast(x.device.type, enabled=False):
        return fwht(x.float(), block)


@torch.library.custom_op("cslaws::fwht", mutates_args=())
def _fwht(x: Tensor, block: int) -> Tensor:
    y = _fwht_impl(x, block)
    return y.clone() if y is x else y  # a custom op may not return its input


@_fwht.register_fake
def _(x: Tensor, block: int) -> Tensor:
    return x.new_empty(x.shape, dtype=torch.float32)


def _fwht_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.block = inputs[1]


def _fwht_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
    return torch.ops.cslaws.fwht(grad, ctx.block), None  # H is symmetric and orthogonal


_fwht.register_autograd(_fwht_backward, setup_context=_fwht_setup)


def rotate(x: Tensor, block: int) -> Tensor:
    """The float32 Hadamard transform of `x` on blocks of `block`, with autograd, as one opaque op."""
    return torch.ops.cslaws.fwht(x, block)
