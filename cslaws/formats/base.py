"""The `Format` base class and the registry that names formats.

A format is what a linear layer computes over: `compress(x)` returns `x` as the format represents it
(the forward numerics) and carries the format's rule for the backward pass through autograd. The same
`compress` feeds the capacity metric (GMSE: its mean squared error on standard Gaussian data).

Adding a format is one file and one decorator::

    @register_format("myfmt")
    class MyFormat(Format):
        def __init__(self, bits: int = 4) -> None:
            super().__init__()
            self.bits = bits          # every init arg is kept under its own name (see `spec`)

        def compress(self, x: Tensor) -> Tensor: ...

        @property
        def bits_per_value(self) -> float: ...

Configs inject formats as objects (`class_path` / `init_args`); code can also build them by their
registered short name with `make_format("myfmt", bits=4)`.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Iterator, TypeVar

from torch import Tensor

FORMATS: dict[str, type["Format"]] = {}

F = TypeVar("F", bound=type["Format"])


class Format:
    """A number format for the weights or the activations (input) of a linear layer."""

    #: The registered short name, set by `register_format`.
    name: str = ""
    #: True when `compress` returns values in a rotated basis without rotating back ("half" Hadamard,
    #: QuEST). Then y = x W^T is only right when the other operand of the layer is rotated the same way;
    #: `CompressedLinear` enforces that `rotation_key` matches on both sides.
    keeps_rotated_basis: bool = False
    #: The family whose unified-law constants (F, C, Lsat) this format shares: Panferov et al. 2025 fit
    #: one set per family ("scalar" quantization, "sparse", "vq"). Empty: not declared, so the unified fit
    #: refuses the format rather than guess.
    family: str = ""

    def __init__(self) -> None:
        self.progress = 0.0

    def compress(self, x: Tensor) -> Tensor:
        """Return `x` as the format represents it, differentiable by the format's backward rule."""
        raise NotImplementedError

    @property
    def bits_per_value(self) -> float:
        """Storage cost per value, metadata (scales, masks, indices) included."""
        raise NotImplementedError

    def storage_bits(self, shape: tuple[int, ...]) -> float:
        """Storage cost per value of a tensor of `shape` compressed by this format, metadata included, with
        the last dim the row that row/group scales run along (a weight's input features, a token's
        features). `bits_per_value` is the same cost at the format's reference row; this is the cost on
        the layer the format is really applied to. This default (`bits_per_value`) is right for formats
        whose cost does not depend on the shape (dense; the masks of sparsifiers, one bit or one N:M
        pattern index per value); formats with per-row, per-group or per-tensor metadata override it.
        """
        return self.bits_per_value

    @property
    def mixes_rows(self) -> bool:
        """True when a row (the last dim: one token's features on the activation side) is compressed with a
        statistic of other rows, such as a per-tensor scale or threshold. `LinearFactory` refuses such an
        activation format: a token's inputs would depend on later tokens and on the batch's other sequences,
        so a causal LM could read the future and its loss would change with the batching."""
        return False

    @property
    def rotation_key(self) -> Any:
        """Identifies the rotated basis when `keeps_rotated_basis`; both sides of a layer must agree."""
        return None

    def reference(self, x: Tensor) -> Tensor:
        """`x` in the basis that `compress(x)` returns, so that the format's error is compress(x) - reference(x).

        The identity, except for formats that keep a rotated basis, which must say how they rotate.
        """
        if self.keeps_rotated_basis:
            raise NotImplementedError(f"{type(self).__name__} keeps a rotated basis and must define reference(x)")
        return x

    def compress_sparse(self, x: Tensor, keep: Tensor) -> Tensor:
        """Compress only the survivors of a sparsifier (`keep` True), for composed formats.

        Forward: the survivors as the format represents them, with statistics (scales) taken over the
        survivors alone, and exact zeros elsewhere. Backward: the format's own rule on the survivors and
        pass-through on the pruned positions, so that the sparsifier's backward mask alone decides what
        pruned values receive. This default scales over all values; quantizers override it.
        """
        pruned = x * keep.logical_not()
        return self.compress(x) * keep + (pruned - pruned.detach())  # + 0 forward, the identity backward

    def gaussian_grid(self) -> Tensor | None:
        """Reconstruction levels for standard Gaussian input at the format's nominal scale (RMS = 1).

        Only for scalar formats that round to the nearest of fixed levels; `None` otherwise. Lets the
        capacity metric integrate the Gaussian MSE exactly instead of sampling it.
        """
        return None

    def capacity_parts(self) -> list["Format"]:
        """The formats whose capacities multiply to this one's in the unified law: itself; the parts of a
        composition; nothing for dense."""
        return [self]

    def inner(self) -> list["Format"]:
        """The formats this one wraps (Hadamard's, Compose's parts); none for a plain format."""
        return []

    def walk(self) -> Iterator["Format"]:
        """This format, then every format inside it, depth first: a fixed order for a fixed spec."""
        yield self
        for f in self.inner():
            yield from f.walk()

    def set_progress(self, fraction: float) -> None:
        """Fraction of training done, in [0, 1]; formats with schedules (gradual pruning) read it. Wrappers
        pass it on to the formats inside them."""
        self.progress = fraction
        for f in self.inner():
            f.set_progress(fraction)

    def run_on_torch(self) -> None:
        """Take the torch code on every device: called by a format that wraps this one (Hadamard, Compose) when
        that one is given `backend="torch"`, which must hold inside it too (else on a GPU the formats inside
        would still run Triton, and a torch-vs-Triton comparison would compare Triton with itself). A format
        with a Triton kernel takes `backend="torch"`; one forced to "triton" contradicts it; wrappers pass
        it on. Formats without a kernel run torch already."""
        backend = getattr(self, "backend", None)
        if backend == "triton":
            raise ValueError(f"{self!r} is forced to backend='triton' inside a format given backend='torch'; give "
                             "the backend once, on the outer format")
        if backend is not None:
            self.backend = "torch"
        for f in self.inner():
            f.run_on_torch()

    def held_by(self, backend: str) -> "Format":
        """This format as a wrapper given `backend` keeps it: a copy when that is "torch", which the wrapper's
        `run_on_torch` then sets, so that the caller's object (also given to another layer, say) keeps its own
        backend; else this very object."""
        return copy.deepcopy(self) if backend == "torch" else self

    def tensors(self) -> dict[str, Tensor]:
        """What this format computes with that its spec does not pin down bit for bit (a codebook that an
        algorithm builds), for the checkpoint: a resumed or scored run computes with what it trained with, not
        with what a rebuild on another machine or library version gives. Empty for most formats."""
        return {}

    def load_tensors(self, saved: dict[str, Tensor]) -> None:
        """Take back what `tensors` gave (nothing to take for most formats)."""

    def spec(self) -> dict[str, Any]:
        """The format as config data: class_path and every init arg, for the results store."""
        init_args = {}
        for pname in inspect.signature(type(self).__init__).parameters:
            if pname == "self":
                continue
            init_args[pname] = _plain(getattr(self, pname))
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}

    def __call__(self, x: Tensor) -> Tensor:
        return self.compress(x)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec()["init_args"].items())
        return f"{type(self).__name__}({args})"


def _plain(value: Any) -> Any:
    """Config data for an init arg: nested formats become their specs, tuples become lists."""
    if isinstance(value, Format):
        return value.spec()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def register_format(name: str) -> Callable[[F], F]:
    """Class decorator: register a `Format` subclass under a short name."""

    def decorate(cls: F) -> F:
        if not (isinstance(cls, type) and issubclass(cls, Format)):
            raise TypeError(f"@register_format({name!r}) needs a Format subclass, got {cls!r}")
        if name in FORMATS and FORMATS[name] is not cls:
            raise ValueError(f"format name {name!r} is already registered to {FORMATS[name].__qualname__}")
        FORMATS[name] = cls
        cls.name = name
        return cls

    return decorate


def get_format(name: str) -> type[Format]:
    """The class registered under `name`; an unknown name lists the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        known = ", ".join(sorted(FORMATS))
        raise KeyError(f"unknown format {name!r}; registered formats: {known}") from None


def make_format(name: str, **kwargs: Any) -> Format:
    """Build a registered format by its short name."""
    return get_format(name)(**kwargs)
