"""Plan a training run under a memory and/or compute budget with the fitted compression law.

Predicted loss of format f at N parameters and D tokens: L = A (N eff_f)^-alpha + B D^-beta + E.
- Memory budget M bits: N <= M / bits_f. Compute budget C FLOPs: D = C / (6 N) (Kaplan et al. 2020;
  compressed formats are taken to cost the same FLOPs per parameter and token as dense).
- Compute only: the loss along D = C / (6N) is minimised at
  N* = (alpha A eff^-alpha / (beta B))^(1 / (alpha + beta)) (C / 6)^(beta / (alpha + beta))
  (set dL/dN = 0; Hoffmann et al. 2022, eq. 4 with A eff^-alpha in place of A).
- Both: the loss is unimodal in log N along the compute line, so the optimum is min(N*, M / bits_f).
- Memory only: D is not limited, so the plan reports the D -> infinity limit A (N eff)^-alpha + E.
Each choice is compared with dense (eff 1, the reference label's bits) under the same budget.

Bits per value (`plan_priced`): a format's per-row or per-group scales cost less on the longer rows of a
larger model (int2 with row scales stores 2.29-2.57 bits per weight on the CPU study's models, rows of 24-128,
and 2.008 on 430M's), so each choice is priced on the layers of the model size nearest its planned N; as N
under a memory budget depends on the bits, every size's price is tried, and the best plan that lands on the
size it was priced on is taken. The price is per non-embedding parameter (`parameter_bits`): N also counts the
RMSNorm gains, which stay at 16 bits (0.2-4.5% more memory than the linears' bits alone, at 30M-14k with int2).
A label whose runs keep no format spec this code can build (runs imported from a CSV) is charged its runs'
stored bits, which are the linears' alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

from jsonargparse import ArgumentError

from cslaws.errors import BenchError
from cslaws.formats import Format
from cslaws.laws.capacity import format_from_spec, parameter_bits, without_backend
from cslaws.laws.fit import LawFit, first_repeated
from cslaws.models.llama import SIZES, non_embedding_params

#: A format's weight bits per value at a planned N, and the model size they were priced on.
Pricer = Callable[[float], tuple[float, str]]


@dataclass
class Choice:
    label: str
    bits: float
    eff: float
    n: float
    d: float | None
    loss: float
    #: the reference label's predicted loss under the same budget (dense, unless `--dense` names another)
    reference_loss: float
    improvement: float
    #: where `bits` come from: the model size they were priced on, or "its runs" (their mean stored bits)
    priced_on: str = "its runs"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_optimal_n(law: LawFit, eff: float, flops: float) -> float:
    a_eff = law.A * eff ** -law.alpha
    s = law.alpha + law.beta
    return (law.alpha * a_eff / (law.beta * law.B)) ** (1.0 / s) * (flops / 6.0) ** (law.beta / s)


def best_point(law: LawFit, eff: float, bits: float, memory_bits: float | None, flops: float | None) -> tuple[float, float | None, float]:
    """(N, D or None for unlimited, predicted loss) minimising the loss under the budgets."""
    if memory_bits is None and flops is None:
        raise ValueError("a plan needs a memory budget (bits), a compute budget (FLOPs), or both")
    n_max = None if memory_bits is None else memory_bits / bits
    if flops is None:
        return n_max, None, law.A * (n_max * eff) ** -law.alpha + law.E
    n = compute_optimal_n(law, eff, flops)
    if n_max is not None:
        n = min(n, n_max)
    d = flops / (6.0 * n)
    return n, d, float(law.predict(n, d, eff))


def check_request(memory_bits: float | None, flops: float | None, labels: Sequence[str] | None) -> None:
    """The budgets and candidate labels of a plan, checked without the law: `bench plan` calls this before
    its fit, so that a bad value is refused at once, not after it."""
    for name, option, value in (("memory budget", "--memory-bits", memory_bits), ("compute budget", "--flops", flops)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise BenchError(f"the {name} ({option}) must be a positive number, got {value}")
    if (twice := first_repeated(list(labels or []))) is not None:
        # a label listed twice would be planned twice: refused, not merged, as the list was likely mistyped
        raise BenchError(f"the candidate formats (--formats) list {twice!r} twice; give each label once")


def undetermined_terms(law: LawFit, flops: float | None) -> str:
    """Why `law` cannot plan under these budgets (empty: it can). Every plan reads the N term, A (N eff)^-alpha;
    one under a compute budget also reads the D term, B D^-beta, to trade N against D. A term whose exponent
    sits at its search bound, or a D term fitted on fewer than 3 values of D, is not determined by the runs,
    and neither is a plan that reads it. (E alone at its bound is no reason: it shifts every format's
    predicted loss alike, and the ranking and the gaps to dense do not read it.)"""
    reasons = []
    needed = ("alpha", "beta") if flops is not None else ("alpha",)
    if at := [name for name in needed if name in law.at_bound]:
        reasons.append(f"{' and '.join(at)} at the search bound")
    if flops is not None and 0 < law.d_values < 3:
        reasons.append(f"B and beta fitted on {law.d_values} value(s) of D")
    if not reasons:
        return ""
    memory = " (a memory budget alone does not read the D term)" if flops is not None and "alpha" not in at else ""
    return f"the law does not determine a plan: {'; '.join(reasons)}, not determined by the runs{memory}"


def plan(
    law: LawFit,
    bits: dict[str, float],
    memory_bits: float | None = None,
    flops: float | None = None,
    labels: list[str] | None = None,
) -> list[Choice]:
    """Candidate formats ranked by predicted loss under the budget (best first)."""
    check_request(memory_bits, flops, labels)
    chosen = list(law.eff) if labels is None else labels
    unknown = [s for s in chosen if s not in law.eff]
    if unknown:
        raise ValueError(f"no fitted multiplier for {unknown}; formats in the fit: {', '.join(law.eff)}")
    missing = [s for s in [*chosen, law.reference] if s not in bits]
    if missing:
        raise ValueError(f"bits per value unknown for {missing}; give bits for every candidate and the reference")
    _, _, reference_loss = best_point(law, 1.0, bits[law.reference], memory_bits, flops)
    choices = []
    for label in chosen:
        eff = law.eff[label]
        n, d, loss = best_point(law, eff, bits[label], memory_bits, flops)
        choices.append(Choice(label, bits[label], eff, n, d, loss, reference_loss, reference_loss - loss))
    return sorted(choices, key=lambda c: c.loss)


def extrapolation_note(choices: list[Choice], records: Sequence[Any], law: LawFit) -> str:
    """A warning naming the choices whose N lies outside the model sizes of `records` (the fitted runs), or
    whose D outside their token counts (empty: none does). There the plan is the law's extrapolation, no
    better than its exponents (a tiny alpha sends N far out); a D past the runs' may also need more text
    than they had."""
    notes = []
    for name, measured, exponent, of in (("N", [r.n_params for r in records], f"alpha = {law.alpha:.3g}", lambda c: c.n),
                                         ("D", [r.tokens for r in records], f"beta = {law.beta:.3g}", lambda c: c.d)):
        lo, hi = min(measured), max(measured)
        outside = [c.label for c in choices if of(c) is not None and not lo <= of(c) <= hi]
        if outside:
            notes.append(f"The plans of {', '.join(outside)} lie outside the measured range of {name} [{lo:.3g}, "
                         f"{hi:.3g}]: they extrapolate the law ({exponent}) and are no better than its exponents.")
    return " ".join(notes)


def size_pricer(weight: Format | None, activation: Format | None) -> Pricer:
    """Prices the non-embedding parameters (`parameter_bits`) of the model size whose N is nearest the planned N
    (in log N), among the sizes the formats fit."""
    sizes = {name: non_embedding_params(size) for name, size in SIZES.items()}
    priced: dict[str, float | None] = {}

    def price(n: float) -> tuple[float, str]:
        for name in sorted(sizes, key=lambda s: abs(math.log(sizes[s] / n))):
            if name not in priced:
                try:
                    priced[name] = parameter_bits(weight, activation, name)
                except ValueError:  # a row it cannot split (N:M, MX blocks): not a size it can run at
                    priced[name] = None
            if priced[name] is not None:
                return priced[name], name
        raise ValueError(f"the formats {weight!r}, {activation!r} fit no model size")

    return price


def run_pricers(records: Sequence[Any], labels: Sequence[str]) -> dict[str, Pricer]:
    """A pricer per label in `labels` whose runs keep format specs this code version can build (every run trained
    by `bench fit`); runs imported from a CSV keep only their bits, which the plan then uses as they are."""
    def build(spec: dict[str, Any] | None) -> Format | None:
        return None if spec is None else format_from_spec(without_backend(spec))  # where it ran is no matter here

    pricers = {}
    for r in records:
        if r.label in labels and r.label not in pricers and isinstance(r.weight, dict):
            try:
                pricers[r.label] = size_pricer(build(r.weight), build(r.activation))
            except (ArgumentError, ImportError, ValueError):  # a spec of an older version: its stored bits stand
                continue
    return pricers


def plan_priced(
    law: LawFit,
    bits: dict[str, float],
    pricers: dict[str, Pricer],
    memory_bits: float | None = None,
    flops: float | None = None,
    labels: list[str] | None = None,
) -> list[Choice]:
    """`plan` with the bits of each label that has a pricer taken on the model size nearest its planned N (the
    others keep `bits`). Under a memory budget N depends on the bits, so every size is tried: its price gives a
    plan, which holds when that plan's N is nearest that size (the price it is then charged); a label takes the
    lowest predicted loss of those. An iteration N = M / bits(N) stopped at the first N that held, and missed a
    larger one priced on the next size up, cheaper per value (int2 under 1.5e7 bits: 7.24e6 for 7.42e6)."""
    sizes = {name: float(non_embedding_params(size)) for name, size in SIZES.items()}
    taken: dict[str, tuple[float, str, float]] = {}
    for label, pricer in pricers.items():
        if label != law.reference and label not in law.eff:  # `plan` names it
            continue
        eff = 1.0 if label == law.reference else law.eff[label]
        for name, n_size in sizes.items():
            price, at = pricer(n_size)
            if at != name:  # the format cannot compress this size's layers
                continue
            n, _, loss = best_point(law, eff, price, memory_bits, flops)
            if pricer(n)[1] == name and (label not in taken or loss < taken[label][2]):
                taken[label] = (price, name, loss)
        if label not in taken:  # the size a fixed-point iteration reaches holds: not reached
            raise RuntimeError(f"no model size prices {label!r} at the N it plans")
    choices = plan(law, {**bits, **{label: price for label, (price, _, _) in taken.items()}}, memory_bits, flops, labels)
    return [replace(c, priced_on=taken[c.label][1]) if c.label in taken else c for c in choices]
