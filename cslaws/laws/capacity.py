"""Capacity of a number format: its Gaussian MSE (GMSE) and the multiplier the unified law predicts.

GMSE is the mean squared error of `fmt.compress` on standard Gaussian data (Panferov et al. 2025,
"Unified Scaling Laws for Compressed Representations"): the capacity rho(GMSE) = Lsat tanh(F log4(1/GMSE))^C
predicts the format's effective-parameter multiplier, and capacities multiply across the formats of a
layer (weights x activations).

Two ways to measure it:
- exact, for formats that round to the nearest of fixed levels (`gaussian_grid()`): integrate
  (x - q(x))^2 phi(x) over the Voronoi cells of the levels in closed form, using
  d/dx [(1 + q^2) Phi(x) - (x - 2q) phi(x)] = (x - q)^2 phi(x);
- sampled, for every other format: `compress` on SAMPLE_ROWS rows of ROW_LENGTH standard Gaussian values
  (seed SEED, float32, under torch.no_grad, fed as matrices of CHUNK_ROWS rows so per-tensor statistics
  see a realistic weight matrix), the mean of the per-row MSEs and its standard error across rows.
  16.8 million values put the standard error near 0.05% of the GMSE (3 significant digits) for every
  format tried, 2-bit grids and 50% pruning included.

The information-theoretic floor for b bits per value on a Gaussian source is the distortion-rate bound
D(b) = 2^(-2b) (Cover & Thomas, Elements of Information Theory, sec. 10.3).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser
from scipy.stats import norm

from cslaws.bench.cli import resolve_config
from cslaws.errors import BenchError
from cslaws.formats import FORMATS, Format, make_format
from cslaws.formats.dense import Dense
from cslaws.laws.fit import RHO_C, RHO_F, RHO_LSAT, rho, rho_inverse

ROW_LENGTH = 4096
SAMPLE_ROWS = 4096
CHUNK_ROWS = 64
SEED = 0


@dataclass
class Capacity:
    """One line of `bench capacity`. A composed format's line has its own GMSE and bits, and the product
    of its parts' rho (method "...; rho of k parts"). Product lines (weights x activations) have no GMSE of their own:
    `gmse` is the single-tensor GMSE with the same predicted capacity (None when the product reaches
    Lsat, which no single tensor can), and `bits`/`gmse_se` are None."""

    name: str
    gmse: float | None
    gmse_se: float | None
    bits: float | None
    rho: float
    method: str

    @property
    def rho_per_bit(self) -> float | None:
        return None if self.bits is None else self.rho / self.bits

    @property
    def floor(self) -> float | None:
        return None if self.bits is None else 2.0 ** (-2.0 * self.bits)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rho_per_bit": self.rho_per_bit, "floor": self.floor}


def gaussian_mse_of_levels(levels: np.ndarray) -> float:
    """E[(X - q(X))^2], X ~ N(0, 1), q rounding to the nearest level (closed form per Voronoi cell)."""
    q = np.unique(np.asarray(levels, dtype=np.float64))
    edges = np.concatenate([[-np.inf], (q[1:] + q[:-1]) / 2.0, [np.inf]])

    def antiderivative(x: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            tail = np.where(np.isfinite(x), (x - 2.0 * q) * norm.pdf(x), 0.0)
        return (1.0 + q**2) * norm.cdf(x) - tail

    return float(np.sum(antiderivative(edges[1:]) - antiderivative(edges[:-1])))


def gaussian_mse_sampled(fmt: Format, rows: int = SAMPLE_ROWS, row_length: int = ROW_LENGTH, seed: int = SEED) -> tuple[float, float]:
    """Mean over rows of the per-row MSE of `fmt.compress` on standard Gaussian rows, and its standard error.

    Formats that keep a rotated basis (half Hadamard) are compared with the rotated input; the rotation is
    orthogonal, so that is the error a layer sees once both operands are rotated.
    """
    gen = torch.Generator().manual_seed(seed)
    per_row = []
    with torch.no_grad():
        for start in range(0, rows, CHUNK_ROWS):
            x = torch.randn(min(CHUNK_ROWS, rows - start), row_length, generator=gen)
            err = fmt.compress(x).double() - fmt.reference(x).double()
            per_row.append(err.pow(2).mean(dim=1).numpy())
    mse = np.concatenate(per_row)
    return float(mse.mean()), float(mse.std(ddof=1) / math.sqrt(len(mse)))


def gmse(fmt: Format) -> tuple[float, float, str]:
    """(GMSE, standard error, method): exact where the format has a Gaussian grid, sampled otherwise. A
    format with a schedule (gradual pruning) is measured as training leaves it, at progress 1, the state its
    bits are charged for (built from a spec it is at progress 0, dense); `fmt` itself is not changed."""
    fmt = copy.deepcopy(fmt)
    fmt.set_progress(1.0)
    levels = fmt.gaussian_grid()
    if levels is not None:
        return gaussian_mse_of_levels(levels.detach().cpu().double().numpy()), 0.0, "integral"
    value, se = gaussian_mse_sampled(fmt)
    return value, se, "sampled"


def without_backend(value: Any) -> Any:
    """A format spec without its `backend` entries: where a run executed (torch, or Triton kernels that
    reproduce torch exactly) does not change the format."""
    if isinstance(value, dict):
        return {k: without_backend(v) for k, v in value.items() if k != "backend"}
    if isinstance(value, list):
        return [without_backend(v) for v in value]
    return value


@lru_cache(maxsize=256)
def _gmse_of_spec(spec_json: str) -> tuple[float, float, str]:
    return gmse(format_from_spec(json.loads(spec_json)))


def gmse_of_spec(spec: dict[str, Any]) -> tuple[float, float, str]:
    """GMSE of a stored format spec ({"class_path", "init_args"}), cached per spec.

    The spec's `backend` is dropped, so the format measures with its default ("auto": torch on the CPU
    tensors used here): a run trained with `backend: triton` is measured like any other, on any machine.
    """
    return _gmse_of_spec(json.dumps(without_backend(spec), sort_keys=True))


def capacity_parts_of(fmt: Format) -> list[dict[str, Any]]:
    """Each part whose capacity multiplies into the format's (unified law): its class, family ("" where
    undeclared) and GMSE. GMSEs go through the per-spec cache: a part that is also a format of its own is
    measured once."""
    return [{"class": type(p).__name__, "family": p.family, "gmse": gmse_of_spec(p.spec())[0]} for p in fmt.capacity_parts()]


def declared(parts: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """(family, GMSE) of capacity parts (`capacity_parts_of`), each of which must name its unified-law family."""
    undeclared = [p["class"] for p in parts if not p["family"]]
    if undeclared:
        raise ValueError(
            f"format(s) {undeclared} declare no unified-law family; set the class attribute `family` "
            "(e.g. 'scalar', 'sparse', 'vq', or a new family name) to fit them with the unified form"
        )
    return [(p["family"], float(p["gmse"])) for p in parts]


def components_of(fmt: Format) -> list[tuple[str, float]]:
    """(family, GMSE) of each part whose capacity multiplies into the format's (unified law)."""
    return declared(capacity_parts_of(fmt))


def format_capacity(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the results store keeps of a format's Gaussian error: its GMSE and its capacity parts
    (`capacity_parts_of`); None for a dense or absent format (no error, no parts)."""
    if spec is None or spec.get("class_path", "").endswith(".Dense"):
        return None
    return {"gmse": gmse_of_spec(spec)[0], "parts": capacity_parts_of(format_from_spec(without_backend(spec)))}


def run_capacity(weight: dict[str, Any] | None, activation: dict[str, Any] | None) -> dict[str, Any]:
    """`format_capacity` of a run's weight and activation formats, as a run row stores it (`capacity`)."""
    return {"weight": format_capacity(weight), "activation": format_capacity(activation)}


def stored_capacity(record: Any) -> dict[str, Any]:
    """A run's capacity as stored with it; a run stored before versions recorded it is measured now, from its
    format specs with this code version (a spec this version cannot build is the user's to resolve)."""
    if record.capacity is not None:
        return record.capacity
    try:
        return run_capacity(record.weight, record.activation)
    except (ArgumentError, ImportError, ValueError) as err:  # ArgumentError: a class_path it cannot import
        raise BenchError(f"run {record.run_id} ({record.label!r}) stored no GMSE (a store from before they were stored), "
                         f"and this code version cannot rebuild its format to measure one: {' '.join(str(err).split())}") from err


def _format_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--label", type=Optional[str], default=None)
    parser.add_argument("--weight", type=Optional[Format], default=None)
    parser.add_argument("--activation", type=Optional[Format], default=None)
    return parser


def format_from_spec(spec: dict[str, Any]) -> Format:
    """Build a format from its spec (class_path and init_args), as the results store records it. The spec is
    copied: jsonargparse turns the nested dicts of the object it parses into Namespaces."""
    parser = _format_parser()
    return parser.instantiate(parser.parse_object({"weight": copy.deepcopy(spec)})).weight


def load_format_config(path: str | Path) -> tuple[str, Format | None, Format | None]:
    """(label, weight, activation) of a format config: a file path, or a path under the shipped configs."""
    p = Path(resolve_config(str(path)))
    data = yaml.safe_load(p.read_text())
    model = (data or {}).get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise BenchError(f"{p} has no `model:` section; a format config holds model.label/weight/activation")
    extra = set(model) - {"label", "weight", "activation"}
    if extra:
        raise BenchError(f"{p}: model.{sorted(extra)} are not format settings; allowed: label, weight, activation")
    parser = _format_parser()
    # the messages are `bench fit`'s; its module imports Lightning (and this module), so only on an error
    try:
        parsed = parser.parse_object(model)
    except ArgumentError as err:  # a key or value the format's class does not take (exit_on_error=False)
        from cslaws.bench.lightning_cli import parse_text

        raise BenchError(f"{p}: model: {parse_text(err)}") from None
    try:
        cfg = parser.instantiate(parsed)
    except ValueError as err:  # a value the format's constructor refuses, e.g. bits out of its range
        from cslaws.bench.lightning_cli import instantiation_message

        raise BenchError(f"{p}: model.{instantiation_message(err, parsed)}") from None
    return cfg.label or p.stem, cfg.weight, cfg.activation


def _is_config(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or "/" in name


def model_bits(weight: Format | None, activation: Format | None, size: str) -> dict[str, float]:
    """{"weight": bits, "activation": bits} per value on the linear layers of the model size `size`
    (`cslaws.formats.linear.storage_bits`)."""
    from cslaws.formats.linear import storage_bits

    return dict(zip(("weight", "activation"), storage_bits(_meta_model(weight, activation, size))))


def parameter_bits(weight: Format | None, activation: Format | None, size: str) -> float:
    """Bits per non-embedding parameter of model size `size`: what a memory budget holds N of. The block linears'
    weights cost their format's storage bits on their own shapes, and the rest of N, the RMSNorm gains (which
    no format compresses), 16 bits each, as a dense value."""
    from cslaws.formats.linear import CompressedLinear, storage_bits
    from cslaws.models.llama import get_size, non_embedding_params

    model = _meta_model(weight, activation, size)
    compressed = sum(m.weight.numel() for m in model.modules() if isinstance(m, CompressedLinear))
    n = non_embedding_params(get_size(size))
    return (storage_bits(model)[0] * compressed + Dense().bits_per_value * (n - compressed)) / n


def _meta_model(weight: Format | None, activation: Format | None, size: str) -> torch.nn.Module:
    """The Llama of `size` with these formats, built on the meta device: any size costs no memory."""
    from cslaws.formats.linear import LinearFactory
    from cslaws.models.llama import Llama, get_size

    with torch.device("meta"):
        return Llama(get_size(size), vocab_size=2, linear=LinearFactory(weight, activation))


def check_fits(weight: Format | None, activation: Format | None, size: str) -> None:
    """The formats can be applied to every linear layer of model size `size`, else a BenchError naming the
    layer row they do not fit and the sizes they do. Pricing the layers (`model_bits`) is the check: a
    format that cannot charge a shape (a scale group that does not divide the row) cannot compress it."""
    from cslaws.models.llama import SIZES

    def why_not(name: str) -> str | None:
        try:
            model_bits(weight, activation, name)
        except ValueError as err:
            return str(err)
        return None

    err = why_not(size)
    if err is not None:
        fitting = [name for name in SIZES if why_not(name) is None]
        raise BenchError(f"the formats cannot be applied to model size {size!r}: {err}; "
                         f"sizes they fit: {', '.join(fitting) or 'none'}")


def capacity_lines(
    name: str, F: float = RHO_F, C: float = RHO_C, Lsat: float = RHO_LSAT, size: str | None = None
) -> list[Capacity]:
    """Capacity lines for a registered short name (default args) or a format config. Bits are each
    format's `bits_per_value` (its reference row), or with `size` its storage on that model's layers."""
    if _is_config(name):
        label, weight, activation = load_format_config(name)
        tensors = [(s, f) for s, f in (("weight", weight), ("activation", activation)) if f is not None and not isinstance(f, Dense)]
        if not tensors:
            return [Capacity(label, 0.0, 0.0, 16.0, Lsat, "dense")]
        bits = model_bits(weight, activation, size) if size else {side: f.bits_per_value for side, f in tensors}
        if len(tensors) == 1:
            return [_line(label, tensors[0][1], F, C, Lsat, bits[tensors[0][0]])]
        lines = [_line(f"{label}/{side}", fmt, F, C, Lsat, bits[side]) for side, fmt in tensors]
        product = float(np.prod([line.rho for line in lines]))
        equivalent = float(rho_inverse(product, F, C, Lsat)) if product < Lsat else None
        return [*lines, Capacity(f"{label}/product", equivalent, None, None, product, "product")]
    if name not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise KeyError(f"unknown format {name!r}: registered short names are {known}; configs are paths such as formats/int4.yaml")
    if needed := required_arguments(name):
        raise BenchError(f"format {name!r} needs arguments ({', '.join(needed)}); give a format config that sets them, "
                         "a path such as formats/int4_sp50.yaml or formats/w4a4.yaml")
    fmt = make_format(name)
    if isinstance(fmt, Dense):
        return [Capacity(name, 0.0, 0.0, fmt.bits_per_value, Lsat, "dense")]
    # a short name is charged as the weight format (a rotated-basis format needs both sides, as in training)
    bits = model_bits(fmt, fmt if fmt.keeps_rotated_basis else None, size)["weight"] if size else fmt.bits_per_value
    return [_line(name, fmt, F, C, Lsat, bits)]


def _line(name: str, fmt: Format, F: float, C: float, Lsat: float, bits: float) -> Capacity:
    """A format's own GMSE, with its bits as given; its rho is the product over its capacity parts (a
    composition's sparsifier and quantizer), as in the leaderboard and the unified fit."""
    value, se, method = gmse(fmt)
    parts = fmt.capacity_parts()
    if parts == [fmt]:
        return Capacity(name, value, se, bits, float(rho(value, F, C, Lsat)), method)
    capacity = math.prod(float(rho(gmse(p)[0], F, C, Lsat)) for p in parts)
    return Capacity(name, value, se, bits, capacity, f"{method}; rho of {len(parts)} parts")


def required_arguments(name: str) -> list[str]:
    """The arguments the format registered as `name` has no default for (a wrapper's inner formats)."""
    parameters = inspect.signature(FORMATS[name]).parameters.values()
    return [p.name for p in parameters if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def defaultable_formats() -> tuple[list[str], list[str]]:
    """Registered short names that build with default arguments, and those that need arguments."""
    need = [name for name in sorted(FORMATS) if required_arguments(name)]
    return [name for name in sorted(FORMATS) if name not in need], need
